"""The corpus of broken specs: every file under ``corpus/`` holds one mistake (a few hold
several, to prove that every problem is reported at once), and ``corpus/expected.yaml`` records
the exact ``path:line:column: message (hint)`` lines that :func:`load_repo` must report for it.

Each case gets its own repository: the base repository of ``conftest.make_repo`` plus the
corpus file at the same relative path (``runs/corpus/x.yaml`` lands at ``runs/corpus/x.yaml``).
Cases that need more than one file (symlinks, duplicate names, oversized files) name a
``setup`` in the table.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tinymlaas_ci.errors import SpecError
from tinymlaas_ci.spec.loader import MAX_BYTES
from tinymlaas_ci.spec.repo import load_repo

from .conftest import make_repo

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, object] = yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))


def _case_files() -> list[str]:
    return sorted(
        p.relative_to(CORPUS).as_posix()
        for p in CORPUS.rglob("*.yaml")
        if p.name != "expected.yaml" and not p.relative_to(CORPUS).as_posix().startswith("_support/")
    )


def _setup(kind: str, root: Path, rel: str) -> None:
    """Extra arrangement a case needs beyond copying its file."""
    if kind == "upload-symlink-outside":
        outside = root.parent / "outside.onnx"
        outside.write_bytes(b"a file outside the repository")
        os.symlink(outside, root / "uploads" / "m" / "escape.onnx")
    elif kind == "spec-symlink-outside":
        # The spec itself lives outside the repository; runs/ only holds a link to it.
        outside = root.parent / "outside.yaml"
        (root / rel).replace(outside)
        os.symlink(outside, root / rel)
    elif kind == "second-run-named-baseline":
        shutil.copy(CORPUS / "_support" / "baseline.yaml", root / "runs" / "corpus" / "baseline.yaml")
    elif kind == "pad-past-size-limit":
        with open(root / rel, "a", encoding="utf-8") as fh:
            fh.write("# padding\n" * (MAX_BYTES // 10 + 1))
    else:  # pragma: no cover - a typo in expected.yaml
        raise AssertionError(f"unknown setup {kind!r}")


def build_case(tmp_path: Path, rel: str) -> Path:
    """A fresh repository holding the corpus file ``rel``; returns its root."""
    root = make_repo(tmp_path / "repo")
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(CORPUS / rel, target)
    entry = EXPECTED[rel]
    if isinstance(entry, dict) and entry.get("setup"):
        _setup(entry["setup"], root, rel)
    return root


def expected_lines(rel: str) -> list[str]:
    entry = EXPECTED[rel]
    return list(entry["problems"] if isinstance(entry, dict) else entry)


def test_corpus_is_large_and_fully_recorded():
    files = _case_files()
    assert len(files) >= 45
    assert sorted(EXPECTED) == files, "every corpus file has an entry in expected.yaml and vice versa"
    # One problem per file, except the few that prove "every error at once".
    several = [rel for rel in files if len(expected_lines(rel)) > 1]
    assert 1 <= len(several) <= 5


@pytest.mark.parametrize("rel", _case_files())
def test_broken_spec_reports_exact_problems(tmp_path: Path, rel: str):
    root = build_case(tmp_path, rel)
    repo = load_repo(root)
    assert [p.format() for p in repo.problems] == expected_lines(rel)
    with pytest.raises(SpecError, match=r"^\d+ problems? in spec files:\n"):
        repo.raise_for_problems()


def test_every_problem_position_is_inside_its_file(tmp_path: Path):
    """An annotation on a line past the end of a file shows nowhere on a pull request."""
    for rel in _case_files():
        root = build_case(tmp_path / rel.replace("/", "_"), rel)
        for problem in load_repo(root).problems:
            if problem.line:
                lines = (root / problem.path).read_bytes().splitlines()
                assert problem.line <= len(lines), problem.format()
                assert problem.column >= 1, problem.format()


def test_the_corpus_repository_base_is_valid(tmp_path: Path):
    """The base every case starts from has no problem of its own."""
    root = make_repo(tmp_path / "repo")
    (root / "runs" / "corpus").mkdir(parents=True)
    shutil.copy(CORPUS / "_support" / "baseline.yaml", root / "runs" / "corpus" / "baseline.yaml")
    repo = load_repo(root)
    assert repo.problems == []
    assert [r.id for r in repo.runs] == ["corpus/baseline"]
