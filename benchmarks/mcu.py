"""Instructions per MAC, flash and RAM of int8 models on the emulated Cortex-M boards.

    python benchmarks/mcu.py [--boards mps2-an386,mps3-an547] [--model-dir DIR ...] [--samples 20]
                             [--out benchmarks/results/mcu.md]

For each model and board: build the firmware (the device budgets of the board preset), run
``--samples`` int8 inputs under QEMU with the instruction-count plugin, and report the exact
instructions per inference (median/min/max over the samples), instructions per MAC, the flash
taken by the model (code + weights) against its weights, the firmware total, the arena, static
RAM and the measured stack high-water. Instruction counts are exact and deterministic, so one
pass is enough; the latency column is instructions / the board's clock, an estimate (QEMU has
no timing model).

Without ``--model-dir`` the models are the hand-written int8 MLP test fixtures: a plain C MAC
loop (the portable baseline) and the same model with a simple SMLAD (DSP) or Helium (MVE) dot
product; all are checked bit for bit against their numpy reference. A ``--model-dir`` holds a
generated ``model.h``/``model.c``; every row shows the ratio of its instructions per MAC to the
plain-C baseline (784-256-128-10) on the same board.
"""

from __future__ import annotations

import argparse
import os
import platform
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
    parser.add_argument("--model-dir", action="append", default=[], type=Path)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mcu.md")
    args = parser.parse_args()
    boards = [b for b in args.boards.split(",") if b]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinymlaas-mcu-bench-") as tmp:
        tmp = Path(tmp)
        models = []
        for name, (sizes, simd) in FIXTURES.items():
            fixture = make_mlp(sizes, seed=0)
            models.append((name, fixture.write(tmp / f"model-{len(models)}", simd=simd), fixture.reference))
        models += [(f"{d.name} (generated)", d.resolve(), None) for d in args.model_dir]
        for name, folder, reference in models:
            for board in boards:
                row = measure(folder, board, args.samples, tmp / f"fw-{len(rows)}", reference)
                row["model"] = name
                rows.append(row)
                if name == BASELINE:
                    row["throughput"] = throughput(row["fw"], args.samples, args.rounds)
                print(f"{name:36s} {board:12s} {row['ipm']:.2f} instructions/MAC", flush=True)
    baseline = {r["board"]: r["ipm"] for r in rows if r["model"] == BASELINE}
    lines = [
        "# Int8 models on Cortex-M boards (QEMU)",
        "",
        f"`python benchmarks/mcu.py --samples {args.samples} --rounds {args.rounds}`"
        + "".join(f" --model-dir {d}" for d in args.model_dir)
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
        "vs plain C | latency estimate ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ipi = r["ipi"]
        goal = GOALS.get(r["cpu"])
        ratio = r["ipm"] / baseline[r["board"]] if r["board"] in baseline else None
        lines.append(
            f"| {r['model']} | {r['board']} | {r['cpu']} | {r['macs']} | {ipi['median']:.0f} "
            f"({ipi['min']}-{ipi['max']}) | {r['ipm']:.2f} | {'-' if goal is None else f'<= {goal}'} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | {r['latency_ms']:.3f} @ {r['clock_mhz']:g} MHz |"
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
