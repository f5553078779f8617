"""The worked example of site/docs/guide/byom.md, executed as a user would: its training script,
then its run spec through every stage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.stages.byom_corpus import run_pipeline

GUIDE = ROOT / "site" / "docs" / "guide" / "byom.md"


def _blocks(lang: str) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8").split("## Worked example", 1)[1]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_worked_example_runs_and_scores(tmp_path):
    pytest.importorskip("safetensors")
    pytest.importorskip("sklearn")
    (script,) = _blocks("python")
    (spec_text,) = _blocks("yaml")
    repo = tmp_path / "repo"
    train = repo / "uploads" / "digits-net" / "train.py"
    train.parent.mkdir(parents=True)
    train.write_text(script)
    subprocess.run([sys.executable, str(train.relative_to(repo))], cwd=repo, check=True, timeout=600)
    spec = yaml.safe_load(spec_text)
    spec.pop("device")
    result = run_pipeline(tmp_path / "run", repo, spec)
    assert "failed" not in result, (result.get("error"), result["log"][-2000:])
    metrics = result["infer"]["metrics"]
    assert metrics["label_source"] == "dataset.labels" and metrics["labels"][:3] == ["zero", "one", "two"]
    assert metrics["baseline_accuracy"] >= 0.85 and metrics["accuracy"] >= metrics["baseline_accuracy"] - 0.03
    assert "ASSUMED" not in result["log"]
    # The same weights evaluated directly in torch with the script's own preprocessing.
    assert abs(metrics["baseline_accuracy"] - _torch_accuracy(train.parent)) <= 0.01


def _torch_accuracy(folder: Path) -> float:
    import importlib.util

    import numpy as np
    import torch
    from safetensors.torch import load_file
    from sklearn.datasets import load_digits

    spec = importlib.util.spec_from_file_location("guide_net", folder / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net()
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    digits = load_digits()
    pixels = np.round(digits.images[1400:] * 255 / 16).astype(np.uint8)
    x = torch.from_numpy((pixels[:, None] / 255.0 - 0.5) / 0.25).float()
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).numpy()
    return float((pred == digits.target[1400:]).mean())
