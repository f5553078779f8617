"""Benchmark: site build time for 10, 100 and 1,000 results (goal: 1,000 in under 60 s).

    python benchmarks/site_build.py [--sizes 10 100 1000] [--commits 3] [--write benchmarks/results/site_build.md]

Each size gets a fresh git repository of fixture results (``tests/site/fixtures.py``) with
``--commits`` versions of every result, so history is part of the measured work.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fixtures():
    spec = importlib.util.spec_from_file_location("tinymlaas_site_fixtures", REPO / "tests/site/fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--commits", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None, help="write a Markdown table here")
    args = parser.parse_args(argv)

    from tinymlaas_ci.cli.main import build_parser
    from tinymlaas_ci.website import build_site

    fx = _fixtures()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "repo"
            fx.write_repo(root, n, commits=args.commits, invalid=False)
            shutil.copytree(REPO / "site", root / "site", ignore=shutil.ignore_patterns("build"))
            started = time.perf_counter()
            report = build_site(root, Path(tmp) / "out", cli_parser=build_parser())
            total = time.perf_counter() - started
        phases = ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items())
        rows.append((n, report.pages, total, total / n * 1000, phases))
        print(
            f"{n:>5} results  {report.pages:>5} pages  {total:6.1f} s  ({total / n * 1000:.0f} ms/result; {phases})",
            flush=True,
        )
    if args.write:
        lines = [
            "# Site build benchmark",
            "",
            (
                f"`python benchmarks/site_build.py --commits {args.commits}` on {platform.machine()}, "
                f"Python {platform.python_version()}, {platform.system()} ({sys.platform})."
            ),
            f"Each result has {args.commits} committed versions (history is read from git).",
            "",
            "| results | pages | total (s) | per result (ms) | phases (s) |",
            "|---:|---:|---:|---:|---|",
            *[f"| {n} | {p} | {t:.1f} | {per:.0f} | {ph} |" for n, p, t, per, ph in rows],
            "",
        ]
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
