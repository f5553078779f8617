"""The planner: pure, deterministic, and its keys change exactly when a stage's inputs change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tinymlaas_ci.errors import UsageError
from tinymlaas_ci.plan import plan
from tinymlaas_ci.spec.repo import load_repo

from .conftest import RUN

SWEEP = RUN + "matrix:\n  compression.quantization: [none, dynamic-int8, static-int8, fp16]\n"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _plan(root: Path, select: list[str] | None = None):
    repo = load_repo(root)
    assert repo.problems == []
    return plan(repo, select)


def _keys(root: Path, run_id: str) -> dict[str, str]:
    run = next(r for r in _plan(root).runs if r.id == run_id)
    return {s.name: s.key for s in run.stages} | {"spec": run.spec_hash}


def test_plan_is_deterministic(repo: Path):
    _write(repo, "runs/p/cnn.yaml", SWEEP)
    first, second = _plan(repo).to_json(), _plan(repo).to_json()
    assert first == second
    assert len({r["spec_hash"] for r in first["runs"]}) == 4


def test_plan_does_no_io(repo: Path, tmp_path: Path):
    """Everything plan() needs was read by load_repo; the folder can be gone."""
    _write(repo, "runs/p/cnn.yaml", SWEEP)
    loaded = load_repo(repo)
    expected = plan(loaded).to_json()
    shutil.rmtree(repo)
    assert not repo.exists()
    assert plan(loaded).to_json() == expected


def test_compression_changes_compile_install_infer_but_not_fetch(repo: Path):
    _write(repo, "runs/p/a.yaml", RUN)
    before = _keys(repo, "p/a")
    _write(repo, "runs/p/a.yaml", RUN + "compression:\n  quantization: fp16\n")
    after = _keys(repo, "p/a")
    assert after["fetch"] == before["fetch"]
    for stage in ("compile", "install", "infer", "spec"):
        assert after[stage] != before[stage], stage


def test_compile_follows_the_device_and_the_measured_batch_but_not_the_timing_budget(repo: Path):
    # static-int8 (and runtime auto) choose what to deploy by timing on the device's CPU at the
    # batch and threads the infer stage measures: those are the compile's inputs.
    _write(repo, "runs/p/a.yaml", RUN)
    before = _keys(repo, "p/a")
    _write(repo, "runs/p/a.yaml", RUN + "measure: {warmup: 3, min_seconds: 0.1}\n")
    assert _keys(repo, "p/a")["compile"] == before["compile"]
    (repo / "devices" / "lab.yaml").write_text("schema: 1\nkind: local\nrunner: [self-hosted, lab]\n")
    for extra in ("measure: {batch_size: 8}\n", "measure: {threads: 2}\n", "device: lab\n"):
        _write(repo, "runs/p/a.yaml", RUN + extra)
        after = _keys(repo, "p/a")
        assert after["fetch"] == before["fetch"] and after["compile"] != before["compile"], extra


def test_upload_bytes_change_fetch_key_and_spec_hash(repo: Path):
    _write(repo, "runs/p/a.yaml", RUN)
    before = _keys(repo, "p/a")
    (repo / "uploads" / "m" / "model.onnx").write_bytes(b"retrained weights")
    after = _keys(repo, "p/a")
    assert after["fetch"] != before["fetch"]
    assert after["spec"] != before["spec"]


def test_gates_change_spec_hash_but_no_stage_key(repo: Path):
    _write(repo, "runs/p/a.yaml", RUN)
    before = _keys(repo, "p/a")
    _write(repo, "runs/p/a.yaml", RUN + "gates:\n  min_accuracy: 0.9\nnotify: [a@example.com]\n")
    after = _keys(repo, "p/a")
    assert after["spec"] != before["spec"]
    assert {k: v for k, v in after.items() if k != "spec"} == {k: v for k, v in before.items() if k != "spec"}


def test_matrix_expansion_names_and_counts(repo: Path):
    _write(repo, "devices/rpi4.yaml", "schema: 1\nkind: docker\narch: arm64\nrunner: [self-hosted, rpi4]\n")
    _write(repo, "runs/p/cnn.yaml", SWEEP)
    _write(repo, "runs/p/grid.yaml", RUN + "matrix:\n  device: [host, rpi4]\n  measure.batch_size: [1, 8]\n")
    result = _plan(repo)
    assert [r.name for r in result.runs] == [
        "cnn-none",
        "cnn-dynamic-int8",
        "cnn-static-int8",
        "cnn-fp16",
        "grid-host-1",
        "grid-host-8",
        "grid-rpi4-1",
        "grid-rpi4-8",
    ]
    grid = {r.name: r for r in result.runs if r.name.startswith("grid")}
    assert grid["grid-rpi4-8"].device == "rpi4" and grid["grid-rpi4-8"].spec.measure.batch_size == 8
    assert grid["grid-rpi4-8"].matrix == {"device": "rpi4", "measure.batch_size": 8}
    assert grid["grid-host-1"].runner == ("self-hosted", "host")


@pytest.mark.parametrize(
    "patterns, expected",
    [
        (["p/cnn-*"], ["p/cnn-none", "p/cnn-dynamic-int8", "p/cnn-static-int8", "p/cnn-fp16"]),
        (["*int8"], ["p/cnn-dynamic-int8", "p/cnn-static-int8"]),
        (["small"], ["q/small"]),
        (["q"], ["q/small"]),
        (["cnn-fp16", "q/*"], ["p/cnn-fp16", "q/small"]),
    ],
)
def test_select_patterns(repo: Path, patterns: list[str], expected: list[str]):
    _write(repo, "runs/p/cnn.yaml", SWEEP)
    _write(repo, "runs/q/small.yaml", RUN)
    assert [r.id for r in _plan(repo, patterns).runs] == expected


def test_select_matching_nothing_is_a_usage_error(repo: Path):
    _write(repo, "runs/p/a.yaml", RUN)
    with pytest.raises(UsageError, match="no run matches nope") as info:
        _plan(repo, ["nope"])
    assert info.value.exit_code == 2 and info.value.hint == "runs: p/a"


def test_plan_json_matrix_groups_pending_runs_by_device(repo: Path):
    _write(repo, "devices/rpi4.yaml", "schema: 1\nkind: docker\narch: arm64\nrunner: [self-hosted, rpi4]\n")
    _write(repo, "runs/p/grid.yaml", RUN + "matrix:\n  device: [rpi4, host]\n")
    _write(repo, "runs/p/solo.yaml", RUN + "device: rpi4\n")
    first = _plan(repo)
    done = next(r for r in first.runs if r.id == "p/grid-host")
    _write(repo, "runs/p/results/grid-host.json", f'{{"run": {{"spec_hash": "{done.spec_hash}"}}}}')
    assert _plan(repo).to_json()["matrix"] == {
        "include": [
            # grid-host is up to date, so host has nothing pending and no job.
            {
                "device": "rpi4",
                "runner": ["self-hosted", "rpi4"],
                "executor": "docker",
                "runs": ["p/grid-rpi4", "p/solo"],
            },
        ]
    }
    _write(repo, "runs/p/results/grid-host.json", '{"run": {"spec_hash": "stale"}}')
    assert [d["device"] for d in _plan(repo).to_json()["matrix"]["include"]] == ["host", "rpi4"]


def test_an_edit_to_a_model_companion_changes_the_fetch_key(tmp_path):
    """The ``*.py`` beside an uploaded pickle defines its classes: editing it must fetch again."""
    root = Path(__file__).resolve().parents[2]
    for d in ("runs/digits", "devices", "pipelines", "uploads"):
        shutil.copytree(root / d, tmp_path / d)

    def fetch_key_and_hash():
        run = plan(load_repo(tmp_path)).runs[0]
        return next(s.key for s in run.stages if s.builtin == "fetch"), run.spec_hash

    before = fetch_key_and_hash()
    code = tmp_path / "uploads" / "digits-cnn" / "train.py"
    code.write_text(code.read_text() + "\n# an edit\n")
    after = fetch_key_and_hash()
    assert after[0] != before[0]
    assert after[1] == before[1]  # the committed results' spec hashes stay valid
