"""An example of a stage of your own: write a model card for the compiled model.

It follows the stage contract and needs nothing but Python's standard library, so it runs
under the local executor and in any image with Python:

    python pipelines/stages/model_card.py RUN_DIR STAGE_NAME

reads RUN_DIR/STAGE_NAME/stage.json, writes only under RUN_DIR/STAGE_NAME/, and ends with
outputs.json (success) or error.json and a non-zero exit (failure).
"""

import hashlib
import json
import os
import sys
from pathlib import Path


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)  # readers never see half a file


def main(run_dir: Path, name: str) -> None:
    folder = run_dir / name
    config = json.loads((folder / "stage.json").read_text())
    compiled = next((o for o in config["inputs"].values() if o.get("builtin") == "compile"), None)
    if compiled is None:
        raise SystemExit("model-card needs a compile stage in 'needs'")
    spec = config["spec"]
    record = compiled["records"].get("compression", {})
    model = compiled["artifacts"]["model"]
    lines = [
        f"# Model card: {config['run']['project']}/{config['run']['name']}",
        "",
        spec.get("description") or "",
        "",
        "| | |",
        "|---|---|",
        f"| model source | `{spec['model'].get('upload') or spec['model'].get('huggingface')}` |",
        f"| quantization | {record.get('quantization', 'none')} |",
        f"| target sparsity | {record.get('target_sparsity') or 0} |",
        f"| achieved sparsity | {record.get('achieved_sparsity') or 0} |",
        f"| deployed file | `{model['path']}` ({model['bytes']:,} bytes) |",
        f"| sha256 | `{model['sha256']}` |",
    ]
    ops = record.get("ops_quantized") or {}
    if ops:
        lines += ["", "Quantized operators: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))]
    card = folder / "MODEL_CARD.md"
    card.write_text("\n".join(lines) + "\n")
    digest = hashlib.sha256(card.read_bytes()).hexdigest()
    write_json(
        folder / "outputs.json",
        {
            "schema": 1,
            "stage": name,
            "artifacts": {"card": {"path": f"{name}/MODEL_CARD.md", "sha256": digest, "bytes": card.stat().st_size}},
            "metrics": {},
            "records": {},
        },
    )
    print(f"wrote {card.name} for {model['path']}")


if __name__ == "__main__":
    run_dir, stage_name = Path(sys.argv[1]), sys.argv[2]
    try:
        main(run_dir, stage_name)
    except BaseException as exc:  # the contract: every failure leaves error.json
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        write_json(run_dir / stage_name / "error.json", {"schema": 1, "stage": stage_name, "message": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
