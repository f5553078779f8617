"""``tinymlaas validate`` and ``tinymlaas plan`` end to end, as real subprocesses in a temporary
repository: exit codes, output formats, GitHub annotations and plan statuses against committed
results."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tinymlaas_ci.cli.specs import format_problems_github
from tinymlaas_ci.errors import Problem

from .conftest import RUN

SWEEP = RUN + "matrix:\n  compression.quantization: [none, fp16]\n"


def tinymlaas(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def demo(repo: Path) -> Path:
    """A valid repository: runs/demo/cnn.yaml (a sweep of two) and runs/demo/small.yaml."""
    (repo / "runs" / "demo").mkdir(parents=True)
    (repo / "runs" / "demo" / "cnn.yaml").write_text(SWEEP)
    (repo / "runs" / "demo" / "small.yaml").write_text(RUN + "compression:\n  quantization: dynamic-int8\n")
    return repo


# -- validate ---------------------------------------------------------------------------------


def test_validate_valid_repository_exits_0(demo: Path):
    out = tinymlaas("validate", cwd=demo)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok: 3 runs from 2 spec files, 1 device, 1 pipeline\n"
    assert out.stderr == ""


def test_validate_invalid_repository_exits_1_with_every_problem(demo: Path):
    (demo / "runs" / "demo" / "bad.yaml").write_text(RUN + "runtime: tflite\nmeasure: {warmup: -1}\n")
    out = tinymlaas("validate", cwd=demo)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "runs/demo/bad.yaml:6:10: runtime: 'tflite' is not one of: onnxruntime, pytorch, c, auto",
        "runs/demo/bad.yaml:7:19: measure.warmup: must be at least 0, got -1",
    ]
    assert out.stderr == "2 problems in 1 file\n"


def test_validate_only_the_given_paths(demo: Path):
    (demo / "runs" / "other").mkdir()
    (demo / "runs" / "other" / "bad.yaml").write_text("schema: 2\n")
    out = tinymlaas("validate", "runs/demo", cwd=demo)
    assert out.returncode == 0, out.stdout
    assert out.stdout == "ok: 3 runs from 2 spec files, 1 device, 1 pipeline\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["validate", "--bogus"], "unrecognized arguments: --bogus"),
        (["validate", "--format", "xml"], "invalid choice: 'xml'"),
        (["--repo", "no-such-folder", "validate"], "--repo no-such-folder: not a directory"),
        (["validate", "runs/demo/typo.yaml"], "no such file or folder: runs/demo/typo.yaml"),
        (["plan", "--select", "nothing-like-this"], "no run matches nothing-like-this"),
    ],
    ids=["unknown-option", "bad-format", "missing-repo", "missing-path", "select-matches-nothing"],
)
def test_usage_errors_exit_2(demo: Path, args: list[str], message: str):
    out = tinymlaas(*args, cwd=demo)
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_validate_json(demo: Path):
    (demo / "runs" / "demo" / "bad.yaml").write_text(RUN + "device: hots\n")
    out = tinymlaas("validate", "--format", "json", cwd=demo)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report == {
        "valid": False,
        "problems": [
            {
                "path": "runs/demo/bad.yaml",
                "line": 6,
                "column": 9,
                "message": "device 'hots' is not defined in devices/",
                "hint": "did you mean 'host'?",
            }
        ],
        "run_files": 3,
        "runs": 4,  # a run with a cross-file problem is still expanded and counted
        "devices": ["host"],
        "pipelines": ["default"],
    }
    valid = json.loads(tinymlaas("validate", "--format", "json", "runs/demo/cnn.yaml", cwd=demo).stdout)
    assert valid["valid"] is True and valid["problems"] == [] and valid["runs"] == 2


def test_validate_github_annotations_escape_properties_and_data(demo: Path):
    # ',', ':' and '%' in the file name must be escaped in the 'file' property, and '%' in the message.
    name = "gate,50%:x.yaml"
    (demo / "runs" / "demo" / name).write_text(RUN + "name: gate\ngates:\n  min_accuracy: 95\n")
    out = tinymlaas("validate", "--format", "github", cwd=demo)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "::error file=runs/demo/gate%2C50%25%3Ax.yaml,line=8,col=17,title=tinymlaas validate::"
        "gates.min_accuracy: must be at most 1.0, got 95 (this is a fraction: write 0.95 for 95%25)",
        "1 problem in 1 file",
    ]


def test_github_annotation_escapes_newlines():
    problems = [
        Problem("runs/a.yaml", 0, 0, "two\nlines\r", "50%"),
        Problem("runs/b.yaml", 3, 0, "no column"),
    ]
    assert format_problems_github(problems).splitlines() == [
        "::error file=runs/a.yaml,title=tinymlaas validate::two%0Alines%0D (50%25)",
        "::error file=runs/b.yaml,line=3,col=1,title=tinymlaas validate::no column",
    ]


# -- plan -------------------------------------------------------------------------------------


def _plan_json(root: Path, *args: str) -> dict:
    out = tinymlaas("plan", "--format", "json", *args, cwd=root)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _commit_result(root: Path, run_id: str, spec_hash: str) -> None:
    project, name = run_id.split("/")
    path = root / "runs" / project / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "status": "passed", "run": {"id": run_id, "spec_hash": spec_hash}}))


def test_plan_json_structure(demo: Path):
    plan = _plan_json(demo)
    assert plan["schema"] == 1
    assert [r["id"] for r in plan["runs"]] == ["demo/cnn-none", "demo/cnn-fp16", "demo/small"]
    run = plan["runs"][1]
    assert run["device"] == "host" and run["runner"] == ["self-hosted", "host"]
    assert run["device_kind"] == "local" and run["pipeline"] == "default"
    assert run["matrix"] == {"compression.quantization": "fp16"}
    assert run["source"] == "runs/demo/cnn.yaml" and run["result"] == "runs/demo/results/cnn-fp16.json"
    assert [s["name"] for s in run["stages"]] == ["fetch", "compile", "install", "infer"]
    assert all(len(s["key"]) == 64 for s in run["stages"]) and len(run["spec_hash"]) == 64
    assert plan["summary"] == {"total": 3, "new": 3, "changed": 0, "up-to-date": 0, "gates-failed": 0}
    assert plan["matrix"] == {
        "include": [
            {
                "device": "host",
                "runner": ["self-hosted", "host"],
                "executor": "docker",
                "runs": ["demo/cnn-none", "demo/cnn-fp16", "demo/small"],
            }
        ]
    }


def test_plan_statuses_against_committed_results(demo: Path):
    first = {r["id"]: r["spec_hash"] for r in _plan_json(demo)["runs"]}
    _commit_result(demo, "demo/cnn-none", first["demo/cnn-none"])  # unchanged since its result
    _commit_result(demo, "demo/small", "0" * 64)  # the spec changed after its result
    plan = _plan_json(demo)
    assert {r["id"]: r["status"] for r in plan["runs"]} == {
        "demo/cnn-none": "up-to-date",
        "demo/cnn-fp16": "new",
        "demo/small": "changed",
    }
    assert plan["summary"] == {"total": 3, "new": 1, "changed": 1, "up-to-date": 1, "gates-failed": 0}
    assert plan["matrix"]["include"][0]["runs"] == ["demo/cnn-fp16", "demo/small"]

    pending = _plan_json(demo, "--pending")
    assert [r["id"] for r in pending["runs"]] == ["demo/cnn-fp16", "demo/small"]

    text = tinymlaas("plan", cwd=demo)
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["RUN", "DEVICE", "STATUS", "STAGES"]
    keys = {r["id"]: [s["key"][:8] for s in r["stages"]] for r in plan["runs"]}
    assert lines[1].split() == [
        "demo/cnn-none",
        "host",
        "up-to-date",
        f"fetch[{keys['demo/cnn-none'][0]}]",
        "->",
        f"compile[{keys['demo/cnn-none'][1]}]",
        "->",
        f"install[{keys['demo/cnn-none'][2]}]",
        "->",
        f"infer[{keys['demo/cnn-none'][3]}]",
    ]
    assert lines[-1] == "3 runs: 1 new, 1 changed, 1 up to date"

    md = tinymlaas("plan", "--format", "markdown", cwd=demo)
    assert md.returncode == 0
    assert md.stdout.splitlines() == [
        "**3 runs**: 1 new, 1 changed, 1 up to date",
        "",
        "| run | device | runner | status | stages |",
        "|---|---|---|---|---|",
        "| `demo/cnn-none` | `host` | self-hosted, host | ✅ up to date | fetch → compile → install → infer |",
        "| `demo/cnn-fp16` | `host` | self-hosted, host | 🆕 new | fetch → compile → install → infer |",
        "| `demo/small` | `host` | self-hosted, host | ✏️ changed | fetch → compile → install → infer |",
    ]


def test_plan_refuses_an_invalid_repository(demo: Path):
    (demo / "runs" / "demo" / "bad.yaml").write_text(RUN + "device: nowhere\n")
    out = tinymlaas("plan", cwd=demo)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "runs/demo/bad.yaml:6:9: device 'nowhere' is not defined in devices/ (known devices: host)",
        "cannot plan: 1 problem in 1 file; fix them first (tinymlaas validate)",
    ]


def test_validate_and_plan_import_nothing_heavy(demo: Path):
    probe = textwrap.dedent(
        f"""
        import sys
        from tinymlaas_ci.cli.main import main
        assert main(["--repo", {str(demo)!r}, "validate"]) == 0
        assert main(["--repo", {str(demo)!r}, "plan", "--format", "json"]) == 0
        heavy = ("torch", "onnxruntime", "onnx", "docker", "numpy", "huggingface_hub")
        print("HEAVY", sorted(m for m in heavy if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "HEAVY []"
