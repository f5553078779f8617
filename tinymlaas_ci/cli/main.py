"""The ``tinymlaas`` command line.

Each command group lives in its own module under :mod:`tinymlaas_ci.cli` and exposes
``register(subparsers)``; a command is a function ``(args) -> int`` stored as ``func`` on its
parser. Modules are imported when the parser is built, so they must import nothing heavy at
module level: torch, onnxruntime and docker are imported inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tinymlaas_ci import __version__
from tinymlaas_ci.errors import TinymlError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES = (
    "tinymlaas_ci.cli.specs",  # validate, plan, schema
    "tinymlaas_ci.cli.run",  # run, status
    "tinymlaas_ci.cli.cache",  # cache list, cache prune
    "tinymlaas_ci.cli.images",  # images build
    "tinymlaas_ci.cli.site",  # site build, site serve
    "tinymlaas_ci.cli.gitops",  # results commit, github pr-comment|job-summary
    "tinymlaas_ci.cli.ops",  # notify, export, device, init
    "tinymlaas_ci.cli.compare",  # compare
    "tinymlaas_ci.cli.new",  # new
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2, as argparse does, with a hint
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n  hint: run '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tinymlaas",
        description="TinyML deployment as a declarative GitOps pipeline: "
        "validate and plan YAML run specs, run them on devices, publish the results.",
    )
    parser.add_argument("--version", action="version", version=f"tinymlaas {__version__}")
    parser.add_argument(
        "-C",
        "--repo",
        metavar="DIR",
        default=None,
        help="repository root (default: the nearest folder above the current one with runs/, devices/ or .git)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not present in this install
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TinymlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a closed reader (e.g. `| head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
