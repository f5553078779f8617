"""The repository ``tinymlaas init`` makes goes through the same loop under act: a pull request
adds a run, the check comments, the merge runs both runs on the runner and publishes them, the
site is deployed. Its workflows install what ``install:`` in its ``tinymlaas.yaml`` names (the
exact release that made it), which the stand-in Python already holds, and build the ``site/``
that ``init`` wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflows.github import GitHub

pytestmark = pytest.mark.slow


def _init(dest: Path) -> dict[str, bytes]:
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "init", str(dest)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    # This runner has no Docker engine: the device file says to run stages as local processes.
    host = dest / "devices" / "host.yaml"
    host.write_text(host.read_text() + "executor: local\n")
    tree = {
        p.relative_to(dest).as_posix(): p.read_bytes()
        for p in sorted(dest.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(dest).parts
    }
    assert "site/mkdocs.yml" in tree, "init writes a site that builds"
    return tree


def test_an_init_made_repository_goes_through_the_loop(adopter_github: GitHub, tmp_path):
    gh = adopter_github
    tree = _init(tmp_path / "adopter")
    assert not any(f.startswith("tinymlaas_ci/") for f in tree)
    example = tree["runs/example/digits-int8.yaml"].decode()
    seed = gh.remote.commit("main", tree, "tinymlaas init")

    fp32 = example.replace("quantization: static-int8", "quantization: none").replace(
        "measure: {warmup: 20, min_iterations: 200, min_seconds: 0.5}",
        "measure: {warmup: 2, min_iterations: 20, min_seconds: 0}",
    )
    assert "quantization: none" in fp32 and "min_seconds: 0}" in fp32
    pr = gh.remote.open_pr(1, "fp32-baseline", {"runs/example/digits-fp32.yaml": fp32}, "An fp32 baseline")
    check = gh.run_pr_check(pr)
    assert check.returncode == 0, check.report()
    assert "Requirement already satisfied: tinymlaas-ci==" in check.log  # the pinned release, not the checkout
    comment = gh.run_pr_comment(check, pr)
    assert comment.returncode == 0, comment.report()
    [posted] = gh.api.comments(1)
    assert "example/digits-fp32" in posted.body and "example/digits-int8" in posted.body

    merge = gh.remote.merge_pr(1)
    run = gh.run_push(seed, merge)
    assert run.returncode == 0, run.report()
    for job in ("plan", "run", "publish", "build", "deploy"):
        assert run.succeeded(job), f"{job}:\n{run.report()}"
    assert not run.step_ran("Build the stage images"), "executor: local needs no images"
    assert gh.remote.log("main", "%an|%s")[0] == "github-actions[bot]|results: example/digits-fp32, example/digits-int8"
    for name in ("digits-fp32", "digits-int8"):
        result = json.loads(gh.remote.show("main", f"runs/example/results/{name}.json"))
        assert result["status"] == "succeeded" and result["metrics"]["accuracy"] > 0.9, result
        page = gh.pages / "projects" / "example" / "runs" / f"{name}.html"
        assert page.is_file(), sorted(p.name for p in gh.pages.rglob("*.html"))

    again = gh.run_dispatch()
    assert again.returncode == 0 and "jobs=0" in again.log, again.report()
    assert not again.ran("run")
