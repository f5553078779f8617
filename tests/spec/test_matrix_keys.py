"""Matrix keys are checked by ``validate`` even when the file has other errors, and by the JSON
Schema (so an editor underlines a typo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tinymlaas_ci.results.schemas import generate_schemas
from tinymlaas_ci.spec.repo import load_repo

from .conftest import RUN


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_matrix_key_typo_is_reported_next_to_other_errors(repo: Path):
    _write(
        repo,
        "runs/p/sweep.yaml",
        RUN + "measure: {warmup: -1}\nmatrix:\n  compression.quantisation: [none, fp16]\n",
    )
    problems = [p.format() for p in load_repo(repo).problems]
    assert any("measure.warmup" in p for p in problems), problems
    typo = [p for p in problems if "quantisation" in p]
    assert len(typo) == 1 and "runs/p/sweep.yaml:8:3" in typo[0]
    assert "did you mean 'compression.quantization'?" in typo[0]


def test_a_valid_sweep_with_another_error_reports_only_that_error(repo: Path):
    _write(repo, "runs/p/sweep.yaml", RUN + "measure: {warmup: -1}\nmatrix:\n  compression.quantization: [none]\n")
    problems = [p.format() for p in load_repo(repo).problems]
    assert len(problems) == 1 and "measure.warmup" in problems[0]


@pytest.fixture(scope="module")
def run_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(generate_schemas()["run.schema.json"])
    return jsonschema, schema


def test_json_schema_rejects_an_unknown_matrix_key(run_schema):
    jsonschema, schema = run_schema
    spec = yaml.safe_load(RUN + "matrix:\n  compression.quantisation: [none, fp16]\n")
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(spec))
    assert errors and any("compression.quantisation" in e.message for e in errors)


def test_json_schema_accepts_every_sweep_the_validator_accepts(run_schema, repo: Path):
    jsonschema, schema = run_schema
    text = RUN + "matrix:\n  compression.quantization: [none, fp16]\n  measure.batch_size: [1, 8]\n  device: [host]\n"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(text))) == []
    _write(repo, "runs/p/sweep.yaml", text)
    assert load_repo(repo).problems == []
