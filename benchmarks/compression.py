"""Compression benchmark on the digits example: size, accuracy and latency per compression mode.

    python benchmarks/compression.py [--out benchmarks/results/compression.json] [--threads 1]

Every mode is compiled from ``uploads/digits-cnn/model.pkl`` and measured on the test split of
``uploads/digits/dataset.zip`` in this one process, next to two references measured in the
same run: the torch eager fp32 model and the ONNX Runtime fp32 model. Latency is per call at
batch 1 (warm-up, then at least ``--min-iterations`` and ``--min-seconds``). Prints a Markdown
table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinymlaas_ci.fs import atomic_write_json
from tinymlaas_ci.ml import compress, measure
from tinymlaas_ci.ml.runtime import load_session
from tinymlaas_ci.spec.models import Compression

MODEL = ROOT / "uploads" / "digits-cnn" / "model.pkl"
DATASET = ROOT / "uploads" / "digits" / "dataset.zip"
MODES = {
    "none": {"quantization": "none"},
    "dynamic-int8": {"quantization": "dynamic-int8"},
    "static-int8": {"quantization": "static-int8", "calibration_samples": 256},
    "fp16": {"quantization": "fp16"},
    "pruned-50+ft": {"quantization": "none", "pruning": {"sparsity": 0.5, "fine_tune_epochs": 2}},
}


def read_imagefolder_zip(path: Path) -> dict[str, np.ndarray]:
    """``{split}/{label}/{file}.png`` -> float32 (N,1,H,W) / 255 and int64 labels (sorted names)."""
    from PIL import Image

    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        labels = sorted({n.split("/")[1] for n in names})
        out: dict[str, list] = {}
        for name in names:
            split, label, _ = name.split("/")
            img = np.asarray(Image.open(io.BytesIO(zf.read(name))), dtype=np.float32) / 255.0
            out.setdefault(f"x_{split}", []).append(img[None])
            out.setdefault(f"y_{split}", []).append(labels.index(label))
    return {
        k: np.stack(v).astype(np.float32) if k.startswith("x_") else np.asarray(v, np.int64) for k, v in out.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compression.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--min-iterations", type=int, default=500)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)

    import torch

    from tinymlaas_ci.ml import formats

    torch.set_num_threads(args.threads)
    data = read_imagefolder_zip(DATASET)
    x, y = data["x_test"], data["y_test"]
    timing = {"warmup": args.warmup, "min_iterations": args.min_iterations, "min_seconds": args.min_seconds}
    rows = []

    eager = formats.load_torch_model(MODEL, "pytorch")

    def eager_run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return eager(torch.from_numpy(batch)).numpy()

    ev = measure.evaluate(eager_run, x, y, num_classes=10)
    lat = measure.measure_latency(eager_run, x[:1], **timing)
    rows.append(
        {
            "mode": "torch eager fp32",
            "runtime": "pytorch",
            "bytes": MODEL.stat().st_size,
            "gzip_bytes": measure.gzip_size(MODEL),
            "accuracy": ev["accuracy"],
            "latency_ms": lat,
        }
    )

    with tempfile.TemporaryDirectory() as tmp:
        for mode, compression in MODES.items():
            out = compress.compile_model(MODEL, Path(tmp) / mode, compression=Compression(**compression), data=data)
            session = load_session(out.deployed, threads=args.threads)
            ev = measure.evaluate(session.run, x, y, num_classes=10)
            lat = measure.measure_latency(session.run, x[:1], **timing)
            rows.append(
                {
                    "mode": f"ORT {mode}" + (" (fp32)" if mode == "none" else ""),
                    "runtime": "onnxruntime",
                    "bytes": out.record["compressed_bytes"],
                    "gzip_bytes": out.record["compressed_gzip_bytes"],
                    "accuracy": ev["accuracy"],
                    "latency_ms": lat,
                    "compression": out.record,
                }
            )

    torch_ref = rows[0]
    ort_ref = next(r for r in rows if r["mode"] == "ORT none (fp32)")
    for r in rows:
        r["size_ratio_vs_ort_fp32"] = ort_ref["bytes"] / r["bytes"]
        r["gzip_ratio_vs_ort_fp32"] = ort_ref["gzip_bytes"] / r["gzip_bytes"]
        r["speedup_vs_torch_eager"] = torch_ref["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["speedup_vs_ort_fp32"] = ort_ref["latency_ms"]["p50"] / r["latency_ms"]["p50"]

    cpu = measure.cpu_info()
    header = (
        f"Digits CNN (38,282 parameters), {len(y)} test samples, batch 1, {args.threads} thread(s), "
        f"{cpu['cpu_model']}; latency p50 over >= {args.min_iterations} calls and >= {args.min_seconds} s."
    )
    lines = [
        header,
        "",
        "| mode | bytes | gzip bytes | size vs ORT fp32 | accuracy | p50 ms | p99 ms "
        "| speed-up vs torch eager | speed-up vs ORT fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['mode']} | {r['bytes']:,} | {r['gzip_bytes']:,} | {r['size_ratio_vs_ort_fp32']:.2f}x | "
            f"{r['accuracy']:.4f} | {lat['p50']:.4f} | {lat['p99']:.4f} | {r['speedup_vs_torch_eager']:.2f}x | "
            f"{r['speedup_vs_ort_fp32']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    report = {
        "schema": 1,
        "device": measure.device_record(),
        "tools": measure.tool_versions("torch", "onnx", "onnxruntime"),
        "settings": {"threads": args.threads, "batch_size": 1, **timing},
        "rows": rows,
        "table": table,
    }
    atomic_write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
