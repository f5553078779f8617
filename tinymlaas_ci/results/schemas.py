"""JSON Schemas of every file format we read or write (specs and results), generated from the pydantic models.

They are committed under ``schemas/`` and referenced from spec files with a
``# yaml-language-server: $schema=...`` comment, so editors complete and check fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from tinymlaas_ci.fs import atomic_write_text
from tinymlaas_ci.results.models import Result
from tinymlaas_ci.results.outcomes import OutcomesFile
from tinymlaas_ci.spec.models import DeviceSpec, PipelineSpec, RunSpec

__all__ = ["SCHEMAS", "SCHEMA_BASE_URL", "generate_schemas", "write_schemas"]

SCHEMA_BASE_URL = "https://tinymlaas-ci.github.io/schemas/"


SCHEMAS: dict[str, tuple[str, Any]] = {
    "run.schema.json": ("A TinyMLaaS-CI run spec (runs/<project>/<run>.yaml)", RunSpec),
    "device.schema.json": ("A TinyMLaaS-CI device (devices/<device>.yaml)", DeviceSpec),
    "pipeline.schema.json": ("A TinyMLaaS-CI pipeline (pipelines/<pipeline>.yaml)", PipelineSpec),
    "result.schema.json": ("A TinyMLaaS-CI result (runs/<project>/results/<run>.json)", Result),
    "outcomes.schema.json": ("The outcomes of one 'tinymlaas run --json FILE'", OutcomesFile),
}


def generate_schemas() -> dict[str, str]:
    """File name -> JSON text (sorted keys, trailing newline)."""
    out = {}
    for filename, (title, model) in SCHEMAS.items():
        schema = TypeAdapter(model).json_schema(by_alias=True, mode="validation")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": SCHEMA_BASE_URL + filename,
            **schema,
            "title": title,
        }
        out[filename] = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return out


def write_schemas(out_dir: Path) -> list[Path]:
    """Write every schema into ``out_dir``; return the files that changed."""
    changed = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in generate_schemas().items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
            changed.append(path)
    return changed
