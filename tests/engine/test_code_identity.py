"""The local executor's code identity covers every module a stage can import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tinymlaas_ci.engine.runner import stage_modules

ROOT = Path(__file__).resolve().parents[2]


def test_module_set_follows_the_imports_lazy_ones_included():
    modules = stage_modules()
    # hostinfo is imported at module level by ml.measure; the Hub client module only lazily,
    # inside the fetch stage's functions; the model-format detector by fetch and compile.
    for name in ("tinymlaas_ci.hostinfo", "tinymlaas_ci.sources.hub", "tinymlaas_ci.ml.model_format"):
        assert name in modules
    assert "tinymlaas_ci.stages.contract" in modules and "tinymlaas_ci.spec.models" in modules
    # The engine is what runs stages, not what they run.
    assert not any(m.startswith("tinymlaas_ci.engine") for m in modules)


def _digest(package_parent: Path) -> str:
    code = "from tinymlaas_ci.engine.runner import code_digest; print(code_digest())"
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    # cwd too: "python -c" puts the working directory first on sys.path.
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, env=env, cwd=package_parent, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_an_edit_to_hostinfo_changes_the_digest(tmp_path):
    shutil.copytree(ROOT / "tinymlaas_ci", tmp_path / "tinymlaas_ci", ignore=shutil.ignore_patterns("__pycache__"))
    before = _digest(tmp_path)
    assert before == _digest(tmp_path)  # deterministic
    hostinfo = tmp_path / "tinymlaas_ci" / "hostinfo.py"
    hostinfo.write_text(hostinfo.read_text() + "\n# an edit\n")
    assert _digest(tmp_path) != before
