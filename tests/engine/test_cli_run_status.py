"""``tinymlaas run`` and ``tinymlaas status`` as a user runs them, and the progress display."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

from tests.engine.fakerepo import make_repo
from tinymlaas_ci.engine.progress import Progress


def _cli(root, *args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def test_status_shows_each_stage_and_an_interrupted_one(tmp_path):
    root = make_repo(tmp_path, runs={"a": {}, "b": {"quantization": "fp16"}}, sleep=0.0)
    work = str(root / ".work")
    (root / "fail-infer").write_text("")
    run = _cli(root, "run", "--work-dir", work, "--keep-going", "--json", str(root / "outcomes.json"))
    assert run.returncode == 1
    assert "resume with: tinymlaas run --select=p/a --select=p/b" in run.stderr
    outcomes = json.loads((root / "outcomes.json").read_text())["outcomes"]
    assert [(o["run"], o["status"], o["failed_stage"]) for o in outcomes] == [
        ("p/a", "failed", "infer"),
        ("p/b", "failed", "infer"),
    ]

    status = _cli(root, "status", "--work-dir", work, "p/a")
    assert status.returncode == 0
    [line] = status.stdout.splitlines()
    assert line.startswith("p/a ") and "failed" in line
    assert "prepare:generated" in line and "install:generated" in line and "infer:failed" in line

    # A runner killed in the middle of a stage leaves it 'running'; status says it was interrupted.
    (root / "fail-infer").unlink()
    pipe = root / "pipelines/fake.yaml"
    pipe.write_text(
        pipe.read_text().replace("{sleep: 0.0, fail_if_exists: fail-infer}", "{sleep: 30, fail_if_exists: fail-infer}")
    )
    (root / ".work/p/b/infer/started").unlink()  # left by the failed attempt above
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "run", "--work-dir", work, "--select", "p/b"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (root / ".work/p/b/infer/started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    data = json.loads(_cli(root, "status", "--work-dir", work, "--format", "json", "p/b").stdout)
    assert [(s["stage"], s["status"]) for s in data[0]["stages"]] == [
        ("prepare", "generated"),
        ("install", "generated"),
        ("infer", "interrupted"),
    ]


def test_github_actions_progress_groups_each_stage_and_annotates_warnings():
    out = io.StringIO()
    p = Progress(out, mode="github")
    p.message("warning: the local executor cannot sandbox stages")
    p.stage_started("digits/cnn", "compile")
    p.stage_line("digits/cnn", "compile", "[compile] exporting")
    p.stage_finished("digits/cnn", "compile", "generated", 1.25)
    p.close()
    assert out.getvalue().splitlines() == [
        "::warning::the local executor cannot sandbox stages",
        "::group::digits/cnn · compile",
        "[compile] exporting",
        "::endgroup::",
        "✓ digits/cnn compile: done 1.2s",
    ]


def test_plain_progress_shows_stage_output_only_when_verbose():
    quiet, loud = io.StringIO(), io.StringIO()
    for stream, verbose in ((quiet, False), (loud, True)):
        p = Progress(stream, mode="plain", verbose=verbose)
        p.stage_started("p/r", "infer")
        p.stage_line("p/r", "infer", "accuracy 0.98")
        p.stage_finished("p/r", "infer", "failed", 0.5, "boom")
        p.close()
    assert quiet.getvalue().splitlines() == ["[p/r] infer: running", "✗ p/r infer: FAILED 0.5s (boom)"]
    assert loud.getvalue().splitlines() == [
        "[p/r] infer: running",
        "  accuracy 0.98",
        "✗ p/r infer: FAILED 0.5s (boom)",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("not a real terminal")


def test_terminal_progress_redraws_one_live_line():
    term = _Terminal()
    p = Progress(term, mode="tty")
    p.stage_started("p/r", "compile")
    p.stage_line("p/r", "compile", "[compile] calibrating")
    deadline = time.monotonic() + 10  # the spinner redraws every 0.1 s; allow for a busy machine
    while "[compile] calibrating" not in term.getvalue():
        assert time.monotonic() < deadline, "the live line was never drawn"
        time.sleep(0.05)
    p.stage_finished("p/r", "compile", "cached", None, "key 1234abcd")
    p.close()
    text = term.getvalue()
    assert "\r\x1b[2K" in text  # the live line is cleared and redrawn in place
    assert "p/r compile" in text and "[compile] calibrating" in text
    assert text.endswith("\r\x1b[2K↺ p/r compile: cached, skipped (key 1234abcd)\n\r\x1b[2K")
