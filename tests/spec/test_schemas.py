"""The committed JSON Schemas match the models, and the example specs pass both the schemas
(as an editor or check-jsonschema would check them) and the full repository check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tinymlaas_ci.results.schemas import generate_schemas
from tinymlaas_ci.spec.repo import load_repo

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((ROOT / "schemas" / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_committed_schemas_equal_generated():
    generated = generate_schemas()
    committed = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.schema.json")}
    assert set(generated) <= set(committed)
    for name, text in generated.items():
        assert committed[name] == text, f"schemas/{name} is stale: run 'tinymlaas schema'"


def test_schema_check_command_passes_and_catches_a_stale_file(tmp_path: Path):
    ok = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "--repo", str(ROOT), "schema", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "schemas", copy / "schemas")
    stale = copy / "schemas" / "run.schema.json"
    stale.write_text(stale.read_text().replace("Run name, unique in its project.", "An old description."))
    out = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "--repo", str(copy), "schema", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "schemas/run.schema.json is out of date",
        "hint: run 'tinymlaas schema' and commit the result",
    ]


@pytest.mark.parametrize(
    "folder, schema",
    [("runs", "run.schema.json"), ("devices", "device.schema.json"), ("pipelines", "pipeline.schema.json")],
)
def test_example_specs_validate_against_the_json_schema(folder: str, schema: str):
    validator = _validator(schema)
    files = sorted((ROOT / folder).rglob("*.yaml"))
    assert files
    for path in files:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize(
    "case",
    ["unknown-key-top", "bad-enum-quantization", "negative-warmup", "missing-model", "wrong-type-list"],
)
def test_json_schema_rejects_what_the_models_reject(case: str):
    """Editors see the same mistakes as 'tinymlaas validate' for what a schema can express."""
    data = yaml.safe_load((CORPUS / "runs" / "corpus" / f"{case}.yaml").read_text())
    assert list(_validator("run.schema.json").iter_errors(data))


def test_example_repository_has_no_problems():
    repo = load_repo(ROOT)
    assert repo.problems == []
    assert {r.id for r in repo.runs} >= {"digits/cnn-none", "digits/cnn-static-int8", "digits/cnn-pruned"}
    assert sorted(repo.devices) == ["host", "mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547"]
    assert {r.id for r in repo.runs} >= {"digits-mcu/cnn-mps2-an386", "digits-mcu/cnn-host"}
