"""``tinymlaas validate``, ``tinymlaas plan`` and ``tinymlaas schema``.

Nothing here imports torch, onnxruntime or docker: these commands run on a light install in
pull-request checks and must start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tinymlaas_ci.cli.common import repo_root
from tinymlaas_ci.errors import Problem, UsageError

__all__ = ["format_problems_github", "register"]


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check run, device and pipeline specs; report every problem with file:line:column",
        description="Check the spec files of the repository (or only PATHs) and report every "
        "problem at once. Exit 0 when valid, 1 when not, 2 on a usage error.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="spec files or folders (default: the whole repository)")
    p.add_argument(
        "--format",
        choices=["text", "json", "github"],
        default="text",
        help="text (default); json; github: workflow annotations shown on the pull request's diff",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "plan",
        help="show the expanded runs, their devices and stages with cache keys, and what would run",
        description="Expand the runs (matrix sweeps included) and show, for each, its device and "
        "runner labels, every stage with its content-addressed key, and its status against the "
        "committed results: new, changed or up-to-date.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="spec files or folders (default: the whole repository)")
    p.add_argument(
        "--format",
        choices=["text", "json", "markdown"],
        default="text",
        help="text (default); json: what workflows read to build their job matrix; "
        "markdown: for a pull-request comment",
    )
    p.add_argument(
        "--select",
        action="append",
        metavar="PATTERN",
        default=None,
        help="only runs matching PROJECT, RUN or PROJECT/RUN (glob; repeatable)",
    )
    p.add_argument("--pending", action="store_true", help="only runs that are new or changed")
    p.add_argument(
        "--force",
        action="store_true",
        help="put up-to-date runs in the job matrix too (what a forced run does); the default matrix "
        "holds only new and changed runs",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "schema",
        help="write the JSON Schemas of spec and result files",
        description="Write run, device, pipeline and result JSON Schemas (used by editors through "
        "the yaml-language-server comment at the top of each spec file).",
    )
    p.add_argument(
        "--out", default="schemas", metavar="DIR", help="output folder, relative to the repository (default: schemas)"
    )
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a committed schema is out of date")
    p.set_defaults(func=cmd_schema)


# -- validate ---------------------------------------------------------------------------------


def format_problems_github(problems: list[Problem]) -> str:
    """GitHub workflow commands that annotate the pull request's diff."""
    from tinymlaas_ci.actions import workflow_command

    lines = []
    for p in problems:
        message = p.message + (f" ({p.hint})" if p.hint else "")
        line, col = (p.line, p.column or 1) if p.line else (None, None)
        lines.append(workflow_command("error", message, file=p.path, line=line, col=col, title="tinymlaas validate"))
    return "\n".join(lines)


def _load(args):
    from tinymlaas_ci.spec.repo import load_repo

    root = repo_root(args)
    # A PATH that does not exist is a mistake on the command line, not in a spec file.
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UsageError(
            f"no such file or folder: {', '.join(missing)}",
            hint="give spec files or folders of the repository, or no PATH for all of them",
        )
    return load_repo(root, [Path(p) for p in args.paths] if args.paths else None)


def cmd_validate(args) -> int:
    repo = _load(args)
    problems = repo.problems
    n_files = len(repo.run_files)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "valid": not problems,
                    "problems": [p.as_dict() for p in problems],
                    "run_files": n_files,
                    "runs": len(repo.runs),
                    "devices": sorted(repo.devices),
                    "pipelines": sorted(repo.pipelines),
                },
                indent=2,
                sort_keys=True,
            )
        )
    elif args.format == "github":
        if problems:
            print(format_problems_github(problems))
        print(_summary(repo, problems))
    else:
        for p in problems:
            print(p.format())
        print(_summary(repo, problems), file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


def _summary(repo, problems) -> str:
    if problems:
        files = len({p.path for p in problems})
        return f"{len(problems)} problem{'s' * (len(problems) != 1)} in {files} file{'s' * (files != 1)}"
    return (
        f"ok: {_n(len(repo.runs), 'run')} from {_n(len(repo.run_files), 'spec file')}, "
        f"{_n(len(repo.devices), 'device')}, {_n(len(repo.pipelines), 'pipeline')}"
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


# -- plan -------------------------------------------------------------------------------------


def cmd_plan(args) -> int:
    from tinymlaas_ci.plan import plan

    repo = _load(args)
    if repo.problems:
        for p in repo.problems:
            print(p.format(), file=sys.stderr)
        print(f"cannot plan: {_summary(repo, repo.problems)}; fix them first (tinymlaas validate)", file=sys.stderr)
        return 1
    result = plan(repo, args.select)
    if args.pending:
        from tinymlaas_ci.plan import Plan

        result = Plan(tuple(r for r in result.runs if r.pending))
    if args.format == "json":
        print(json.dumps(result.to_json(force=args.force), indent=2, sort_keys=True))
    elif args.format == "markdown":
        from tinymlaas_ci.gitops.markdown import plan_markdown

        print(plan_markdown(result))
    else:
        print(plan_text(result))
    return 0


def plan_text(result) -> str:
    if not result.runs:
        return "nothing to plan: no runs"
    rows = [("RUN", "DEVICE", "STATUS", "STAGES")]
    for r in result.runs:
        rows.append((r.id, r.device, r.status, " -> ".join(f"{s.name}[{s.key[:8]}]" for s in r.stages)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]
    s = result.to_json()["summary"]
    failed = f", {s['gates-failed']} with failed gates (recorded)" if s["gates-failed"] else ""
    lines.append(
        f"\n{_n(s['total'], 'run')}: {s['new']} new, {s['changed']} changed, {s['up-to-date']} up to date{failed}"
    )
    return "\n".join(lines)


# -- schema -----------------------------------------------------------------------------------


def cmd_schema(args) -> int:
    from tinymlaas_ci.results.schemas import generate_schemas, write_schemas

    root = repo_root(args)
    out = root / args.out
    if args.check:
        stale = [
            name
            for name, text in generate_schemas().items()
            if not (out / name).is_file() or (out / name).read_text() != text
        ]
        for name in stale:
            print(f"{args.out}/{name} is out of date", file=sys.stderr)
        if stale:
            print("hint: run 'tinymlaas schema' and commit the result", file=sys.stderr)
        return 1 if stale else 0
    changed = write_schemas(out)
    for path in changed:
        print(f"wrote {path.relative_to(root)}")
    if not changed:
        print(f"{args.out}/ is up to date")
    return 0
