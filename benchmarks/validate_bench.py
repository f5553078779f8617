"""How fast is ``tinymlaas validate``?

Generates a repository of 1,000 valid run spec files (a realistic mix: uploads and Hugging Face
sources, pruning, gates, notify, and one in five a matrix sweep) and measures, side by side:

* in-process :func:`~tinymlaas_ci.spec.repo.load_repo` (YAML with positions, pydantic models,
  matrix expansion, cross-file checks, upload hashing), best of 5; the target is at most 1 s;
* ``check-jsonschema --schemafile schemas/run.schema.json <files>`` as a subprocess (wall
  time, best of 3), and the same check in-process with the ``jsonschema`` package, best of 5;
* ``tinymlaas validate`` on the same repository as a subprocess (what a pull request pays);
* ``tinymlaas validate --help`` start-up, best of 10, and that torch, onnxruntime and docker are
  not imported by ``validate``.

    python benchmarks/validate_bench.py [--files 1000] [--write benchmarks/results/validate.md]

The table is printed as Markdown; ``--write`` also stores it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "run.schema.json"
HEAVY = ("torch", "onnxruntime", "docker")

_QUANT = ["none", "dynamic-int8", "static-int8", "fp16"]


def _spec(i: int) -> str:
    """One valid run spec; ``i`` picks the variant so the mix is deterministic."""
    if i % 7 == 3:
        model = "model:\n  huggingface: acme/tiny-cnn\n  revision: v1.2\n  file: model.onnx\n  format: onnx\n"
        dataset = "dataset:\n  huggingface: acme/digits\n  split: test\n  format: parquet\n"
    else:
        model = "model:\n  upload: uploads/m/model.pkl\n  format: pytorch\n  input_shape: [1, 8, 8]\n"
        dataset = "dataset:\n  upload: uploads/d/dataset.zip\n  split: test\n"
    compression = f"compression:\n  quantization: {_QUANT[i % 4]}\n  calibration_samples: {64 * (1 + i % 4)}\n"
    if i % 3 == 0:
        compression += f"  pruning: {{sparsity: 0.{1 + i % 8}, fine_tune_epochs: {i % 3}}}\n"
    text = (
        "# yaml-language-server: $schema=../../schemas/run.schema.json\n"
        f"schema: 1\ndescription: Benchmark run {i}, variant {i % 5}.\n{model}{dataset}{compression}"
        f"device: {'host' if i % 2 else 'rpi4'}\n"
        "runtime: onnxruntime\n"
        f"measure: {{warmup: 10, min_iterations: {100 + i % 50}, min_seconds: 0.5, batch_size: 1}}\n"
        "gates:\n  min_accuracy: 0.9\n  max_accuracy_drop: 0.02\n  max_latency_p95_ms: 5.0\n"
        "notify: [ml-team@example.com]\n"
    )
    if i % 5 == 0:
        text = text.replace("  quantization: " + _QUANT[i % 4] + "\n", "")
        text += "matrix:\n  compression.quantization: [none, dynamic-int8, static-int8, fp16]\n"
    return text


def make_repo(root: Path, n_files: int) -> list[Path]:
    (root / "devices").mkdir(parents=True)
    (root / "devices" / "host.yaml").write_text("schema: 1\nkind: local\nrunner: [self-hosted, host]\n")
    (root / "devices" / "rpi4.yaml").write_text(
        "schema: 1\nkind: docker\narch: arm64\ndocker: {host: 'ssh://pi@rpi4.lab'}\nrunner: [self-hosted, rpi4]\n"
    )
    (root / "uploads" / "m").mkdir(parents=True)
    (root / "uploads" / "m" / "model.pkl").write_bytes(os.urandom(160_000))
    (root / "uploads" / "d").mkdir(parents=True)
    (root / "uploads" / "d" / "dataset.zip").write_bytes(os.urandom(400_000))
    files = []
    for i in range(n_files):
        path = root / "runs" / f"project{i // 100:02d}" / f"run{i:04d}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_spec(i))
        files.append(path)
    return files


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_load_repo(root: Path, n_files: int) -> tuple[float, float, int]:
    from tinymlaas_ci.spec.repo import load_repo

    start = time.perf_counter()
    repo = load_repo(root)
    cold = time.perf_counter() - start
    if repo.problems:
        raise SystemExit("generated specs are invalid:\n" + "\n".join(p.format() for p in repo.problems[:10]))
    assert len(repo.run_files) == n_files
    return best(lambda: load_repo(root), 5), cold, len(repo.runs)


def bench_jsonschema_inprocess(files: list[Path]) -> float:
    import jsonschema
    import yaml

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def run():
        for path in files:
            errors = list(validator.iter_errors(yaml.load(path.read_bytes(), Loader=loader)))
            assert not errors, (path, errors[0].message)

    return best(run, 5)


def bench_check_jsonschema(files: list[Path]) -> float | None:
    exe = shutil.which("check-jsonschema")
    if exe is None:
        return None

    def run():
        out = subprocess.run([exe, "--schemafile", str(SCHEMA), *map(str, files)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"check-jsonschema failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")

    return best(run, 3)


def bench_cli_validate(root: Path) -> float:
    def run():
        out = subprocess.run(
            [sys.executable, "-m", "tinymlaas_ci", "--repo", str(root), "validate"], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr + out.stdout

    return best(run, 3)


def bench_help() -> float:
    def run():
        subprocess.run([sys.executable, "-m", "tinymlaas_ci", "validate", "--help"], capture_output=True, check=True)

    return best(run, 10)


def heavy_imports(root: Path) -> list[str]:
    """Modules of HEAVY imported by ``validate --help`` and by a full ``validate``."""
    probe = textwrap.dedent(
        f"""
        import sys
        from tinymlaas_ci.cli.main import main
        try:
            main(["validate", "--help"])
        except SystemExit:
            pass
        main(["--repo", {str(root)!r}, "validate"])
        print("HEAVY:" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    marker = [line for line in out.stdout.splitlines() if line.startswith("HEAVY:")][-1]
    return [m for m in marker[len("HEAVY:") :].split(",") if m]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="number of run spec files (default 1000)")
    parser.add_argument("--write", metavar="FILE", help="also write the Markdown table to FILE")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tinymlaas-bench-") as tmp:
        root = Path(tmp)
        files = make_repo(root, args.files)
        ours, cold, n_runs = bench_load_repo(root, args.files)
        inproc = bench_jsonschema_inprocess(files)
        cli_check = bench_check_jsonschema(files)
        cli_ours = bench_cli_validate(root)
        help_s = bench_help()
        heavy = heavy_imports(root)

    n = args.files
    rows = [
        (
            "`load_repo` in-process (ours, best of 5)",
            ours,
            "1.0x",
            f"{n} files -> {n_runs} runs; positions, models, matrix, cross-file checks, upload hashes",
        ),
        ("`load_repo` in-process, first call", cold, f"{cold / ours:.1f}x", "the first call in a fresh process"),
        (
            "`jsonschema` in-process (best of 5)",
            inproc,
            f"{inproc / ours:.1f}x",
            "C YAML parser + Draft 2020-12 validator, schema checks only",
        ),
    ]
    if cli_check is not None:
        rows.append(
            (
                "`check-jsonschema` subprocess (best of 3)",
                cli_check,
                f"{cli_check / ours:.1f}x",
                "wall time, including its start-up",
            )
        )
    rows.append(
        (
            "`tinymlaas validate` subprocess (best of 3)",
            cli_ours,
            f"{cli_ours / ours:.1f}x",
            "wall time, including start-up",
        )
    )
    lines = [
        f"# Validating {n} run spec files",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; "
        "generated by `python benchmarks/validate_bench.py`.",
        "",
        "| what | seconds | vs ours | notes |",
        "|---|---:|---:|---|",
        *(f"| {name} | {secs:.3f} | {ratio} | {note} |" for name, secs, ratio, note in rows),
        "",
        f"- In-process target (at most 1 s for {n} files): **{'met' if ours <= 1.0 else 'MISSED'}** ({ours:.3f} s, "
        f"{ours / n * 1e3:.2f} ms per file).",
        f"- `tinymlaas validate --help` start-up, best of 10: **{help_s * 1e3:.0f} ms** (target well under 300 ms).",
        f"- Imported by `validate --help` and `validate`: {', '.join(heavy) or 'none'} of {', '.join(HEAVY)}.",
    ]
    if cli_check is not None:
        lines.append(
            f"- `check-jsonschema` / in-process `load_repo`: **{cli_check / ours:.1f}x**; "
            f"`check-jsonschema` / `tinymlaas validate` (both subprocesses): **{cli_check / cli_ours:.1f}x**."
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        Path(args.write).write_text(table)
    return 1 if heavy or ours > 1.0 else 0


if __name__ == "__main__":
    sys.exit(main())
