"""``tinymlaas compare [RUN...]``: the committed results side by side, against their baselines.

Like ``dvc metrics diff``: one row per run with accuracy (and its change against the
uncompressed baseline), model size and how many times smaller, p50 latency and the speed
against the baseline, and the gates. The baseline is the one the website uses (the run of the
same model without compression, on the same device when there is one); a speed difference
within the measurement noise is shown as ``≈``, never as faster or slower.
"""

from __future__ import annotations

import fnmatch
import json
import sys

from tinymlaas_ci.cli.common import repo_root
from tinymlaas_ci.errors import UsageError

__all__ = ["compare_rows", "register"]

_COLUMNS = ("run", "device", "accuracy", "Δ acc", "size", "smaller", "p50", "speed", "gates")


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare committed results: accuracy, size, ratio, p50 and speed vs. the baseline, gates",
        description="Show the committed results of the selected runs side by side: accuracy and its change "
        "against the uncompressed baseline, model size and compression ratio, p50 latency and the speed ratio "
        "against the baseline (≈ when within the measurement noise), and the gate verdicts.",
    )
    p.add_argument(
        "runs", nargs="*", metavar="RUN", help="PROJECT, RUN or PROJECT/RUN globs (default: every committed result)"
    )
    p.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    p.set_defaults(func=cmd_compare)


def _selected(run, patterns: list[str]) -> bool:
    rid = f"{run.project}/{run.slug}"
    return not patterns or any(
        fnmatch.fnmatchcase(rid, p) or fnmatch.fnmatchcase(run.slug, p) or run.project == p for p in patterns
    )


def compare_rows(root, patterns: list[str]) -> tuple[list[dict], list[str]]:
    """One dict per selected run (plain numbers, None where unknown), and the unreadable files."""
    from tinymlaas_ci.website.analysis import build_site_data
    from tinymlaas_ci.website.loader import load_results

    loaded, skipped = load_results(root)
    data = build_site_data(loaded, {})
    rows = []
    for project in data.projects:
        recommended = project.recommended
        for run in project.runs:
            if not _selected(run, patterns):
                continue
            rows.append(
                {
                    "run": f"{run.project}/{run.slug}",
                    "device": run.device,
                    "mode": run.mode,
                    "status": run.status,
                    "baseline": f"{run.project}/{run.baseline.slug}" if run.baseline else None,
                    "is_baseline": run.is_baseline,
                    "accuracy": run.accuracy,
                    "accuracy_delta": run.accuracy_delta,
                    "model_size_bytes": run.size,
                    "size_ratio": None if run.is_baseline else run.size_ratio,
                    "latency_p50_ms": run.p50,
                    "speedup_vs_baseline": None if run.is_baseline else run.speedup,
                    "speedup_ci95": list(run.speedup_ci) if run.speedup_ci else None,
                    "speed_known": run.speed_known,
                    "gates_failed": run.gates_failed,
                    "gates": len(run.result.gates),
                    "recommended": run.slug in recommended,
                }
            )
    if patterns and not rows:
        known = ", ".join(f"{r.project}/{r.slug}" for r in data.runs[:20]) or "none"
        raise UsageError(f"no committed result matches {' '.join(patterns)}", hint=f"results: {known}")
    return rows, [s.format() for s in skipped]


def _cells(row: dict) -> list[str]:
    from tinymlaas_ci.website.formatting import ms, pct, pp, ratio, size

    speed = row["speedup_vs_baseline"]
    if row["is_baseline"]:
        delta, smaller, speed_text = "baseline", "–", "–"
    else:
        delta, smaller = pp(row["accuracy_delta"]), ratio(row["size_ratio"])
        if speed is None:
            speed_text = "–"
        elif not row["speed_known"]:
            speed_text = "≈ same"
        else:
            speed_text = f"{speed:.2f}× faster" if speed >= 1 else f"{1 / speed:.2f}× slower"
    if row["status"] == "failed":
        gates = "run failed"
    elif not row["gates"]:
        gates = "no gates"
    elif row["gates_failed"]:
        gates = "✗ " + ", ".join(row["gates_failed"])
    else:
        gates = f"✓ {row['gates']}/{row['gates']}"
    name = row["run"] + (" *" if row["recommended"] else "")
    return [
        name,
        row["device"],
        pct(row["accuracy"]),
        delta,
        size(row["model_size_bytes"]),
        smaller,
        ms(row["latency_p50_ms"]),
        speed_text,
        gates,
    ]


def format_text(rows: list[dict]) -> str:
    table = [list(_COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    numeric = {2, 3, 4, 5, 6, 7}
    lines = []
    for line in table:
        cells = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(line)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.append("* the run to deploy on its device; Δ acc, smaller and speed are against the uncompressed baseline")
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    from tinymlaas_ci.gitops.markdown import md

    out = [
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 or i == 8 else "---:" for i in range(9)) + "|",
    ]
    for row in rows:
        cells = _cells(row)
        name = f"`{row['run']}`" + (" \\*" if row["recommended"] else "")
        out.append("| " + " | ".join([name, md(cells[1]), *cells[2:8], md(cells[8])]) + " |")
    out.append("")
    out.append("\\* the run to deploy on its device; Δ acc, smaller and speed are against the uncompressed baseline.")
    return "\n".join(out)


def cmd_compare(args) -> int:
    rows, skipped = compare_rows(repo_root(args), args.runs)
    for line in skipped:
        print(f"skipped result {line}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"schema": 1, "runs": rows}, indent=2, sort_keys=True, ensure_ascii=False))
    elif not rows:
        print("no committed results (runs/*/results/*.json); run 'tinymlaas run' first")
    elif args.format == "markdown":
        print(format_markdown(rows))
    else:
        print(format_text(rows))
    return 0
