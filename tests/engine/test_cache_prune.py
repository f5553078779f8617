"""``tinymlaas cache list|prune`` on the shared stage cache of real runs: least recently used
first, by age or by size, nothing held by a running stage, and no result changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine.fakerepo import make_repo
from tinymlaas_ci.cli.cache import parse_age, parse_size
from tinymlaas_ci.engine.cache import StageCache
from tinymlaas_ci.errors import UsageError


def _tinymlaas(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def swept(tmp_path) -> Path:
    root = make_repo(tmp_path, runs={"a": {}, "b": {"quantization": "fp16"}})
    proc = _tinymlaas(root, "run", "--work-dir", str(root / ".work"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def _entries(root: Path):
    return StageCache(root / ".work" / ".cache").entries()


def test_list_shows_every_entry_least_recently_used_first(swept):
    entries = _entries(swept)
    assert len(entries) >= 4  # prepare is shared by the two runs; install and infer are each their own
    proc = _tinymlaas(swept, "cache", "list", "--work-dir", str(swept / ".work"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["key"] for r in rows] == [e.key for e in entries]
    assert [r["last_used"] for r in rows] == sorted(r["last_used"] for r in rows)
    assert all(r["bytes"] > 0 for r in rows)
    text = _tinymlaas(swept, "cache", "list", "--work-dir", str(swept / ".work")).stdout
    assert f"{len(entries)} entries" in text


def test_prune_by_age_removes_what_no_run_used_since(swept):
    entries = _entries(swept)
    old, new = entries[0], entries[1:]
    week_ago = time.time() - 7 * 86400
    os.utime(old.path / "entry.json", (week_ago, week_ago))
    dry = _tinymlaas(swept, "cache", "prune", "--older-than", "3d", "--dry-run", "--work-dir", str(swept / ".work"))
    assert dry.returncode == 0 and f"would remove {old.key[:12]}" in dry.stdout, dry.stdout
    assert len(_entries(swept)) == len(entries)
    proc = _tinymlaas(swept, "cache", "prune", "--older-than", "3d", "--work-dir", str(swept / ".work"))
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 entries" in proc.stdout
    assert {e.key for e in _entries(swept)} == {e.key for e in new}


def test_prune_by_size_keeps_the_most_recently_used(swept):
    entries = _entries(swept)
    keep = entries[-2:]
    limit = sum(e.bytes for e in keep)
    cache = StageCache(swept / ".work" / ".cache")
    removed, kept = cache.prune(max_bytes=limit)
    assert [e.key for e in kept] == [e.key for e in keep]
    assert len(removed) == len(entries) - 2
    assert sum(e.bytes for e in _entries(swept)) <= limit


def test_an_entry_a_running_stage_holds_is_kept(swept):
    cache = StageCache(swept / ".work" / ".cache")
    held = cache.entries()[0]
    with cache.claim(held.key, what="a stage", timeout=1, on_wait=lambda _m: None):
        removed, kept = cache.prune(max_bytes=0)
    assert held.key in {e.key for e in kept} and held.key not in {e.key for e in removed}
    assert [e.key for e in cache.entries()] == [held.key]


def test_a_pruned_cache_changes_no_result(swept):
    result = swept / "runs" / "p" / "results" / "a.json"
    before = json.loads(result.read_text())
    assert _tinymlaas(swept, "cache", "prune", "--max-size", "0", "--work-dir", str(swept / ".work")).returncode == 0
    assert _entries(swept) == []
    # No run volume and no cache entry left: every stage runs again, to the same numbers.
    shutil.rmtree(swept / ".work" / "p", onerror=_writable)
    result.unlink()
    proc = _tinymlaas(swept, "run", "--work-dir", str(swept / ".work"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cached, skipped" not in proc.stdout
    after = json.loads(result.read_text())
    assert after["metrics"] == before["metrics"]
    assert _entries(swept)  # and the cache filled again


def _writable(func, path, _exc):  # finished stages are read-only
    os.chmod(Path(path).parent, 0o755)
    os.chmod(path, 0o755)
    func(path)


def test_prune_needs_a_limit_and_understands_units(swept):
    proc = _tinymlaas(swept, "cache", "prune", "--work-dir", str(swept / ".work"))
    assert proc.returncode == 2 and "--older-than AGE, --max-size SIZE" in proc.stderr
    assert parse_size("500MB") == 500 * 1024**2 and parse_size("2g") == 2 * 1024**3 and parse_size("1024") == 1024
    assert parse_age("30d") == 30 * 86400 and parse_age("12h") == 43200
    for bad in ("lots", "5 TB", "-1GB"):
        with pytest.raises(UsageError):
            parse_size(bad)
    with pytest.raises(UsageError):
        parse_age("soon")
