"""``tinymlaas run`` and ``tinymlaas status``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tinymlaas_ci.cli.common import repo_root

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the runs that are new or changed: fetch, compile, install, infer; write results",
        description="Plan, then run each run that is new or changed (or all selected with --force). "
        "Stages whose inputs did not change are reused from the run volume; a failed run resumes "
        "from its last good stage. Results are written to runs/<project>/results/<run>.json.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="spec files or folders (default: the whole repository)")
    p.add_argument(
        "--select",
        action="append",
        metavar="PATTERN",
        default=None,
        help="only runs matching PROJECT, RUN or PROJECT/RUN (glob; repeatable)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "docker"],
        default="local",
        help="where stages run: local subprocesses (default, no Docker needed) or sandboxed Docker containers",
    )
    p.add_argument(
        "--force", action="store_true", help="run every selected run and stage again, ignoring results and cache"
    )
    p.add_argument("--keep-going", action="store_true", help="after a failed run, go on with the others")
    p.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=1,
        metavar="N",
        help="run up to N runs at once (default 1); install and infer on one device still take turns",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up waiting for a busy device or run after SECONDS (default: wait)",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="where run volumes live (default: .tinymlaas/work, or $TINYMLAAS_WORK_DIR)",
    )
    p.add_argument("--no-results", action="store_true", help="do not write result files into runs/ (volumes only)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every line the stages print")
    p.add_argument("--json", metavar="FILE", default=None, help="also write a JSON summary of the outcomes to FILE")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "status",
        help="show the status of each stage of each run (pending, running, generated, failed)",
        description="Show the status records of the run volumes: each stage's state, duration and whether it "
        "came from the cache.",
    )
    p.add_argument(
        "runs", nargs="*", metavar="RUN", help="runs to show: PROJECT, RUN or PROJECT/RUN globs (default: all)"
    )
    p.add_argument("--work-dir", default=None, metavar="DIR", help="where run volumes live")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_status)


def _jobs(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--jobs takes a whole number of at least 1, not {text!r}")
    return value


def _load_plan(args):
    from tinymlaas_ci.plan import plan
    from tinymlaas_ci.spec.repo import load_repo

    root = repo_root(args)
    repo = load_repo(root, [Path(p) for p in args.paths] if getattr(args, "paths", None) else None)
    if repo.problems:
        for p in repo.problems:
            print(p.format(), file=sys.stderr)
        print(
            f"cannot run: {len(repo.problems)} problem(s) in the specs; fix them first (tinymlaas validate)",
            file=sys.stderr,
        )
        return repo, None
    return repo, plan(repo, getattr(args, "select", None))


def cmd_run(args) -> int:
    from tinymlaas_ci.engine.progress import Progress
    from tinymlaas_ci.engine.runner import Engine, RunOptions

    repo, the_plan = _load_plan(args)
    if the_plan is None:
        return 1
    options = RunOptions(
        executor=args.executor,
        force=args.force,
        keep_going=args.keep_going,
        lock_timeout=args.lock_timeout,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        write_results=not args.no_results,
        jobs=args.jobs,
    )
    progress = Progress(verbose=args.verbose)
    engine = Engine(repo, options, progress)
    try:
        outcomes = engine.execute(the_plan)
    finally:
        progress.close()
    _summary(outcomes, args)
    if args.json:
        from tinymlaas_ci.results.outcomes import Outcome, write_outcomes

        write_outcomes(
            args.json,
            (
                Outcome(
                    run=o.run_id,
                    status=o.status,
                    result=o.result_path,
                    failed_stage=o.failed_stage,
                    message=o.message,
                    log=o.log,
                )
                for o in outcomes
            ),
        )
    return 1 if any(o.status in ("failed", "gates-failed", "not-run") for o in outcomes) else 0


def _summary(outcomes, args) -> None:
    counts: dict[str, list[str]] = {}
    for o in outcomes:
        counts.setdefault(o.status, []).append(o.run_id)
    order = ["succeeded", "up-to-date", "gates-failed", "failed", "not-run"]
    parts = [f"{len(counts[s])} {s}" for s in order if s in counts]
    print(f"\n{len(outcomes)} run{'s' * (len(outcomes) != 1)}: " + ", ".join(parts), file=sys.stderr)
    for o in outcomes:
        if o.status == "failed":
            print(f"  failed: {o.run_id} at stage {o.failed_stage}: {o.message}", file=sys.stderr)
            if o.log:
                print(f"          log: {o.log}", file=sys.stderr)
        elif o.status == "gates-failed":
            print(f"  gates failed: {o.run_id}: {o.message}", file=sys.stderr)
        elif o.status == "not-run":
            print(f"  not run: {o.run_id} (an earlier run failed)", file=sys.stderr)
    redo = [o.run_id for o in outcomes if o.status in ("failed", "not-run")]
    if redo:
        cmd = ["tinymlaas", "run"] + [f"--select={r}" for r in redo]
        if args.executor != "local":
            cmd.append(f"--executor={args.executor}")
        print(f"resume with: {' '.join(shlex.quote(c) for c in cmd)}  (finished stages are reused)", file=sys.stderr)


def cmd_status(args) -> int:
    from tinymlaas_ci.cli.status import cmd_status as show_status

    return show_status(args)
