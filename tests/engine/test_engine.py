"""The engine against real processes and files: cache, resume, failure policy, status records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.engine.fakerepo import make_repo
from tinymlaas_ci.engine.progress import Progress
from tinymlaas_ci.engine.runner import Engine, RunOptions
from tinymlaas_ci.plan import plan
from tinymlaas_ci.spec.repo import load_repo


def _engine(root: Path, **opts):
    repo = load_repo(root)
    assert not repo.problems, [p.format() for p in repo.problems]
    out = io.StringIO()
    engine = Engine(repo, RunOptions(work_dir=root / ".work", **opts), Progress(out, mode="plain"))
    return repo, engine, out


def _count(root: Path, stage: str) -> int:
    f = root / f".count-{stage}"
    return int(f.read_text()) if f.exists() else 0


def test_first_run_generates_every_stage_and_writes_the_result(tmp_path):
    root = make_repo(tmp_path)
    repo, engine, out = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "succeeded", out.getvalue()
    assert [s["status"] for s in outcome.stages] == ["generated"] * 3
    assert all(not s["cache_hit"] for s in outcome.stages)
    result = json.loads((root / "runs/p/results/r1.json").read_text())
    assert result["run"]["spec_hash"] == plan(repo).runs[0].spec_hash
    assert [s["name"] for s in result["stages"]] == ["prepare", "install", "infer"]
    status = json.loads((root / ".work/p/r1/infer/status.json").read_text())
    assert status["status"] == "generated" and status["started_at"] <= status["finished_at"]
    assert "infer done" in (root / ".work/p/r1/infer/log.txt").read_text()


def test_up_to_date_run_is_skipped_and_force_reuses_nothing(tmp_path):
    root = make_repo(tmp_path)
    repo, engine, _ = _engine(root)
    engine.execute(plan(repo))
    repo, engine, _out = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "up-to-date"
    assert _count(root, "prepare") == 1
    repo, engine, _ = _engine(root, force=True)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "succeeded"
    assert _count(root, "prepare") == 2


def test_unchanged_stages_are_cached_when_the_result_is_missing(tmp_path):
    root = make_repo(tmp_path)
    repo, engine, _ = _engine(root)
    engine.execute(plan(repo))
    (root / "runs/p/results/r1.json").unlink()
    repo, engine, out = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "succeeded"
    assert [s["cache_hit"] for s in outcome.stages] == [True, True, True]
    assert _count(root, "infer") == 1
    assert "cached" in out.getvalue()


def test_a_changed_spec_reruns_only_the_stages_it_affects(tmp_path):
    root = make_repo(tmp_path)
    repo, engine, _ = _engine(root)
    engine.execute(plan(repo))
    spec = root / "runs/p/r1.yaml"
    # User stages depend on the whole spec, so a gate change alone re-runs them; a notify change
    # is not part of a custom stage's inputs either way - check the hash moved and all re-ran.
    spec.write_text(spec.read_text().replace("quantization: none", "quantization: fp16"))
    repo, engine, out = _engine(root)
    [run] = plan(repo).runs
    assert run.status == "changed"
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "succeeded"
    assert [s["cache_hit"] for s in outcome.stages] == [False, False, False]
    assert "replacing runs/p/results/r1.json" in out.getvalue()


def test_a_tampered_output_is_not_trusted(tmp_path):
    root = make_repo(tmp_path)
    repo, engine, _ = _engine(root)
    engine.execute(plan(repo))
    (root / "runs/p/results/r1.json").unlink()
    original = (root / ".work/p/r1/install/data.txt").read_text()
    (root / ".work/p/r1/install/data.txt").write_text("edited by hand")
    repo, engine, _ = _engine(root)
    [outcome] = engine.execute(plan(repo))
    # The run volume's copy is not trusted; the shared cache's copy, checked by sha256, is.
    assert [s["cache_hit"] for s in outcome.stages] == [True, True, True]
    assert (root / ".work/p/r1/install/data.txt").read_text() == original
    assert _count(root, "install") == 1
    # Both copies changed: the stage runs again.
    (root / "runs/p/results/r1.json").unlink()
    (root / ".work/p/r1/install/data.txt").write_text("edited by hand")
    [entry] = (root / ".work/.cache").glob(f"*/{outcome.stages[1]['cache_key']}/files/data.txt")
    entry.write_text("edited by hand, too")
    repo, engine, _ = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert [s["cache_hit"] for s in outcome.stages] == [True, False, True]
    assert _count(root, "install") == 2
    assert (root / ".work/p/r1/install/data.txt").read_text() == original


def test_failure_writes_error_and_resumes_from_the_last_good_stage(tmp_path):
    root = make_repo(tmp_path)
    (root / "fail-install").write_text("")
    repo, engine, _out = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "failed"
    assert outcome.failed_stage == "install"
    assert "install was told to fail" in outcome.message and "remove the flag" in outcome.message
    assert [s["status"] for s in outcome.stages] == ["generated", "failed", "pending"]
    assert not (root / "runs/p/results/r1.json").exists(), "a failed run must not write a committed result"
    assert json.loads((root / ".work/p/r1/result.json").read_text())["status"] == "failed"
    (root / "fail-install").unlink()
    repo, engine, _ = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "succeeded"
    assert [s["cache_hit"] for s in outcome.stages] == [True, False, False]
    assert _count(root, "prepare") == 1


def test_stop_at_first_failure_unless_keep_going(tmp_path):
    root = make_repo(tmp_path, runs={"a": {}, "b": {"quantization": "fp16"}})
    (root / "fail-prepare").write_text("")
    repo, engine, _ = _engine(root)
    outcomes = engine.execute(plan(repo))
    assert [o.status for o in outcomes] == ["failed", "not-run"]
    repo, engine, _ = _engine(root, keep_going=True)
    outcomes = engine.execute(plan(repo))
    assert [o.status for o in outcomes] == ["failed", "failed"]


def test_gate_failure_still_writes_the_result_with_verdicts(tmp_path):
    root = make_repo(tmp_path)
    spec = root / "runs/p/r1.yaml"
    spec.write_text(spec.read_text() + "gates: {min_accuracy: 0.9}\n")
    repo, engine, out = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "gates-failed"
    result = json.loads((root / "runs/p/results/r1.json").read_text())
    [verdict] = result["gates"]
    assert verdict["gate"] == "min_accuracy" and verdict["passed"] is False
    assert "min_accuracy" in out.getvalue()


@pytest.mark.parametrize("bad", ["missing-command"])
def test_a_stage_that_cannot_start_fails_cleanly(tmp_path, bad):
    root = make_repo(tmp_path)
    pipe = root / "pipelines/fake.yaml"
    pipe.write_text(
        pipe.read_text().replace(
            "[python, pipelines/stages/fake.py", "[no-such-program-xyz, pipelines/stages/fake.py", 1
        )
    )
    repo, engine, _ = _engine(root)
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "failed" and outcome.failed_stage == "prepare"
    assert "no-such-program-xyz" in outcome.message


class _InProcessExecutor:
    """A fake executor, the seam DVC's ``repro_fn`` is: it runs no process, it plays the stage
    contract in this process (reads stage.json, writes outputs.json or error.json)."""

    name = "in-process"

    def __init__(self, fail: str | None = None, identity: str = "fake:1"):
        self.fail = fail
        self.code = identity
        self.calls: list[str] = []

    def identity(self, call):
        return self.code

    def run(self, call, volume, repo, sink):
        from tinymlaas_ci.engine.executor import ExecOutcome
        from tinymlaas_ci.stages.contract import ErrorRecord, StageOutputs, read_stage_config, write_error
        from tinymlaas_ci.stages.contract import write_outputs as write

        folder = Path(volume) / call.stage
        config = read_stage_config(folder)  # what the engine wrote, typed
        self.calls.append(call.stage)
        sink(f"{call.stage} for {config.run.project}/{config.run.name} on {config.device.name}")
        if call.stage == self.fail:
            write_error(folder, ErrorRecord(stage=call.stage, message="told to fail", hint="do not"))
            return ExecOutcome(returncode=1, executor=self.name)
        (folder / "data.txt").write_text(f"{call.stage}:{sorted(config.inputs)}:{config.spec.measure.warmup}")
        from tinymlaas_ci.fs import sha256_file
        from tinymlaas_ci.stages.contract import Artifact

        data = folder / "data.txt"
        art = Artifact(path=f"{call.stage}/data.txt", sha256=sha256_file(data), bytes=data.stat().st_size)
        write(folder, StageOutputs(stage=call.stage, artifacts={"data": art}, metrics={}, records={}))
        return ExecOutcome(returncode=0, executor=self.name)


def test_engine_runs_a_plan_with_an_injected_executor(tmp_path):
    root = make_repo(tmp_path)
    repo = load_repo(root)
    fake = _InProcessExecutor()
    out = io.StringIO()
    engine = Engine(
        repo,
        RunOptions(executor="in-process", work_dir=root / ".work"),
        Progress(out, mode="plain"),
        executors={"in-process": fake},
    )
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "succeeded", out.getvalue()
    assert fake.calls == ["prepare", "install", "infer"]
    # Each stage saw its upstream outputs (those it needs, and theirs) and the run spec with its
    # defaults filled in.
    assert (root / ".work/p/r1/infer/data.txt").read_text() == "infer:['install', 'prepare']:20"
    assert "prepare for p/r1 on host" in (root / ".work/p/r1/prepare/log.txt").read_text()
    assert [s["executor"] for s in outcome.stages] == ["in-process"] * 3

    # Same plan and code identity: every stage is a cache hit; a new identity runs them again.
    (root / "runs/p/results/r1.json").unlink()
    [again] = engine.execute(plan(repo))
    assert [s["cache_hit"] for s in again.stages] == [True] * 3 and fake.calls == ["prepare", "install", "infer"]
    fake.code = "fake:2"
    (root / "runs/p/results/r1.json").unlink()
    engine.execute(plan(repo))
    assert fake.calls[3:] == ["prepare", "install", "infer"]


def test_injected_executor_failure_stops_the_run_with_its_error(tmp_path):
    root = make_repo(tmp_path)
    repo = load_repo(root)
    fake = _InProcessExecutor(fail="install")
    engine = Engine(
        repo,
        RunOptions(executor="in-process", work_dir=root / ".work"),
        Progress(io.StringIO(), mode="plain"),
        executors={"in-process": fake},
    )
    [outcome] = engine.execute(plan(repo))
    assert outcome.status == "failed" and outcome.failed_stage == "install"
    assert outcome.message == "told to fail (hint: do not)"
    assert fake.calls == ["prepare", "install"]
    assert [s["status"] for s in outcome.stages] == ["generated", "failed", "pending"]
