"""The shipped example of a user's own stage (pipelines/stages/model_card.py) in a real run."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.engine.example_repo import copy_example


def test_model_card_stage_runs_between_builtin_stages(tmp_path):
    root = copy_example(tmp_path)
    spec = root / "runs/digits/cnn-pruned.yaml"
    spec.write_text(spec.read_text() + "pipeline: with-model-card\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinymlaas_ci",
            "-C",
            str(root),
            "run",
            "--select",
            "digits/cnn-pruned",
            "--work-dir",
            str(root / ".work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((root / "runs/digits/results/cnn-pruned.json").read_text())
    assert [s["name"] for s in result["stages"]] == ["fetch", "compile", "model-card", "install", "infer"]
    assert all(s["status"] == "generated" for s in result["stages"])
    card = (root / ".work/digits/cnn-pruned/model-card/MODEL_CARD.md").read_text()
    assert "static-int8" in card and "| target sparsity | 0.8 |" in card
    compiled = json.loads((root / ".work/digits/cnn-pruned/compile/outputs.json").read_text())
    assert compiled["artifacts"]["model"]["sha256"] in card
    outputs = json.loads((root / ".work/digits/cnn-pruned/model-card/outputs.json").read_text())
    assert outputs["artifacts"]["card"]["path"] == "model-card/MODEL_CARD.md"
