"""``tinymlaas init``: a new repository that validates and plans at once."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.ops.conftest import ROOT, cli
from tinymlaas_ci.init.scaffold import WORKFLOWS_DIR


def test_init_validates_and_plans_immediately(tmp_path):
    dest = tmp_path / "adopter"
    proc = cli("init", str(dest), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for rel in (
        "runs/example/digits-int8.yaml",
        "devices/host.yaml",
        "pipelines/default.yaml",
        ".gitignore",
        "README.md",
        "schemas/run.schema.json",
        ".github/workflows/run.yml",
        "uploads/digits-cnn/model.pkl",
        "uploads/digits/dataset.zip",
    ):
        assert (dest / rel).is_file(), rel
    assert ".tinymlaas/" in (dest / ".gitignore").read_text()
    if shutil.which("git"):
        assert (dest / ".git").is_dir()
    validate = cli("validate", cwd=dest)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    plan = cli("plan", "--format", "json", cwd=dest)
    assert plan.returncode == 0, plan.stderr
    runs = json.loads(plan.stdout)["runs"]
    assert [(r["id"], r["status"], r["device"]) for r in runs] == [("example/digits-int8", "new", "host")]


def test_init_refuses_a_non_empty_folder_and_never_overwrites(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "README.md").write_text("my readme\n")
    proc = cli("init", str(dest), cwd=tmp_path)
    assert proc.returncode == 2 and "not empty" in proc.stderr and "--force" in proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["README.md"]
    proc = cli("init", str(dest), "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kept  README.md (exists)" in proc.stdout
    assert (dest / "README.md").read_text() == "my readme\n"
    assert (dest / "runs" / "example" / "digits-int8.yaml").is_file()


def test_init_inside_a_git_repository_does_not_nest_one(tmp_path):
    if not shutil.which("git"):
        return
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    proc = cli("init", str(tmp_path / "sub"), cwd=tmp_path)
    assert proc.returncode == 0 and "already inside a git repository" in proc.stdout
    assert not (tmp_path / "sub" / ".git").exists()


def test_workflow_templates_equal_this_repositorys_workflows():
    ours = {p.name: p.read_bytes() for p in sorted((ROOT / ".github" / "workflows").glob("*.yml"))}
    shipped = {p.name: p.read_bytes() for p in sorted(Path(WORKFLOWS_DIR).glob("*.yml"))}
    assert sorted(shipped) == sorted(ours), "sync: cp .github/workflows/*.yml tinymlaas_ci/init/workflows/"
    for name, text in ours.items():
        assert shipped[name] == text, f"{name} drifted: cp .github/workflows/{name} tinymlaas_ci/init/workflows/"
