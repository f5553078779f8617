"""Host ``runtime: c`` against ONNX Runtime, batch 1, per sample, from one Python process.

    python benchmarks/cgen.py [--rounds 15] [--calls 300] [--md benchmarks/results/cgen.md]

Two models: the example digits CNN compiled as the compile stage does it (static int8, QDQ,
per-channel weights, 256 calibration samples) and an untrained ResNet-8 of MLPerf Tiny's shape
(3x32x32, quantized on 64 random samples). For each model three sessions answer the same
samples one at a time: ONNX Runtime fp32 (the baseline), ONNX Runtime running the int8 QDQ
model, and the generated C built with ``cc -O3 -march=native`` and called through ctypes
(float in, float out: quantizing the input and dequantizing the logits are part of the call).

The sessions are measured in interleaved rounds (the order rotates each round) so that load on
a shared machine hits all of them alike; each round times ``--calls`` consecutive calls and the
reported figures are medians over rounds, the speed-ups medians of the per-round ratios. Times are
the calling thread's CPU time (ONNX Runtime with one intra-op thread runs on the caller's thread),
so descheduling on a busy machine is not counted; wall-clock ratios are reported as well.
"""

from __future__ import annotations

import argparse
import json
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


def _resnet8():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.skip = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

        def forward(self, x):
            y = self.conv2(torch.relu(self.conv1(x)))
            return torch.relu(y + (self.skip(x) if self.skip is not None else x))

    class ResNet8(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 1, 1)
            self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.stages(torch.relu(self.stem(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    torch.manual_seed(0)
    return ResNet8().eval()


def _digits_data():
    from tests.digits_example import digits_arrays

    return digits_arrays()


def prepare(tmp: Path) -> list[dict]:
    """Both models as (fp32 ONNX, int8 QDQ ONNX, generated C folder) plus the samples to feed."""
    from tinymlaas_ci.ml import formats
    from tinymlaas_ci.ml.c_runtime import compile_c
    from tinymlaas_ci.ml.cgen import generate_c, quantize_qdq
    from tinymlaas_ci.spec.models import Compression

    data = _digits_data()
    # The compile stage's runtime c path: fp32 baseline, int8 QDQ with int8 activations.
    digits = compile_c(
        ROOT / "uploads" / "digits-cnn" / "model.pkl",
        tmp / "digits",
        compression=Compression(quantization="static-int8", per_channel=True, calibration_samples=256),
        data=data,
    ).compiled
    models = [
        {
            "name": "digits CNN",
            "fp32": digits.baseline,
            "int8": digits.deployed,
            "info": generate_c(digits.deployed, tmp / "digits" / "c"),
            "c": tmp / "digits" / "c",
            "x": data["x_test"],
            "y": data["y_test"],
        }
    ]
    rng = np.random.default_rng(0)
    (tmp / "resnet8").mkdir()
    fp32 = tmp / "resnet8" / "fp32.onnx"
    formats.export_onnx(_resnet8(), fp32, (3, 32, 32))
    quantize_qdq(fp32, tmp / "resnet8" / "int8.onnx", rng.uniform(-1, 1, (64, 3, 32, 32)).astype(np.float32))
    models.append(
        {
            "name": "ResNet-8 (MLPerf Tiny shape, untrained)",
            "fp32": fp32,
            "int8": tmp / "resnet8" / "int8.onnx",
            "info": generate_c(tmp / "resnet8" / "int8.onnx", tmp / "resnet8" / "c"),
            "c": tmp / "resnet8" / "c",
            "x": rng.uniform(-1, 1, (64, 3, 32, 32)).astype(np.float32),
            "y": None,
        }
    )
    return models


def measure(model: dict, rounds: int, calls: int) -> dict:
    from tinymlaas_ci.ml.cgen.host import load_c_session
    from tinymlaas_ci.ml.runtime import load_session

    sessions = {
        "ORT fp32": load_session(model["fp32"], threads=1),
        "ORT int8": load_session(model["int8"], threads=1),
        "C": load_c_session(model["c"]),
    }
    x = model["x"]
    samples = [x[i : i + 1] for i in range(len(x))]
    for s in sessions.values():  # warm-up: first-call allocations and page faults
        for sample in samples[:50]:
            s.run(sample)
    cpu: dict[str, list[float]] = {k: [] for k in sessions}
    wall: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = sessions[name].run
            started, started_cpu = time.perf_counter(), time.thread_time()
            for i in range(calls):
                run(samples[i % len(samples)])
            cpu[name].append((time.thread_time() - started_cpu) / calls * 1e6)
            wall[name].append((time.perf_counter() - started) / calls * 1e6)

    def ratios(per_round: dict[str, list[float]]) -> dict[str, float]:
        base = per_round["ORT fp32"]
        return {k: statistics.median(f / t for f, t in zip(base, v, strict=True)) for k, v in per_round.items()}

    out = {
        "us": {k: statistics.median(v) for k, v in cpu.items()},
        "wall_us": {k: statistics.median(v) for k, v in wall.items()},
        "speedup_vs_fp32": ratios(cpu),
        "wall_speedup_vs_fp32": ratios(wall),
        "kernel_path": sessions["C"].providers[0].split(":", 1)[1],
    }
    preds = {k: np.concatenate([s.run(sample) for sample in samples]).argmax(axis=1) for k, s in sessions.items()}
    out["agreement_c_vs_ort_int8"] = float((preds["C"] == preds["ORT int8"]).mean())
    if model["y"] is not None:
        out["accuracy"] = {k: float((p == model["y"]).mean()) for k, p in preds.items()}
    info = model["info"]
    out["macs"], out["weights_bytes"], out["arena_bytes"] = info.macs, info.weights_bytes, info.arena_bytes
    return out


def cortex_m_flash(models: list[dict]) -> list[dict]:
    """Bytes of code + constants (``.text``) of each model.c cross-compiled for Cortex-M4 and M55."""
    import shutil
    import subprocess

    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        return []
    rows = []
    for m in models:
        targets = (("cortex-m4", ["-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]), ("cortex-m55", ["-mfloat-abi=hard"]))
        for cpu, flags in targets:
            obj = m["c"] / f"{cpu}.o"
            cmd = [gcc, f"-mcpu={cpu}", "-mthumb", *flags, "-O2", "-std=c99", "-ffunction-sections", "-fdata-sections"]
            subprocess.run([*cmd, "-c", str(m["c"] / "model.c"), "-o", str(obj)], check=True)
            out = subprocess.run(["arm-none-eabi-size", str(obj)], check=True, capture_output=True, text=True)
            text, _data, bss = (int(v) for v in out.stdout.splitlines()[1].split()[:3])
            info = m["info"]
            rows.append(
                {
                    "model": m["name"],
                    "cpu": cpu,
                    "text": text,
                    "bss": bss,
                    "weights_bytes": info.weights_bytes,
                    "quant_bytes": info.quant_bytes,
                    "goal": int(info.weights_bytes * 1.05 + 6 * 1024),
                }
            )
    return rows


def machine() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import onnxruntime

    from tinymlaas_ci.ml.cgen.host import compiler_version

    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8"]
    return {
        "cpu": cpu,
        "flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "compiler": compiler_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def markdown(results: list[tuple[str, dict]], mach: dict, args, flash: list[dict]) -> str:
    lines = [
        "# C code generator: host `runtime: c` against ONNX Runtime",
        "",
        "Produced by `python benchmarks/cgen.py` (full numbers: `--out`, JSON).",
        "",
        f"{mach['cpu']}, {mach['cores']} cores, flags {', '.join(mach['flags']) or 'none of interest'}; "
        f"{mach['compiler']}, `-O3 -march=native`; ONNX Runtime {mach['onnxruntime']}, one thread. "
        f"Batch 1, each session called once per sample from the same Python process; {args.rounds} interleaved "
        f"rounds of {args.calls} calls, medians. Load average at the end of the run: "
        f"{', '.join(f'{v:.2f}' for v in mach['loadavg'])}.",
        "",
        "| model | MACs | C kernels | ORT fp32 us | ORT int8 us | C us | C vs ORT fp32 | ORT int8 vs fp32 "
        "| C vs ORT fp32, wall clock | C = ORT int8 predictions | accuracy (fp32 / int8 / C) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results:
        acc = r.get("accuracy")
        acc_text = f"{acc['ORT fp32']:.4f} / {acc['ORT int8']:.4f} / {acc['C']:.4f}" if acc else "untrained"
        lines.append(
            f"| {name} | {r['macs']:,} | {r['kernel_path']} | {r['us']['ORT fp32']:.2f} | {r['us']['ORT int8']:.2f} "
            f"| {r['us']['C']:.2f} | {r['speedup_vs_fp32']['C']:.2f}x | {r['speedup_vs_fp32']['ORT int8']:.2f}x "
            f"| {r['wall_speedup_vs_fp32']['C']:.2f}x | {r['agreement_c_vs_ort_int8']:.4f} | {acc_text} |"
        )
    lines += [
        "",
        "Reading the table:",
        "",
        "- Times are CPU time of the calling thread per call (`time.thread_time`; ONNX Runtime runs on the",
        "  caller's thread with one intra-op thread), so that time the process spends descheduled on a",
        "  busy machine is not counted; the wall-clock ratio of the same rounds is shown too.",
        "- Times include each runtime's Python entry: `session.run` for ONNX Runtime",
        "  (a few microseconds per call on its own), one ctypes call for the C model, which also",
        "  quantizes the float input and dequantizes the logits in C.",
        "- Goals: at least 2x faster than ONNX Runtime fp32 on the digits CNN, not slower on ResNet-8.",
        "- The C model's integer arithmetic is TFLite's (double-rounding fixed-point requantization);",
        "  ONNX Runtime's int8 kernels round differently in places, so the two may disagree by one",
        "  quantization step on some logits; the agreement column counts identical top-1 predictions.",
        "- The machine is shared; ratios measured in the same interleaved run are what to compare, the",
        "  absolute microseconds move with the load. Under heavy load (see the load average above) the",
        "  wall-clock ratio swings from run to run, mostly with how often each runtime is descheduled;",
        "  the CPU-time ratio is the stable one.",
        "",
    ]
    if flash:
        lines += [
            "## Flash and RAM on Cortex-M (the same model.c, `arm-none-eabi-gcc -O2`)",
            "",
            "| model | core | code + constants (bytes) | weights + biases | requantization constants "
            "| goal: weights x 1.05 + 6 KiB | arena (RAM) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in flash:
            lines.append(
                f"| {r['model']} | {r['cpu']} | {r['text']:,} | {r['weights_bytes']:,} | {r['quant_bytes']:,} "
                f"| {r['goal']:,} | {r['bss']:,} |"
            )
        lines += [
            "",
            "Code + constants is the object's `.text`: kernels, the model function, and every weight, bias",
            "and requantization constant (all `const`, so in flash). The arena is the only RAM besides the",
            "stack; the caller's input and output buffers are not counted.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--md", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--out", type=Path, default=None, help="write the full numbers as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tinymlaas-cgen-bench-") as tmp:
        models = prepare(Path(tmp))
        results = [(m["name"], measure(m, args.rounds, args.calls)) for m in models]
        flash = cortex_m_flash(models)
    mach = machine()
    text = markdown(results, mach, args, flash)
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.out:
        payload = {"machine": mach, "results": dict(results), "cortex_m_flash": flash}
        args.out.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
