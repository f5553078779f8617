"""``tinymlaas results commit`` and ``tinymlaas github pr-comment|job-summary``: what the
workflows call to publish results and to write GitHub Markdown (the pull-request comment and
the job summary). ``tinymlaas report pr|summary`` are the same commands under their former
names, kept as hidden aliases for workflows that still call them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tinymlaas_ci.cli.common import repo_root

__all__ = ["register"]


def register(sub) -> None:
    """Add the ``results`` and ``github`` command groups (and the hidden ``report`` alias)."""
    results = sub.add_parser(
        "results",
        help="commit and push new result files",
        description="Work with the committed result files runs/<project>/results/<run>.json.",
    )
    rsub = results.add_subparsers(dest="results_command", metavar="COMMAND")
    p = rsub.add_parser(
        "commit",
        help="commit new or changed result files in one commit and push it, retrying on races",
        description="Stage only runs/*/results/*.json files that are new or changed, make one commit "
        "whose message lists the runs with their status and accuracy, and push it. When the push is "
        "rejected because the branch moved, fetch, rebase onto it and try again with backoff. When "
        "two jobs wrote the same run, the result with the newer created_at is kept. Nothing to "
        "commit is not an error (exit 0). In GitHub Actions ($GITHUB_OUTPUT set) it writes the step "
        "outputs committed (true when result commits reached the branch), commit, pushed and files.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="result files to commit (default: every new or changed runs/*/results/*.json)",
    )
    p.add_argument("--remote", default="origin", metavar="NAME", help="remote to push to (default: %(default)s)")
    p.add_argument(
        "--branch",
        default=None,
        metavar="BRANCH",
        help="branch to push to (default: the checked-out branch; needed on a detached HEAD)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="how many times to rebase and push again after a rejected push (default: %(default)s)",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="first pause before a retry; doubled each time, with random jitter (default: %(default)s)",
    )
    p.add_argument(
        "--message-prefix",
        default="results:",
        metavar="TEXT",
        help="start of the commit subject, before the run names (default: %(default)r)",
    )
    p.add_argument("--no-push", action="store_true", help="commit, but do not push")
    p.add_argument("--dry-run", action="store_true", help="show the files and the commit message; change nothing")
    p.set_defaults(func=cmd_results_commit)
    results.set_defaults(func=lambda args: results.print_help() or 2)

    github = sub.add_parser(
        "github",
        help="write GitHub Markdown: the pull-request comment or the job summary",
        description="GitHub-flavoured Markdown, compared with results committed in git.",
    )
    _register_markdown(github, "pr-comment", "job-summary")
    # The former names: adopters' workflows call them. Added without help, so they stay out of
    # --help and the CLI reference.
    _register_markdown(sub.add_parser("report", description="Former name of 'tinymlaas github'."), "pr", "summary")


def _register_markdown(group, pr_name: str, summary_name: str) -> None:
    qsub = group.add_subparsers(dest="github_command", metavar="COMMAND")
    p = qsub.add_parser(
        pr_name,
        help="the pull-request comment: validation errors, the plan, and changes against the base branch",
        description="Write the sticky pull-request comment: validation errors, what would run on which "
        "device and runner (and what each new or changed run is: model, dataset, compression, gates), and "
        "for runs with results on the base branch, their committed metrics and the spec fields that "
        "changed. Exit 0 even when specs are invalid: the comment shows the errors.",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="REF",
        help="git ref of the base branch to compare with (default: origin/$GITHUB_BASE_REF, else origin/main)",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write the Markdown to FILE (default: standard output)")
    p.set_defaults(func=cmd_pr_comment)

    p = qsub.add_parser(
        summary_name,
        help="the job summary after a run: metrics, changes against the previous result, gate verdicts",
        description="Write the after-run summary: per run its metrics, the metrics that changed against "
        "the previous committed result (direction and percent), and its gate verdicts. Appends to "
        "$GITHUB_STEP_SUMMARY when that is set and --out is not given.",
    )
    p.add_argument(
        "--outcomes",
        default=None,
        metavar="FILE_OR_DIR",
        help="outcomes written by 'tinymlaas run --json FILE', or a folder searched recursively for them "
        "(default: every result file that differs from --base)",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="REF",
        help="compare with the results at REF (default: the previous committed version of each result)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the Markdown to FILE (default: append to $GITHUB_STEP_SUMMARY, else standard output)",
    )
    p.set_defaults(func=cmd_job_summary)
    group.set_defaults(func=lambda args: group.print_help() or 2)


def cmd_results_commit(args) -> int:
    from tinymlaas_ci.gitops.commit import commit_results

    root = repo_root(args)
    outcome = commit_results(
        root,
        args.paths or None,
        message_prefix=args.message_prefix,
        remote=args.remote,
        branch=args.branch,
        retries=args.retries,
        backoff=args.backoff,
        push=not args.no_push,
        dry_run=args.dry_run,
    )
    print(outcome.describe())
    output = os.environ.get("GITHUB_OUTPUT")
    if output and not args.dry_run:
        # The step's outputs: whether result commits reached the branch, and which commit.
        with open(output, "a", encoding="utf-8") as fh:
            fh.writelines(f"{key}={value}\n" for key, value in outcome.github_outputs().items())
    return 0


def _default_base() -> str:
    base = os.environ.get("GITHUB_BASE_REF")
    return f"origin/{base}" if base else "origin/main"


def _write(text: str, out: str | None, *, append_to_summary: bool = False) -> None:
    from tinymlaas_ci.fs import atomic_write_text

    if out:
        atomic_write_text(Path(out), text)
        print(f"wrote {out}", file=sys.stderr)
        return
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if append_to_summary else None
    if summary:
        # Appended, not replaced: other steps of the job write to the same summary.
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(text)
        print("appended the summary to $GITHUB_STEP_SUMMARY", file=sys.stderr)
        return
    sys.stdout.write(text)


def cmd_pr_comment(args) -> int:
    from tinymlaas_ci.gitops.pr_comment import pr_comment

    text = pr_comment(repo_root(args), args.base or _default_base())
    _write(text, args.out)
    return 0


def cmd_job_summary(args) -> int:
    from tinymlaas_ci.gitops.job_summary import job_summary
    from tinymlaas_ci.results.outcomes import read_outcomes

    outcomes = read_outcomes(args.outcomes) if args.outcomes else None
    text = job_summary(repo_root(args), outcomes, args.base)
    _write(text, args.out, append_to_summary=True)
    return 0
