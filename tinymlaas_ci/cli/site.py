"""``tinymlaas site build`` and ``tinymlaas site serve``: the performance website."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tinymlaas_ci.cli.common import repo_root
from tinymlaas_ci.errors import TinymlError, UsageError

__all__ = ["register"]


def register(subparsers) -> None:
    site = subparsers.add_parser(
        "site",
        help="build or serve the performance website",
        description="Build the performance website from runs/*/results/*.json into one folder "
        "that works on GitHub Pages (also under a sub-path) and from file://.",
    )
    sub = site.add_subparsers(dest="site_command", metavar="COMMAND")
    site.set_defaults(func=lambda args: _no_subcommand(site))

    build = sub.add_parser(
        "build",
        help="build the website into one folder",
        description="Generate pages from the result files into a staging copy of site/ and build "
        "it with MkDocs (strict). Unreadable result files and posts that cannot be rendered are "
        "skipped and listed; the build still succeeds.",
    )
    _common_options(build)
    build.add_argument(
        "--out", metavar="DIR", default=None, help="output folder (default: site/build); replaced by each build"
    )
    build.set_defaults(func=cmd_build)

    serve = sub.add_parser(
        "serve",
        help="build the website and serve it locally",
        description="Build the website (unless --no-build) and serve it over HTTP until interrupted.",
    )
    _common_options(serve)
    serve.add_argument(
        "--out", metavar="DIR", default=None, help="folder to build into and serve (default: a temporary folder)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--base-path",
        default="/",
        metavar="PATH",
        help="serve under this sub-path, as GitHub Pages serves a project site, e.g. /my-repo/",
    )
    serve.add_argument("--no-build", action="store_true", help="serve --out as it is, without building")
    serve.set_defaults(func=cmd_serve)


def _common_options(parser) -> None:
    parser.add_argument(
        "--history",
        type=int,
        default=50,
        metavar="N",
        help="committed versions of each result to chart (default: %(default)s; 0: none)",
    )
    parser.add_argument("--no-strict", action="store_true", help="do not fail on MkDocs warnings (for drafting pages)")


def _no_subcommand(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _build(args, out: Path | None):
    from tinymlaas_ci.cli.main import build_parser
    from tinymlaas_ci.website import build_site

    if args.history < 0:
        raise UsageError("--history must be 0 or more")
    report = build_site(
        repo_root(args),
        out,
        strict=not args.no_strict,
        history_limit=args.history,
        log=lambda msg: print(msg, file=sys.stderr),
        cli_parser=build_parser(),
    )
    print(report.lines()[-1])
    if report.skipped_results or report.skipped_posts:
        print(
            f"skipped {len(report.skipped_results)} result file(s) and {len(report.skipped_posts)} post(s); "
            "see the lines above",
            file=sys.stderr,
        )
    return report


def cmd_build(args) -> int:
    _build(args, Path(args.out) if args.out else None)
    return 0


def cmd_serve(args) -> int:
    from tinymlaas_ci.website.serve import make_server

    if args.no_build:
        if not args.out:
            raise UsageError("--no-build needs --out DIR: the folder to serve")
        out = Path(args.out)
        if not (out / "index.html").is_file():
            raise TinymlError(
                f"{out} holds no built site (no index.html)", hint="run 'tinymlaas site build --out DIR' first"
            )
    else:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tinymlaas-site-serve-")) / "site"
        _build(args, out)
    try:
        server = make_server(out, args.host, args.port, args.base_path, verbose=True)
    except OSError as exc:
        raise TinymlError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", hint="pick another port with --port"
        ) from exc
    print(f"serving {out} at http://{args.host}:{server.server_address[1]}{server.base_path} (Ctrl+C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
