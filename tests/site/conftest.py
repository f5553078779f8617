"""Fixtures for the site tests: a git repository of realistic results and a site built from it."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_fixtures():
    # Loaded by path under a unique name: a module called "site" or "fixtures" would clash.
    name = "tinymlaas_site_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("fixtures.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def site_fixtures():
    return _load_fixtures()


def make_repo(root: Path, n: int | None = None, **kwargs) -> list[dict]:
    """A repository at ``root`` with this project's site/ sources and fixture results."""
    fx = _load_fixtures()
    results = fx.write_repo(root, n if n is not None else len(fx.BASE_RUNS), **kwargs)
    shutil.copytree(REPO / "site", root / "site", ignore=shutil.ignore_patterns("build"))
    return results


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """(repo root, output folder, build report, latest results) of one build shared by the tests."""
    from tinymlaas_ci.cli.main import build_parser
    from tinymlaas_ci.website import build_site

    root = tmp_path_factory.mktemp("repo")
    results = make_repo(root)
    out = tmp_path_factory.mktemp("built") / "site"
    report = build_site(root, out, cli_parser=build_parser())
    return root, out, report, results
