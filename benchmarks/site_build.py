"""Benchmark: site build time, peak memory and run page size, at scale.

    python benchmarks/site_build.py [--sizes 1000 5000] [--projects 50] [--commits 3]
        [--page-projects 2 100] [--page-results 200] [--base REV] [--write benchmarks/results/site_build.md]

Each size gets a fresh git repository of fixture results (``tests/site/fixtures.py``) spread
over ``--projects`` projects, with ``--commits`` versions of every result, so history is part
of the measured work. Every build runs in its own process, so its peak memory (max RSS) is
measured alone.

The run page size is the size of the built HTML of the run pages (median) with the same
number of results spread over 2 and over 100 projects: a page whose navigation lists every
project grows with their number. With ``--base REV``, that comparison is also made with the
code of commit ``REV`` (checked out with ``git worktree add`` into a temporary folder), in the
same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_BUILD = """
import json, sys, time
from pathlib import Path
from tinymlaas_ci.cli.main import build_parser
from tinymlaas_ci.website import build_site
started = time.perf_counter()
report = build_site(Path(sys.argv[1]), Path(sys.argv[2]), cli_parser=build_parser())
print(json.dumps({"seconds": time.perf_counter() - started, "pages": report.pages, "timings": report.timings}))
"""


def _fixtures():
    spec = importlib.util.spec_from_file_location("tinymlaas_site_fixtures", REPO / "tests/site/fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_repo(fx, root: Path, n: int, projects: int, commits: int) -> None:
    """``n`` fixture results spread over ``projects`` projects, ``commits`` versions each."""
    root.mkdir(parents=True)
    fx._git(root, "init", "-q", "-b", "main")
    for version in range(commits):
        for k, res in enumerate(fx.generate_results(n, version=version)):
            project = f"p{k % projects:03d}"
            res["run"]["project"] = project
            res["run"]["spec_file"] = f"runs/{project}/sweep.yaml"
            name = f"{res['run']['name']}-{k // projects:04d}"
            res["run"]["name"] = name
            path = root / "runs" / project / "results" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, sort_keys=True, indent=2) + "\n")
        fx._git(root, "add", "runs")
        fx._git(root, "commit", "-q", "-m", f"results v{version}", date=f"2025-03-{1 + version * 3:02d}T12:00:00Z")
    shutil.copytree(REPO / "site", root / "site", ignore=shutil.ignore_patterns("build"))


def build(code: Path, root: Path, out: Path) -> dict:
    """Build the site of ``root`` with the package at ``code``, in a process of its own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(root), str(out)],
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=root,  # never a checkout, or `python -c` would import the checkout's package
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"site build failed:\n{proc.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    run_pages = sorted(out.glob("projects/*/runs/*.html"))
    sizes = [p.stat().st_size for p in run_pages]
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        **report,
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        # ru_maxrss of the children is the largest child's peak: each build is one child.
        "peak_mb": after.ru_maxrss / 1024,
        "run_page_kb": statistics.median(sizes) / 1024 if sizes else 0.0,
        "disk_mb": disk / 1e6,
    }


def _checkout(rev: str, dest: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(dest), rev], check=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--projects", type=int, default=50, help="projects the --sizes results are spread over")
    parser.add_argument("--commits", type=int, default=3)
    parser.add_argument("--page-projects", type=int, nargs="*", default=[2, 100])
    parser.add_argument("--page-results", type=int, default=200)
    parser.add_argument("--base", default=None, help="also measure page sizes with the code of this commit")
    parser.add_argument("--write", type=Path, default=None, help="write a Markdown report here")
    args = parser.parse_args(argv)

    fx = _fixtures()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tinymlaas-site-bench-") as tmp:
        tmp_path = Path(tmp)
        codes = {"this commit": REPO}
        if args.base:
            codes[f"base {args.base}"] = _checkout(args.base, tmp_path / "base")
        try:
            pages = []
            for projects in args.page_projects:
                root = tmp_path / f"pages-{projects}"
                write_repo(fx, root, args.page_results, projects, 1)
                for label, code in codes.items():
                    m = build(code, root, tmp_path / f"out-pages-{projects}-{len(pages)}")
                    pages.append((label, projects, m))
                    print(
                        f"{label}: {args.page_results} results in {projects} projects: "
                        f"run page {m['run_page_kb']:.1f} KB",
                        flush=True,
                    )
            scale = []
            for n in args.sizes:
                root = tmp_path / f"scale-{n}"
                write_repo(fx, root, n, args.projects, args.commits)
                m = build(REPO, root, tmp_path / f"out-scale-{n}")
                scale.append((n, m))
                phases = ", ".join(f"{k} {v:.1f}" for k, v in m["timings"].items())
                print(
                    f"{n} results: {m['pages']} pages, {m['wall']:.1f} s wall, {m['cpu']:.1f} CPU-s, "
                    f"peak {m['peak_mb']:.0f} MB, {m['disk_mb']:.0f} MB on disk, run page {m['run_page_kb']:.1f} KB "
                    f"({phases})",
                    flush=True,
                )
                shutil.rmtree(root)
                shutil.rmtree(tmp_path / f"out-scale-{n}")
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp_path / "base")])

    lines = [
        "# Site build benchmark",
        "",
        f"`python benchmarks/site_build.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        f"Results spread over {args.projects} projects, {args.commits} committed versions each (history is read "
        "from git). Every build runs in its own process; peak memory is its max RSS.",
        "",
        f"Load average of the machine when the report was written (1, 5, 15 min): "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}. Wall time includes waiting for a "
        "busy machine; CPU time does not.",
        "",
        "## At scale",
        "",
        "| results | pages | wall (s) | CPU (s) | peak memory (MB) | on disk (MB) | run page (KB) | phases (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        *[
            f"| {n} | {m['pages']} | {m['wall']:.1f} | {m['cpu']:.1f} | {m['peak_mb']:.0f} | {m['disk_mb']:.0f} | "
            f"{m['run_page_kb']:.1f} | {', '.join(f'{k} {v:.1f}' for k, v in m['timings'].items())} |"
            for n, m in scale
        ],
        "",
        f"## Run page size by number of projects ({args.page_results} results)",
        "",
        "| code | projects | run page, median (KB) | build (s) |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {p} | {m['run_page_kb']:.1f} | {m['wall']:.1f} |" for label, p, m in pages],
        "",
    ]
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
