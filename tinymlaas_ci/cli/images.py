"""``tinymlaas images build``: build the stage and inference images on a Docker engine."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``images`` command group."""
    images = subparsers.add_parser(
        "images",
        help="build the Docker images stages run in",
        description="Build the Docker images stages run in, from pipelines/images/<name>/Dockerfile.",
    )
    sub = images.add_subparsers(dest="images_command", metavar="COMMAND")
    build = sub.add_parser(
        "build",
        help="build the stage and inference images",
        description="Build tinymlaas-stage:<version> (the built-in stages) and the bare inference "
        "image on the engine at DOCKER_HOST (or --docker-host). Offline, build the base first "
        "with '.ci/docker.sh base' and pass --base tinymlaas-base:bookworm.",
    )
    build.add_argument(
        "--base",
        metavar="IMAGE",
        default=None,
        help="base image with python3 and venv (default: python:3.11-slim)",
    )
    build.add_argument(
        "--wheels",
        metavar="DIR",
        action="append",
        type=Path,
        default=[],
        help="a folder of local wheels to install from first, e.g. the torch CPU wheel "
        "(repeatable; 'pip' means the find-links folders in 'pip config list')",
    )
    build.add_argument(
        "--only", choices=("stage", "inference"), default=None, help="build one image only"
    )
    build.add_argument(
        "--tag-suffix", default="", metavar="SUFFIX", help="append SUFFIX to the tags (e.g. -dev)"
    )
    build.add_argument(
        "--docker-host",
        metavar="URL",
        default=None,
        help="engine to build on (default: DOCKER_HOST)",
    )
    build.set_defaults(func=_build)
    images.set_defaults(func=lambda args: images.print_help() or 2)


def _build(args: argparse.Namespace) -> int:
    from tinymlaas_ci.cli.common import find_repo_root
    from tinymlaas_ci.engine.images import build_images, pip_find_links

    wheels: list[Path] = []
    for folder in args.wheels:
        wheels.extend(pip_find_links() if str(folder) == "pip" else [folder])
    repo = Path(args.repo) if args.repo else find_repo_root(Path.cwd())
    built = build_images(
        only=args.only,
        base=args.base,
        wheels=wheels,
        tag_suffix=args.tag_suffix,
        repo=repo,
        docker_host=args.docker_host,
        sink=lambda line: print(line, flush=True),
    )
    print()
    for image in built:
        print(image.describe())
    return 0
