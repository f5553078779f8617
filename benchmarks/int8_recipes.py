"""int8 that pays off, measured side by side: static-int8 and dynamic-int8 against ONNX Runtime fp32.

    python benchmarks/int8_recipes.py [--out benchmarks/results/int8_recipes.json] [--quick]

Three models, each trained here on the scikit-learn digits so that accuracy means something:

* the digits CNN of the example (``uploads/digits-cnn/model.pkl``, 1x8x8);
* ResNet-8 of MLPerf Tiny's image-classification shape (16/32/64 channels), on the digits
  upscaled to 3x32x32;
* MobileNetV2 (width 1.0) at 3x96x96, on the digits upscaled to 96x96.

Each is compiled with :func:`tinymlaas_ci.ml.compress.compile_model`, exactly as the pipeline
does (``static-int8`` times its recipes on this machine and keeps the fastest whose accuracy
holds), plus, for comparison, the recipe the pipeline used before (int8 activations, one scale
per tensor) and the other recipes of ORT. Speed is the infer stage's measurement: the variant
and the fp32 baseline in this one process, in interleaved rounds
(:func:`tinymlaas_ci.ml.measure.compare_latency`), batch 1, one thread; accuracy over the whole
test split. The last part measures one variant twice while a background load started by the
benchmark itself (one busy process per core, ended after ``--load-seconds``) runs, and compares
the ratios with the one measured without it.

Prints one line per variant and writes the numbers as JSON (``--out``) and the tables as
Markdown next to it (same name, ``.md``); ``--render FILE.json`` rewrites the Markdown only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinymlaas_ci.fs import atomic_write_json
from tinymlaas_ci.hostinfo import cpu_info
from tinymlaas_ci.ml import compress, measure
from tinymlaas_ci.ml.quantize import Recipe, integer_ops, quantize_onnx
from tinymlaas_ci.ml.runtime import load_session
from tinymlaas_ci.spec.models import Compression

DIGITS_MODEL = ROOT / "uploads" / "digits-cnn" / "model.pkl"

# The recipe the pipeline used before: int8 activations, per-tensor int8 weights.
OLD = Recipe("qdq-s8s8-per-tensor (old default)", "int8", "int8", False, why="the previous static-int8")
EXTRA = [
    Recipe("qdq-s8s8-per-channel", "int8", "int8", True),
    Recipe("qdq-u8u8-per-channel", "uint8", "uint8", True),
    Recipe("qdq-u8s8-per-channel, Gemm/MatMul only", "uint8", "int8", True, op_types=("Gemm", "MatMul")),
    Recipe("qdq-u8s8-per-channel, Conv only", "uint8", "int8", True, op_types=("Conv",)),
]


def _digits_module():
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "uploads" / "digits-cnn" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits_data(size: int | None = None) -> dict[str, np.ndarray]:
    """The example's digits splits; with ``size``, upscaled (bilinear) to 3 x size x size."""
    import torch

    train = _digits_module()
    data: dict[str, np.ndarray] = {}
    for split, (images, labels, *_rest) in train.make_splits().items():
        x = train.to_inputs(images)
        if size is not None:
            t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear")
            x = t.repeat(1, 3, 1, 1).numpy()
        data[f"x_{split}"] = np.ascontiguousarray(x, dtype=np.float32)
        data[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
    return data


def resnet8():
    """ResNet-8 as in MLPerf Tiny's image classification (three residual stacks: 16, 32, 64)."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)
            self.short = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride)

        def forward(self, x):
            y = self.b2(self.c2(self.b1(self.c1(x)).relu()))
            return (y + (x if self.short is None else self.short(x))).relu()

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def mobilenet_v2(classes: int = 10):
    """MobileNetV2, width 1.0 (the torchvision layout, written out so torchvision is not needed)."""
    from torch import nn

    def cbr(cin, cout, k=3, s=1, groups=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
        )

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            layers = [cbr(cin, hidden, 1)] if expand != 1 else []
            layers += [cbr(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False)]
            self.body = nn.Sequential(*layers, nn.BatchNorm2d(cout))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, cin = [cbr(3, 32, 3, 2)], 32
    for expand, cout, n, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)] + [
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]:
        for i in range(n):
            layers.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(*layers, cbr(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes))


def train(model, data, epochs: int, lr: float = 2e-3, batch: int = 64):
    """Adam on the train split with a one-cycle schedule; returns the model in eval mode."""
    import torch

    torch.manual_seed(0)
    # channels-last: PyTorch's CPU depthwise convolutions train ~3x faster in it.
    cl = torch.channels_last
    model = model.to(memory_format=cl)
    x, y = torch.from_numpy(data["x_train"]).to(memory_format=cl), torch.from_numpy(data["y_train"])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    # Re-estimate BatchNorm statistics with the final weights (a cumulative average over the train
    # split): after a few epochs the running averages still lag the weights, and an eval-mode
    # MobileNetV2 then predicts one class.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    return model.to(memory_format=torch.contiguous_format).eval()


def export(model, path: Path, shape) -> Path:
    import onnx
    import torch

    torch.onnx.export(
        model,
        torch.zeros((2, *shape)),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    onnx.save(onnx.load(str(path)), str(path))  # one file, no external data
    return path


def _session(path: Path):
    """An ONNX file through ONNX Runtime, a generated C folder (``runtime: c``) through its host build."""
    if path.is_dir():
        from tinymlaas_ci.ml.cgen.host import load_c_session

        return load_c_session(path)
    return load_session(path, threads=1)


def accuracy(path: Path, data) -> float:
    session = _session(path)
    x, y = measure.eval_split(data, "test")
    return measure.evaluate(session.run, x, y, num_classes=10)["accuracy"]


def side_by_side(variant: Path, baseline: Path, x, seconds: float) -> dict:
    run, base = _session(variant), load_session(baseline, threads=1)
    cmp = measure.compare_latency(
        run.run, base.run, x[:1], rounds=7, warmup=30, min_iterations=200, min_seconds=seconds
    )
    return {
        "speedup": cmp["speedup_vs_baseline"],
        "ci95": cmp["speedup_ci95"],
        "spread": cmp["round_spread"],
        "unstable": cmp["unstable"],
        "unstable_reason": cmp["unstable_reason"],
        "cpu_share": cmp["cpu_share"],
        "runnable_others": cmp["runnable_others"],
        "remeasured": cmp["remeasured"],
        "p50_ms": cmp["latency"]["p50"],
        "baseline_p50_ms": cmp["baseline_latency"]["p50"],
        "load": [cmp["load_before"], cmp["load_after"]],
    }


def bench_model(name: str, source: Path, data, work: Path, seconds: float, extra: bool) -> dict:
    """Compile ``source`` in every mode as the pipeline does, then measure each against fp32."""
    out: dict = {"model": name, "variants": {}}
    compiled = {}
    for mode in ("none", "static-int8", "dynamic-int8", "fp16"):
        t0 = time.perf_counter()
        c = compress.compile_model(source, work / name / mode, compression=Compression(quantization=mode), data=data)
        compiled[mode] = c
        out["variants"][mode] = {"record": c.record, "compile_s": time.perf_counter() - t0}
    baseline = compiled["none"].baseline
    out["fp32_accuracy"] = accuracy(baseline, data)
    paths = {mode: c.deployed for mode, c in compiled.items() if mode != "none"}
    calib = data["x_train"][:256]
    for recipe in [OLD, *(EXTRA if extra else [])]:
        path = work / name / f"{recipe.name.split()[0]}-{len(paths)}.onnx"
        quantize_onnx(baseline, path, "static-int8", calibration=calib, recipes=[recipe])
        paths[recipe.name] = path
        out["variants"][recipe.name] = {"record": {"recipe": recipe.name, "integer_ops": integer_ops(path)}}
    if c_compiler():
        # The same static int8 model as generated C (runtime: c), built for this CPU.
        from tinymlaas_ci.ml.c_runtime import compile_c

        c = compile_c(source, work / name / "runtime-c", compression=Compression(quantization="static-int8"), data=data)
        paths[C_VARIANT] = c.c_dir
        dense = [op for op in c.info.ops if op["onnx_op"] in ("Conv", "Gemm", "MatMul")]
        out["variants"][C_VARIANT] = {
            # Every operator of the generated C is an integer kernel (it has no float fallback).
            "record": {
                "recipe": "qdq-s8s8-per-channel, generated C",
                "integer_ops": {"integer": len(dense), "total": len(dense)},
            },
            "model_bytes": c.info.weights_bytes + c.info.quant_bytes,
        }
        # What the pipeline deploys for runtime: auto on this machine: ORT's recipes and the C,
        # timed side by side during the compile, the faster kept.
        from tinymlaas_ci.ml.c_runtime import CCandidate

        cand = CCandidate(work / name / "runtime-auto" / "c", ["-O3", "-march=native"])
        t0 = time.perf_counter()
        auto = compress.compile_model(
            source,
            work / name / "runtime-auto",
            compression=Compression(quantization="static-int8"),
            data=data,
            runtimes=[cand.candidate()],
        )
        kept_c = auto.record["runtime"] == "c"
        paths[AUTO_VARIANT] = cand.c_dir if kept_c else auto.deployed
        out["variants"][AUTO_VARIANT] = {"record": auto.record, "compile_s": time.perf_counter() - t0}
        if kept_c:
            out["variants"][AUTO_VARIANT]["model_bytes"] = cand.info.weights_bytes + cand.info.quant_bytes
    for key, path in paths.items():
        v = out["variants"][key]
        v["accuracy"] = accuracy(path, data)
        v["bytes"] = v.pop("model_bytes", None) or path.stat().st_size
        v.update(side_by_side(path, baseline, data["x_test"], seconds))
        print(
            f"{name:14s} {key:42s} {v['speedup']:5.2f}x [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] "
            f"acc {v['accuracy']:.4f} (fp32 {out['fp32_accuracy']:.4f}) int {v['record'].get('integer_ops')}",
            flush=True,
        )
    return out


def loaded_machine(variant: Path, baseline: Path, x, seconds: float, load_seconds: float) -> dict:
    """The same variant measured without and then twice with a bounded background load."""
    quiet = side_by_side(variant, baseline, x, seconds)
    busy = (
        "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", busy, str(load_seconds)]) for _ in range(os.cpu_count() or 2)]
    try:
        time.sleep(1.0)  # let the load start
        loaded = [side_by_side(variant, baseline, x, seconds) for _ in range(2)]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for m in loaded:
        m["vs_quiet"] = m["speedup"] / quiet["speedup"]
        m["goal_met"] = abs(m["vs_quiet"] - 1) <= 0.10 or m["unstable"]
    return {"quiet": quiet, "loaded": loaded}


C_VARIANT = "static-int8, runtime: c"
AUTO_VARIANT = "static-int8, runtime: auto"


def c_compiler() -> str | None:
    from tinymlaas_ci.errors import TinymlError
    from tinymlaas_ci.ml.cgen.host import compiler

    try:
        return compiler()
    except TinymlError:
        return None


GOALS = {
    ("ResNet-8", "static-int8"): (1.6, ">= 1.6x faster, drop <= 1 point"),
    ("MobileNetV2-96", "static-int8"): (1.6, ">= 1.6x faster, drop <= 1 point"),
    ("digits CNN", "static-int8"): (1 / 1.05, "no slower than 1.05x (>= 0.952x)"),
    ("digits CNN", "dynamic-int8"): (1 / 1.1, "no slower than 1.1x (>= 0.909x)"),
    ("ResNet-8", "dynamic-int8"): (1 / 1.1, "no slower than 1.1x (>= 0.909x)"),
    ("MobileNetV2-96", "dynamic-int8"): (1 / 1.1, "no slower than 1.1x (>= 0.909x)"),
}


def _ops(v: dict) -> str:
    ops = (v.get("record") or {}).get("integer_ops")
    return f"{ops['integer']} of {ops['total']}" if ops else "—"


def markdown(report: dict) -> str:
    """The benchmark's tables: goals against measurements, every variant, the loaded machine."""
    lines = [
        "# int8 recipes, measured side by side",
        "",
        "Produced by `python benchmarks/int8_recipes.py --out benchmarks/results/int8_recipes.json`.",
        "",
        f"CPU: {report['cpu_model']} ({len(report['isa_flags'])} relevant flags: {' '.join(report['isa_flags'])}); "
        f"2 cores shared with other work, load average {report['load_at_start']:.1f} at the start. "
        f"ONNX Runtime {report['tools'].get('onnxruntime')}, torch {report['tools'].get('torch')}. Batch 1, one "
        "thread; each variant and the fp32 baseline timed in the same process in 7 interleaved rounds; "
        "the ratio is baseline p50 / variant p50 with a 95% bootstrap interval over rounds. "
        f"`{C_VARIANT}` is the same kind of static int8 model (int8 activations, per-channel weights) "
        "as generated C built with `cc -O3 -march=native` and called through ctypes, as the infer stage "
        "runs it; its bytes are the weights, biases and requantization constants of the C. "
        f"`{AUTO_VARIANT}` is what the pipeline deploys with `runtime: auto`: ONNX Runtime's recipes and "
        "the generated C timed side by side with fp32 during the compile, the faster whose accuracy holds "
        "kept (the C only when more than 5% faster beyond the timing noise); it is then measured again here.",
        "",
        "## Goals",
        "",
        "| model | mode | goal | measured speed vs fp32 (95% CI) | accuracy drop | integer ops | met |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for m in report["models"]:
        for mode in ("static-int8", C_VARIANT, AUTO_VARIANT, "dynamic-int8"):
            goal = GOALS.get((m["model"], mode.split(",")[0]))
            v = m["variants"].get(mode)
            if goal is None or v is None:
                continue
            drop = m["fp32_accuracy"] - v["accuracy"]
            met = v["speedup"] >= goal[0] and (not mode.startswith("static-int8") or goal[0] < 1 or drop <= 0.01)
            lines.append(
                f"| {m['model']} | {mode} | {goal[1]} | {v['speedup']:.2f}x ({v['ci95'][0]:.2f}-{v['ci95'][1]:.2f})"
                f"{' unstable' if v['unstable'] else ''} | {drop * 100:+.1f} pt | {_ops(v)} "
                f"| {'yes' if met else '**no**'} |"
            )
    lm = report.get("loaded_machine")
    if lm:
        quiet = lm["quiet"]
        for i, m in enumerate(lm["loaded"], 1):
            lines.append(
                f"| ResNet-8 | static-int8, loaded machine #{i} | within 10% of the ratio without the load "
                f"({quiet['speedup']:.2f}x), or unstable | "
                f"{m['speedup']:.2f}x ({m['ci95'][0]:.2f}-{m['ci95'][1]:.2f}), "
                f"{m['vs_quiet']:.3f} of it{', unstable' if m['unstable'] else ''} | | | "
                f"{'yes' if m['goal_met'] else '**no**'} |"
            )
    lines += ["", "## Every variant", ""]
    for m in report["models"]:
        lines += [
            f"### {m['model']} (fp32 accuracy {m['fp32_accuracy']:.4f}"
            + (f", trained {m['train_s']:.0f} s" if "train_s" in m else "")
            + ")",
            "",
            "| variant | recipe | speed vs fp32 (95% CI) | round spread | p50 ms | fp32 p50 ms | accuracy | bytes "
            "| integer ops |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, v in m["variants"].items():
            if "speedup" not in v:
                continue
            rec = v.get("record") or {}
            recipe = rec.get("recipe") or "—"
            if key == AUTO_VARIANT:
                recipe = f"{recipe} (runtime {rec.get('runtime')})"
            lines.append(
                f"| {key} | {recipe} | {v['speedup']:.2f}x ({v['ci95'][0]:.2f}-{v['ci95'][1]:.2f})"
                f"{' unstable' if v['unstable'] else ''} | {v['spread']:.1%} | {v['p50_ms']:.4f} | "
                f"{v['baseline_p50_ms']:.4f} | {v['accuracy']:.4f} | {v['bytes']:,} | {_ops(v)} |"
            )
        for mode in ("static-int8", AUTO_VARIANT):
            cands = (m["variants"].get(mode, {}).get("record") or {}).get("recipe_candidates") or []
            if not cands:
                continue
            lines += [
                "",
                f"{mode} chose among: "
                + "; ".join(
                    f"{c['recipe']} {c.get('speedup_vs_fp32', 0):.2f}x, drop {c.get('accuracy_drop', 0) * 100:+.1f} pt"
                    + (" (kept)" if c.get("kept") else "")
                    for c in cands
                )
                + " (timed briefly during the compile).",
            ]
        lines.append("")
    if lm:
        lines += [
            "## Loaded machine",
            "",
            "ResNet-8 static-int8 against its fp32 baseline, first without, then twice with one busy "
            "process per core started by the benchmark:",
            "",
            "| measurement | speed vs fp32 (95% CI) | round spread | load before -> after | CPU share "
            "| other runnable | unstable |",
            "|---|---:|---:|---|---:|---:|---|",
        ]
        for name, m in [("without the load", lm["quiet"])] + [
            (f"loaded #{i}", x) for i, x in enumerate(lm["loaded"], 1)
        ]:
            lines.append(
                f"| {name} | {m['speedup']:.2f}x ({m['ci95'][0]:.2f}-{m['ci95'][1]:.2f}) | {m['spread']:.1%} | "
                f"{m['load'][0]:.1f} -> {m['load'][1]:.1f} | {_pct(m.get('cpu_share'))} | "
                f"{_num(m.get('runnable_others'))} | {m['unstable']}"
                + (f" ({m['unstable_reason']})" if m.get("unstable_reason") else "")
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per model and variant")
    ap.add_argument("--load-seconds", type=float, default=40.0, help="how long the background load runs at most")
    ap.add_argument("--quick", action="store_true", help="fewer training epochs (for a smoke test)")
    ap.add_argument("--render", type=Path, default=None, help="only rewrite the Markdown of this JSON file")
    args = ap.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return 0
    logging.disable(logging.WARNING)  # the example pickle's "not sandboxed" warning, once per compile
    import torch

    torch.set_num_threads(1)  # two threads on a shared 2-core machine spend their time waiting on each other
    info = cpu_info()
    report: dict = {
        "cpu_model": info["cpu_model"],
        "isa_flags": info["isa_flags"],
        "load_at_start": measure.machine_load(),
        "tools": measure.tool_versions("torch", "onnx", "onnxruntime", "numpy"),
        "models": [],
    }
    print(f"CPU: {info['cpu_model']}; flags: {' '.join(info['isa_flags'])}; load {report['load_at_start']}")
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        work = Path(tmp)
        digits = digits_data()
        report["models"].append(bench_model("digits CNN", DIGITS_MODEL, digits, work, args.seconds, extra=True))

        d32 = digits_data(32)
        t0 = time.perf_counter()
        r8 = train(resnet8(), d32, epochs=2 if args.quick else 8)
        trained = time.perf_counter() - t0
        src = export(r8, work / "resnet8.onnx", (3, 32, 32))
        res = bench_model("ResNet-8", src, d32, work, args.seconds, extra=True)
        res["train_s"] = trained
        report["models"].append(res)

        d96 = digits_data(96)
        t0 = time.perf_counter()
        mb = train(mobilenet_v2(), d96, epochs=1 if args.quick else 3)
        trained = time.perf_counter() - t0
        src = export(mb, work / "mobilenetv2.onnx", (3, 96, 96))
        res = bench_model("MobileNetV2-96", src, d96, work, args.seconds, extra=False)
        res["train_s"] = trained
        report["models"].append(res)

        r8dir = work / "ResNet-8"
        report["loaded_machine"] = loaded_machine(
            r8dir / "static-int8" / "model.onnx",
            r8dir / "none" / "baseline.onnx",
            d32["x_test"],
            1.0,
            args.load_seconds,
        )
        for m in report["loaded_machine"]["loaded"]:
            print(f"loaded: {m['speedup']:.2f}x ({m['vs_quiet']:.3f} of quiet), unstable {m['unstable']}")
    print(json.dumps({k: v for k, v in report.items() if k != "models"}, indent=1, default=str))
    if args.out:
        atomic_write_json(args.out, report)
        args.out.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
