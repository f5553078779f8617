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
        help="build the stage, inference and your own stage images",
        description="Build tinymlaas-stage:<version> (the built-in stages), the bare inference "
        "image, and the images of your own stages (pipeline stages whose image is a folder with "
        "a Dockerfile, tagged by content) on the engine at DOCKER_HOST (or --docker-host). "
        "Offline, build the base first with '.ci/docker.sh base' and pass "
        "--base tinymlaas-base:bookworm.",
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
        "--only",
        choices=("stage", "inference", "user"),
        default=None,
        help="build one kind only: stage, inference, or user (the images of your own stages, "
        "from pipeline stages whose image is a folder with a Dockerfile)",
    )
    build.add_argument("--tag-suffix", default="", metavar="SUFFIX", help="append SUFFIX to the tags (e.g. -dev)")
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
    from tinymlaas_ci.engine.images import build_images, build_user_images, pip_find_links

    wheels: list[Path] = []
    for folder in args.wheels:
        wheels.extend(pip_find_links() if str(folder) == "pip" else [folder])
    repo = Path(args.repo) if args.repo else find_repo_root(Path.cwd())
    sink = lambda line: print(line, flush=True)  # noqa: E731
    built = []
    if args.only != "user":
        built += build_images(
            only=args.only,
            base=args.base,
            wheels=wheels,
            tag_suffix=args.tag_suffix,
            repo=repo,
            docker_host=args.docker_host,
            sink=sink,
        )
    if args.only in (None, "user") and repo is not None:
        folders = _user_image_folders(repo)
        if folders:
            built += build_user_images(repo, folders, base=args.base, docker_host=args.docker_host, sink=sink)
        elif args.only == "user":
            print("no pipeline stage has an image folder with a Dockerfile; nothing to build")
    print()
    for image in built:
        print(image.describe())
    return 0


def _user_image_folders(repo: Path) -> list[Path]:
    """Folders with a Dockerfile named as a stage ``image`` in the repository's pipelines."""
    from tinymlaas_ci.engine.images import folder_image
    from tinymlaas_ci.spec.repo import load_repo

    loaded = load_repo(repo, results=False)
    folders: list[Path] = []
    for pipeline in loaded.pipelines.values():
        for stage in pipeline.stages:
            folder = folder_image(repo, stage.image)
            if folder is not None and folder not in folders:
                folders.append(folder)
    return folders
