"""Instructions per MAC, flash and RAM of int8 models on the emulated Cortex-M boards.

    python benchmarks/mcu.py [--boards mps2-an386,mps3-an547] [--generated digits,resnet8,dscnn]
                             [--layers] [--model-dir DIR ...] [--samples 20]
                             [--out benchmarks/results/mcu.md]

For each model and board: build the firmware (the device budgets of the board preset), run
``--samples`` int8 inputs under QEMU with the instruction-count plugin, and report the exact
instructions per inference (median/min/max over the samples), instructions per MAC, the flash
taken by the model (code + weights) against its weights, the firmware total, the arena, static
RAM and the measured stack high-water. Instruction counts are exact and deterministic, so one
pass is enough; the latency column is instructions / the board's clock, an estimate (QEMU has
no timing model).

The models are, first, the hand-written int8 MLP test fixtures: a plain C MAC loop (the
portable baseline) and the same model with a simple SMLAD (DSP) or Helium (MVE) dot product.
Then the generated models named by ``--generated``, built here from torch the way the compile
stage's ``runtime: c`` builds them (fp32 ONNX, static int8 QDQ per channel through
:func:`~tinymlaas_ci.ml.cgen.quantize_qdq`, C from :func:`~tinymlaas_ci.ml.cgen.generate_c`):

* ``digits``: the example digits CNN (``uploads/digits-cnn/model.pkl``, 1x8x8) compiled by
  :func:`~tinymlaas_ci.ml.c_runtime.compile_c` with 256 calibration samples of its train split;
* ``resnet8``: MLPerf Tiny's image-classification ResNet-8 (3x32x32, untrained);
* ``dscnn``: MLPerf Tiny's keyword-spotting DS-CNN (1x49x10, 64 channels, depthwise-separable,
  untrained);
* ``mobilenet``: a width-0.25 MobileNet-v1 of the visual-wake-words shape on 3x48x48 (untrained).

Untrained models have the same instruction counts as trained ones of their shape (the kernels
have no data-dependent branches apart from clamping). Every model's outputs on the boards are
checked bit for bit against the numpy integer reference (:mod:`tinymlaas_ci.ml.cgen.reference`
for the generated ones). A ``--model-dir`` adds a folder that already holds a generated
``model.h``/``model.c`` (not checked). Every row shows the ratio of its instructions per MAC to
the plain-C baseline (784-256-128-10) on the same board. ``--layers`` adds a per-layer
breakdown of the generated models on the Cortex-M4 and Cortex-M55 boards: the firmware is
rebuilt with ``tinyml_model_run`` returning after each step in turn, and a step's instructions
are the difference of two consecutive counts.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mcu.fixture_model import make_mlp
from tinymlaas_ci.devices.mcu import BOARDS, build_firmware, run_on_board
from tinymlaas_ci.devices.mcu.harness import qemu_version, toolchain_version

GOALS = {"cortex-m4": 2.0, "cortex-m55": 1.0}
FIXTURES = {
    "mlp 64-64-10 (plain C)": ((64, 64, 10), False),
    "mlp 784-256-128-10 (plain C)": ((784, 256, 128, 10), False),
    "mlp 784-256-128-10 (SMLAD / MVE dot)": ((784, 256, 128, 10), True),
}
BASELINE = "mlp 784-256-128-10 (plain C)"
GENERATED = {
    "digits": "digits CNN (generated)",
    "resnet8": "ResNet-8 (generated)",
    "dscnn": "DS-CNN (generated)",
    "mobilenet": "MobileNet-v1 0.25 (generated)",
}
DEFAULT_GENERATED = "digits,resnet8,dscnn"
LAYER_BOARDS = ("mps2-an386", "mps3-an547")


def _digits(tmp: Path) -> Path:
    """The example digits CNN through the compile stage's runtime c path; returns the int8 ONNX."""
    from tests.digits_example import DIGITS_MODEL, digits_arrays
    from tinymlaas_ci.ml.c_runtime import compile_c
    from tinymlaas_ci.spec.models import Compression

    data = digits_arrays()
    compiled = compile_c(
        DIGITS_MODEL,
        tmp,
        compression=Compression(quantization="static-int8", per_channel=True, calibration_samples=256),
        data=data,
    )
    return compiled.compiled.deployed


def _untrained(name: str, tmp: Path) -> Path:
    """An untrained network of MLPerf Tiny's shape, static int8 on 64 uniform [-1, 1) samples."""
    import torch

    from tests.cgen import nets
    from tinymlaas_ci.ml import formats
    from tinymlaas_ci.ml.cgen import quantize_qdq

    cls = {"resnet8": nets.ResNet8, "dscnn": nets.DSCNN, "mobilenet": nets.MobileNetV1}[name]
    torch.manual_seed(0)
    model = cls().eval()
    tmp.mkdir(parents=True, exist_ok=True)
    formats.export_onnx(model, tmp / "fp32.onnx", cls.input_shape)
    calib = np.random.default_rng(0).uniform(-1, 1, (64, *cls.input_shape)).astype(np.float32)
    quantize_qdq(tmp / "fp32.onnx", tmp / "int8.onnx", calib)
    return tmp / "int8.onnx"


def generated_model(name: str, tmp: Path):
    """(C folder, reference function over int8 [n, input_size], CModelInfo) of one generated model."""
    from tinymlaas_ci.ml.cgen import generate_from_graph
    from tinymlaas_ci.ml.cgen.parse import load_graph
    from tinymlaas_ci.ml.cgen.reference import run_graph

    onnx_path = _digits(tmp) if name == "digits" else _untrained(name, tmp)
    graph = load_graph(onnx_path)
    info = generate_from_graph(graph, tmp / "cgen")
    shape = graph.tensors[graph.input].shape

    def reference(x: np.ndarray) -> np.ndarray:
        return np.stack([run_graph(graph, s.reshape(shape)).reshape(-1) for s in x])

    return info.out_dir, reference, info


_STEP_RE = re.compile(r"^    (tinyml_\w+|for \(|memcpy\()")
_TAG_RE = re.compile(r"/\* (l\d+): (\S+) (.*) -> (\[[^\]]*\]) \*/")


def _steps(model_c: str) -> tuple[list[str], int, list[tuple[int, str]]]:
    """model.c's lines, the index of tinyml_model_run's first line, and its top-level calls."""
    lines = model_c.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("int tinyml_model_run("))
    steps, i = [], start + 1
    while lines[i] != "}":
        if _STEP_RE.match(lines[i]):
            first = i
            if lines[i].startswith("    for ("):
                while lines[i] != "    }":
                    i += 1
            steps.append((i, lines[first].strip()))
        i += 1
    return lines, start, steps


def layer_breakdown(folder: Path, info, board: str, work: Path) -> list[dict]:
    """Instructions of every call in tinyml_model_run on ``board``: prefix counts, differenced.

    After every call the run returns when a volatile counter says so; only its initial value
    differs between the builds, so the code (inlining, constants) is the same in all of them.
    """
    lines, start, steps = _steps((folder / "model.c").read_text())
    text = "\n".join(lines)
    tags = {m.group(1): (m.group(2), m.group(3), m.group(4)) for m in _TAG_RE.finditer(text)}
    macs = {op["name"]: op["macs"] for op in info.ops}
    x = np.random.default_rng(0).integers(-128, 128, size=(1, info.input_size)).astype(np.int8)
    arena = next(i for i, ln in enumerate(lines) if ln == "    (void)arena;")
    counts = []
    for n in range(len(steps) + 1):
        cut = work / f"model-{n}"
        if cut.exists():
            shutil.rmtree(cut)
        shutil.copytree(folder, cut)
        body = list(lines)
        for at in sorted([arena] + [line for line, _call in steps], reverse=True):
            body.insert(at + 1, "    if (tinyml_bench_steps-- == 0) return 0;")
        body.insert(start, f"volatile int tinyml_bench_steps = {n};")
        (cut / "model.c").write_text("\n".join(body))
        fw = build_firmware(cut, board, out_dir=work / f"fw-{n}")
        counts.append(run_on_board(fw, x).instructions[0])
    rows = []
    for n, (_line, call) in enumerate(steps):
        fn = call.split("(")[0]
        tag = re.search(r"&(l\d+)", call)
        what = tags.get(tag.group(1)) if tag else None
        name = what[1] if what else ""
        rows.append(
            {
                "step": n,
                "call": fn if what is None else f"{fn} ({what[0]} {what[2]})",
                "macs": macs.get(name, 0),
                "instructions": counts[n + 1] - counts[n],
            }
        )
    return rows


def measure(model_dir: Path, board: str, samples: int, work: Path, reference=None) -> dict:
    fw = build_firmware(model_dir, board, out_dir=work)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(samples, fw.input_size)).astype(np.int8)
    run = run_on_board(fw, x)
    if reference is not None:
        np.testing.assert_array_equal(run.outputs, reference(x))
    m = run.metrics()
    ipi = m["instructions_per_inference"]
    return {
        "board": board,
        "cpu": BOARDS[board].cpu,
        "macs": fw.macs,
        "ipi": ipi,
        "ipm": ipi["median"] / fw.macs,
        "latency_ms": m["latency_ms_estimate"]["median"],
        "clock_mhz": run.clock_mhz,
        "weights": fw.weights_bytes,
        "model_flash": fw.model_flash_bytes,
        "flash": fw.flash_bytes,
        "flash_budget": fw.flash_budget_bytes,
        "arena": fw.arena_bytes,
        "ram_static": fw.ram_bytes,
        "stack": run.stack_high_water_bytes,
        "ram_budget": fw.ram_budget_bytes,
        "fw": fw,
        "bit_exact": reference is not None,
    }


def throughput(fw, samples: int, rounds: int) -> dict:
    """Wall ms per inference, samples preloaded vs over the UART, interleaved rounds, medians.

    Per inference = (median time for ``samples`` - median time for 1) / (samples - 1): the QEMU
    start, boot and shutdown cancel out.
    """
    x = np.random.default_rng(1).integers(-128, 128, size=(samples, fw.input_size)).astype(np.int8)
    times = {(p, n): [] for p in (True, False) for n in (1, samples)}
    for _ in range(rounds):
        for preload in (True, False):
            for n in (1, samples):
                started = time.perf_counter()
                run_on_board(fw, x[:n], preload=preload)
                times[(preload, n)].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    per = {p: 1000.0 * (med[(p, samples)] - med[(p, 1)]) / (samples - 1) for p in (True, False)}
    return {"start_s": med[(True, 1)], "preload_ms": per[True], "uart_ms": per[False]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", default=",".join(sorted(BOARDS)))
    parser.add_argument(
        "--generated",
        default=DEFAULT_GENERATED,
        help=f"comma-separated generated models out of {', '.join(GENERATED)} ('' for none)",
    )
    parser.add_argument(
        "--fixtures", action=argparse.BooleanOptionalAction, default=True, help="measure the hand-written MLPs"
    )
    parser.add_argument("--layers", action="store_true", help="per-layer breakdown of the generated models")
    parser.add_argument("--model-dir", action="append", default=[], type=Path)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mcu.md")
    args = parser.parse_args()
    boards = [b for b in args.boards.split(",") if b]
    generated = [g for g in args.generated.split(",") if g]
    unknown = sorted(set(generated) - set(GENERATED))
    if unknown:
        parser.error(f"unknown generated model(s) {', '.join(unknown)}; choose from {', '.join(GENERATED)}")
    rows = []
    layers = []
    with tempfile.TemporaryDirectory(prefix="tinymlaas-mcu-bench-") as tmp:
        tmp = Path(tmp)
        models = []
        for name, (sizes, simd) in FIXTURES.items() if args.fixtures else ():
            fixture = make_mlp(sizes, seed=0)
            models.append((name, fixture.write(tmp / f"model-{len(models)}", simd=simd), fixture.reference))
        infos = {}
        for g in generated:
            folder, reference, info = generated_model(g, tmp / f"gen-{g}")
            models.append((GENERATED[g], folder, reference))
            infos[GENERATED[g]] = info
        models += [(f"{d.name} (generated)", d.resolve(), None) for d in args.model_dir]
        for name, folder, reference in models:
            for board in boards:
                row = measure(folder, board, args.samples, tmp / f"fw-{len(rows)}", reference)
                row["model"] = name
                rows.append(row)
                if name == BASELINE:
                    row["throughput"] = throughput(row["fw"], args.samples, args.rounds)
                print(f"{name:36s} {board:12s} {row['ipm']:.2f} instructions/MAC", flush=True)
                if args.layers and name in infos and board in LAYER_BOARDS:
                    for layer in layer_breakdown(folder, infos[name], board, tmp / f"layers-{len(rows)}"):
                        layers.append({"model": name, "board": board, "total": row["ipi"]["median"], **layer})
    baseline = {r["board"]: r["ipm"] for r in rows if r["model"] == BASELINE}
    lines = [
        "# Int8 models on Cortex-M boards (QEMU)",
        "",
        f"`python benchmarks/mcu.py --samples {args.samples} --rounds {args.rounds}"
        + (f" --generated {args.generated}" if args.generated != DEFAULT_GENERATED else "")
        + (" --layers" if args.layers else "")
        + "".join(f" --model-dir {d}" for d in args.model_dir)
        + "`"
        + f": {args.samples} random int8 inputs per model and board, instructions counted exactly",
        "between the firmware's two marker functions by the QEMU instruction-count plugin (identical",
        "across runs). Flash and RAM are read from the linked image; stack is the measured high-water.",
        "Latency is instructions / the FPGA image's clock: an estimate, QEMU has no timing model.",
        "",
        f"Toolchain: {toolchain_version()}; {qemu_version()}; host {platform.machine()}, Python "
        f"{platform.python_version()}. Compiler flags: -O2 and the board's -mcpu/-mfpu/-mfloat-abi.",
        f"Host load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times only;",
        "instruction counts do not depend on it).",
        "",
        "## Instructions per MAC",
        "",
        "| model | board | core | MACs | instructions/inference median (min-max) | instructions/MAC | goal | "
        "vs plain C | latency estimate ms | outputs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ipi = r["ipi"]
        goal = GOALS.get(r["cpu"])
        ratio = r["ipm"] / baseline[r["board"]] if r["board"] in baseline else None
        lines.append(
            f"| {r['model']} | {r['board']} | {r['cpu']} | {r['macs']} | {ipi['median']:.0f} "
            f"({ipi['min']}-{ipi['max']}) | {r['ipm']:.2f} | {'-' if goal is None else f'<= {goal}'} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | {r['latency_ms']:.3f} @ {r['clock_mhz']:g} MHz | "
            f"{'bit-exact' if r['bit_exact'] else 'not checked'} |"
        )
    if layers:
        lines += [
            "",
            "## Per layer",
            "",
            "Instructions of each call in `tinyml_model_run` (one input; the firmware rebuilt to return",
            "after each call in turn, consecutive counts differenced). Layout changes and pooling count",
            "instructions but no MACs.",
            "",
            "| model | board | step | call | MACs | instructions | instructions/MAC | share |",
            "|---|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in layers:
            ipm = f"{r['instructions'] / r['macs']:.2f}" if r["macs"] else "-"
            lines.append(
                f"| {r['model']} | {r['board']} | {r['step']} | {r['call']} | {r['macs']} | {r['instructions']} | "
                f"{ipm} | {100 * r['instructions'] / r['total']:.1f}% |"
            )
    lines += [
        "",
        "## Flash and RAM",
        "",
        "Budgets are the presets' defaults (a typical part with that core). Model flash is the",
        "model's code and constant data as linked; the goal is at most weights x 1.05 + 6 KiB.",
        "",
        "| model | board | weights B | model flash B | goal B | firmware flash B / budget | arena B | "
        "static RAM B | stack high-water B | RAM B / budget |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        goal = int(r["weights"] * 1.05 + 6 * 1024)
        lines.append(
            f"| {r['model']} | {r['board']} | {r['weights']} | {r['model_flash']} | {goal} | "
            f"{r['flash']} / {r['flash_budget']} | {r['arena']} | {r['ram_static']} | {r['stack']} | "
            f"{r['ram_static'] + r['stack']} / {r['ram_budget']} |"
        )
    lines += [
        "",
        "## Harness throughput",
        "",
        "Host wall time per inference, for planning how long a test split takes; not a property of",
        f"the board. Model {BASELINE}, instruction counting on, {args.rounds} interleaved rounds of 1",
        f"and {args.samples} samples, medians; per inference = (t({args.samples}) - t(1)) / "
        f"{args.samples - 1}. Preloaded: the QEMU transport's default (samples in the emulated",
        "board's memory); UART: every sample through QEMU's emulated UART, as on a real board.",
        "",
        "| board | QEMU start + 1 inference s | ms/inference preloaded | ms/inference over the UART | "
        "UART / preloaded |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r.get("throughput")
        if t:
            lines.append(
                f"| {r['board']} | {t['start_s']:.2f} | {t['preload_ms']:.1f} | {t['uart_ms']:.1f} | "
                f"{t['uart_ms'] / t['preload_ms']:.1f}x |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
