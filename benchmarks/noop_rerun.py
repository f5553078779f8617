"""Cold run and no-op re-run of the example sweep, next to ``dvc repro`` doing a no-op.

    pip install 'tinymlaas-ci[ml,bench]'   # bench: DVC, for the comparison
    python benchmarks/noop_rerun.py [--repeat 5] [--out benchmarks/results/noop_rerun.md]

Measured as a user sees it: wall time of whole commands, interpreter start included.

* cold: ``tinymlaas run`` of the five digits runs on a fresh copy (no results, no volumes);
* no-op: ``tinymlaas run`` again: every run is up to date (its result has the planned spec hash);
* stage cache: results deleted, run volumes kept: every stage is reused, results rewritten;
* ``dvc repro`` no-op on an equivalent 4-stage ``dvc.yaml`` (fetch -> compile -> install ->
  infer over the same upload files), after one full ``dvc repro``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DVC_YAML = """stages:
  fetch:
    cmd: >-
      python3 -c "import shutil; shutil.copy('uploads/digits-cnn/model.pkl', 'out/model.pkl');
      shutil.copy('uploads/digits/dataset.zip', 'out/dataset.zip')"
    deps: [uploads/digits-cnn/model.pkl, uploads/digits/dataset.zip]
    outs: [out/model.pkl, out/dataset.zip]
  compile:
    cmd: >-
      python3 -c "import shutil; shutil.copy('out/model.pkl', 'out/model.onnx')"
    deps: [out/model.pkl]
    outs: [out/model.onnx]
  install:
    cmd: >-
      python3 -c "import shutil; shutil.copy('out/model.onnx', 'out/bundle.onnx')"
    deps: [out/model.onnx]
    outs: [out/bundle.onnx]
  infer:
    cmd: >-
      python3 -c "import json; json.dump({'accuracy': 1.0}, open('out/metrics.json', 'w'))"
    deps: [out/bundle.onnx, out/dataset.zip]
    metrics: [out/metrics.json]
"""


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def example_copy(dest: Path) -> Path:
    for name in ("devices", "pipelines", "uploads"):
        shutil.copytree(ROOT / name, dest / name)
    (dest / "runs" / "digits").mkdir(parents=True)
    for spec in (ROOT / "runs" / "digits").glob("*.yaml"):
        shutil.copy2(spec, dest / "runs" / "digits" / spec.name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "noop_rerun.md")
    args = parser.parse_args()
    tinymlaas = [sys.executable, "-m", "tinymlaas_ci", "run"]
    with tempfile.TemporaryDirectory(prefix="noop.") as tmp:
        repo = example_copy(Path(tmp) / "repo")
        cold = timed(tinymlaas, repo)
        noop = [timed(tinymlaas, repo) for _ in range(args.repeat)]
        cached = []
        for _ in range(args.repeat):
            for result in (repo / "runs" / "digits" / "results").glob("*.json"):
                result.unlink()
            cached.append(timed(tinymlaas, repo))

        rows = [
            ("tinymlaas run, cold (5 runs x 4 stages)", cold, None),
            ("tinymlaas run, no-op (all up to date)", min(noop), statistics.median(noop)),
            ("tinymlaas run, results deleted (20 stages from cache)", min(cached), statistics.median(cached)),
        ]
        dvc = shutil.which("dvc")
        if dvc:
            drepo = Path(tmp) / "dvc"
            shutil.copytree(ROOT / "uploads", drepo / "uploads")
            (drepo / "out").mkdir()
            (drepo / "dvc.yaml").write_text(DVC_YAML)
            subprocess.run(["git", "init", "-q"], cwd=drepo, check=True)
            subprocess.run([dvc, "init", "-q"], cwd=drepo, check=True)
            timed([dvc, "repro", "-q"], drepo)
            dvc_noop = [timed([dvc, "repro"], drepo) for _ in range(args.repeat)]
            rows.append(("dvc repro, no-op (1 pipeline x 4 stages)", min(dvc_noop), statistics.median(dvc_noop)))
    base = rows[1][1]
    lines = [
        "# Cold run and no-op re-run of the example sweep",
        "",
        f"`python benchmarks/noop_rerun.py --repeat {args.repeat}`: wall time of whole commands,",
        "interpreter start included; best and median of the repeats.",
        "",
        "| command | best s | median s | vs tinymlaas no-op |",
        "|---|---:|---:|---:|",
    ]
    for name, best, median in rows:
        med = f"{median:.3f}" if median is not None else "-"
        lines.append(f"| {name} | {best:.3f} | {med} | {best / base:.2f}x |")
    if not shutil.which("dvc"):
        lines += ["", "DVC is not installed (`pip install dvc`): its row is missing."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
