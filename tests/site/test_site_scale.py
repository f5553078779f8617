"""The site at scale: run pages whose size does not depend on the number of projects, results
kept compressed and parsed on demand, and the C YAML emitter where its output is identical."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from tests.site.conftest import REPO, _load_fixtures
from tinymlaas_ci.results.layout import parse_result
from tinymlaas_ci.website import loader
from tinymlaas_ci.website.formatting import to_yaml
from tinymlaas_ci.website.history import collect_history
from tinymlaas_ci.website.loader import ParsedCache, load_results


def _spread(root: Path, n: int, projects: int, commits: int = 1) -> None:
    """``n`` fixture results spread over ``projects`` projects, committed ``commits`` times."""
    fx = _load_fixtures()
    root.mkdir(parents=True)
    fx._git(root, "init", "-q", "-b", "main")
    for version in range(commits):
        for k, res in enumerate(fx.generate_results(n, version=version)):
            project = f"p{k % projects:03d}"
            res["run"]["project"] = project
            res["run"]["name"] = name = f"{res['run']['name']}-{k // projects:03d}"
            path = root / "runs" / project / "results" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, sort_keys=True, indent=2) + "\n")
        fx._git(root, "add", "runs")
        fx._git(root, "commit", "-q", "-m", f"v{version}")
    shutil.copytree(REPO / "site", root / "site", ignore=shutil.ignore_patterns("build"))


def _build(root: Path, out: Path) -> list[Path]:
    from tinymlaas_ci.cli.main import build_parser
    from tinymlaas_ci.website import build_site

    build_site(root, out, cli_parser=build_parser())
    return sorted(out.glob("projects/*/runs/*.html"))


def test_run_pages_do_not_grow_with_the_number_of_projects(tmp_path):
    _spread(tmp_path / "few", 40, 2)
    _spread(tmp_path / "many", 40, 40)
    few = _build(tmp_path / "few", tmp_path / "few-out")
    many = _build(tmp_path / "many", tmp_path / "many-out")
    assert len(few) == len(many) == 40
    size_few = statistics.median(p.stat().st_size for p in few)
    size_many = statistics.median(p.stat().st_size for p in many)
    # Same results, so the same pages but for their project's own runs: a nav of 40 projects
    # would add several KB to every page.
    assert abs(size_many - size_few) < 0.03 * size_few, (size_few, size_many)
    page = many[0].read_text()
    assert "p039" not in page and "p020" not in page, "a run page names other projects"
    # Projects stay reachable: the projects page links every one.
    overview = (tmp_path / "many-out" / "projects" / "index.html").read_text()
    assert all(f"p{k:03d}/index.html" in overview for k in range(40))


def test_results_are_kept_compressed_and_parsed_on_demand(tmp_path, monkeypatch):
    _spread(tmp_path / "repo", 30, 3, commits=2)
    root = tmp_path / "repo"
    cache = ParsedCache(size=8)
    monkeypatch.setattr(loader, "PARSED", cache)
    loaded, skipped = load_results(root)
    assert not skipped and len(loaded) == 30
    history = collect_history(root, [item.path for item in loaded])
    for item in loaded:
        raw = (root / item.path).read_bytes()
        assert item.raw == raw
        assert item.result == parse_result(raw)
        versions = history[item.path]
        assert len(versions) == 2 and versions[0].raw == raw
        assert versions[1].result.run.name == item.result.run.name
        assert len(cache._items) <= 8
    # A result asked for twice in a row is parsed once.
    first = loaded[0].result
    assert loaded[0].result is first


@pytest.mark.skipif(not getattr(yaml, "__with_libyaml__", False), reason="PyYAML built without libyaml")
def test_the_c_yaml_emitter_writes_what_the_python_one_does():
    fx = _load_fixtures()
    values = [res["spec"] for res in fx.generate_results(150)]
    values += [
        {"description": "Static int8: 'quoted', \"double\", colon: here, # not a comment", "n": None},
        {"unicode": "ünïcödé — ✓", "multi": "line one\nline two\n", "empty": "", "spaces": "  lead"},
        {"numbers": [0, -1, 1.5e-07, 1e20, float("inf")], "bools": [True, False], "yes": "yes", "null": "null"},
        {"long": "x" * 200, "nested": {"deep": {"deeper": [1, [2, [3]]]}}, "date": "2025-03-01"},
    ]
    for value in values:
        expected = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()
        assert to_yaml(value) == expected
