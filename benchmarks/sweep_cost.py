"""Benchmark: CPU cost of a cold 50-run digits sweep, an earlier commit against this one.

    python benchmarks/sweep_cost.py --base REV [--runs 50] [--rounds 1] [--jobs 1]
        [--write benchmarks/results/sweep_cost.md]

Both commits run in this one invocation: ``REV`` is checked out with ``git worktree add``
into a temporary folder, and each round runs the earlier commit's sweep, then this one's
(interleaved, so a machine that gets busier mid-benchmark weighs on both). A sweep is cold: a
fresh copy of the example repository (the digits CNN and dataset uploads, the host device),
no results, an empty work dir. The cost is the CPU time (user + system) of ``tinymlaas run``
and every process it starts, read with ``getrusage(RUSAGE_CHILDREN)``; wall time is shown
too, but on a shared machine CPU time is the stable measure.

The sweep is one spec whose matrix makes ``--runs`` runs: two quantization modes (none,
static-int8) times calibration sizes, so every run compiles its own model from one shared
model and dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep_spec(runs: int) -> str:
    sizes = [32 + 8 * i for i in range((runs + 1) // 2)]
    return (
        "schema: 1\n"
        "description: Cold-sweep benchmark of the digits CNN.\n"
        "model: {upload: uploads/digits-cnn/model.pkl, format: pytorch, input_shape: [1, 8, 8]}\n"
        "dataset: {upload: uploads/digits/dataset.zip, split: test}\n"
        "device: host\n"
        "runtime: onnxruntime\n"
        "measure: {warmup: 20, min_iterations: 200, min_seconds: 0.5, batch_size: 1}\n"
        "matrix:\n"
        "  compression.quantization: [none, static-int8]\n"
        f"  compression.calibration_samples: [{', '.join(map(str, sizes))}]\n"
    )


def make_repo(dest: Path, runs: int) -> Path:
    dest.mkdir(parents=True)
    for name in ("devices", "pipelines", "uploads"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("results"))
    (dest / "runs" / "bench").mkdir(parents=True)
    (dest / "runs" / "bench" / "sweep.yaml").write_text(sweep_spec(runs))
    git = ["git", "-C", str(dest), "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "sweep"], check=True)
    return dest


def cold_sweep(code: Path, repo: Path, runs: int, jobs: int) -> dict:
    """One cold sweep with the package at ``code``: CPU seconds, wall seconds, outcomes."""
    argv = [sys.executable, "-m", "tinymlaas_ci", "-C", str(repo), "run", "--work-dir", str(repo / ".work")]
    if jobs > 1:
        argv += ["--jobs", str(jobs)]
    selected = list(runs_of(repo))
    assert len(selected) == runs, f"the sweep has {len(selected)} runs, not {runs}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # cwd: the repository, never a checkout, or `python -m` would import the checkout's package.
    proc = subprocess.run(argv, cwd=repo, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"tinymlaas run failed with {proc.returncode}:\n{proc.stderr[-4000:]}")
    accuracy = {}
    for path in sorted((repo / "runs" / "bench" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        accuracy[path.stem] = (result.get("metrics") or {}).get("accuracy")
    return {
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "wall": wall,
        "results": len(accuracy),
        "accuracy": accuracy,
    }


def runs_of(repo: Path):
    spec = (repo / "runs" / "bench" / "sweep.yaml").read_text()
    line = next(ln for ln in spec.splitlines() if "calibration_samples" in ln)
    sizes = line.split("[", 1)[1].rstrip("]").split(",")
    for quant in ("none", "static-int8"):
        for size in sizes:
            yield f"{quant}-{size.strip()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier commit (e.g. the merge base)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="--jobs for this commit's sweep")
    parser.add_argument("--write", type=Path, default=None, help="write a Markdown report here")
    args = parser.parse_args(argv)
    if args.runs % 2:
        parser.error("--runs must be even (two quantization modes)")

    base_rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.base], check=True, capture_output=True, text=True
    ).stdout.strip()
    head_rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    rows: dict[str, list[dict]] = {"base": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="tinymlaas-sweep-bench-") as tmp:
        tmp_path = Path(tmp)
        base_code = tmp_path / "base-code"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base_code), args.base], check=True
        )
        try:
            for r in range(args.rounds):
                for label, code, jobs in (("base", base_code, 1), ("this", REPO, args.jobs)):
                    repo = make_repo(tmp_path / f"{label}-{r}", args.runs)
                    m = cold_sweep(code, repo, args.runs, jobs)
                    rows[label].append(m)
                    print(
                        f"round {r + 1} {label}: {m['cpu']:.1f} CPU-s, {m['wall']:.1f} s wall, {m['results']} results",
                        flush=True,
                    )
                    shutil.rmtree(repo)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_code)], check=False)

    base_cpu = statistics.median(m["cpu"] for m in rows["base"])
    this_cpu = statistics.median(m["cpu"] for m in rows["this"])
    same = all(b["accuracy"] == t["accuracy"] for b, t in zip(rows["base"], rows["this"]))
    lines = [
        "# Cold sweep cost",
        "",
        f"`python benchmarks/sweep_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}`: a cold "
        f"{args.runs}-run digits sweep (none and static-int8 times {args.runs // 2} calibration sizes), local "
        f"executor, on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.rounds} interleaved round(s), medians. CPU time is user + system of `tinymlaas run` and "
        "every process it started.",
        "",
        "| code | CPU (s) | wall (s) | results |",
        "|---|---:|---:|---:|",
        f"| earlier commit {base_rev} | {base_cpu:.1f} | {statistics.median(m['wall'] for m in rows['base']):.1f} | "
        f"{rows['base'][0]['results']} |",
        f"| this commit {head_rev}{f' (--jobs {args.jobs})' if args.jobs > 1 else ''} | {this_cpu:.1f} | "
        f"{statistics.median(m['wall'] for m in rows['this']):.1f} | {rows['this'][0]['results']} |",
        "",
        f"This commit costs **{this_cpu / base_cpu:.0%}** of the earlier commit's CPU time (goal: at most 30%). "
        f"Accuracy of every run identical between the two: {'yes' if same else 'NO'}.",
        "",
    ]
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
