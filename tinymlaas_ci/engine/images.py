"""Building the images stages run in: ``tinymlaas images build``.

Two images come from ``pipelines/images/<name>/Dockerfile``:

* ``stage`` (``tinymlaas-stage:<version>``): torch (CPU), ONNX, ONNX Runtime, onnxscript,
  numpy, huggingface_hub, Pillow, pyarrow and this package; the built-in stages run in it.
* ``inference`` (``tinymlaas-inference:<tag>``): ONNX Runtime + numpy + this package, plus a
  model bundle at ``/bundle``; built per bundle on a device's engine by
  :func:`build_inference_image` (which lives in :mod:`tinymlaas_ci.devices.docker_build`, below the
  engine, so that the device transport can use it too).

Both Dockerfiles take ``ARG BASE`` (``python:3.11-slim`` unless ``--base`` says otherwise) and
build a virtualenv in a builder stage, then copy only the venv into the final image.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinymlaas_ci import __version__
from tinymlaas_ci.devices.docker_build import (
    BUNDLE_DIR,
    DEFAULT_BASE,
    INFERENCE_REPOSITORY,
    build_image,
    build_inference_image,
    dockerfile_path,
    inference_tag,
    prepare_context,
)
from tinymlaas_ci.devices.docker_client import client_for, docker_errors, find_image, host_label
from tinymlaas_ci.errors import ExecutorError

__all__ = [
    "BUNDLE_DIR",
    "DEFAULT_BASE",
    "IMAGE_NAMES",
    "INFERENCE_REPOSITORY",
    "STAGE_IMAGE",
    "STAGE_REPOSITORY",
    "BuiltImage",
    "build_images",
    "build_inference_image",
    "image_tag",
    "inference_tag",
    "pip_find_links",
]

STAGE_REPOSITORY = "tinymlaas-stage"
STAGE_IMAGE = f"{STAGE_REPOSITORY}:{__version__}"
"""The default image of the built-in stages in the Docker executor."""
IMAGE_NAMES = ("stage", "inference")
"""The images ``tinymlaas images build`` knows, by their folder under ``pipelines/images``."""

Sink = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    """One image built by :func:`build_images`."""

    name: str
    tag: str
    id: str
    size_bytes: int
    seconds: float

    def describe(self) -> str:
        return f"{self.tag}  {self.id[:19]}  {self.size_bytes / 1e6:.0f} MB  ({self.seconds:.0f}s)"


def image_tag(name: str, tag_suffix: str = "") -> str:
    """The tag ``tinymlaas images build`` gives image ``name``.

    The inference image built here is the bare runtime (no bundle) tagged ``base-<version>``;
    per-bundle images get content-hash tags when a device installs a bundle.
    """
    if name == "stage":
        return f"{STAGE_IMAGE}{tag_suffix}"
    if name == "inference":
        return f"{INFERENCE_REPOSITORY}:base-{__version__}{tag_suffix}"
    raise ExecutorError(f"unknown image {name!r}", hint=f"choose one of {', '.join(IMAGE_NAMES)}")


def pip_find_links() -> list[Path]:
    """Local wheel folders pip is configured with (``find-links`` in ``pip config list``).

    That is where a machine keeps wheels it cannot or should not download, such as the
    torch CPU wheel; handing them to the build keeps it fast and offline-friendly.
    """
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found: list[Path] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if not key.strip().endswith("find-links"):
            continue
        for item in value.strip().strip("'\"").split():
            item = item.removeprefix("file://")
            path = Path(item)
            if path.is_dir() and path not in found:
                found.append(path)
    return found


def build_images(
    *,
    only: str | None = None,
    base: str | None = None,
    wheels: list[Path] | tuple[Path, ...] = (),
    tag_suffix: str = "",
    repo: Path | None = None,
    docker_host: str | None = None,
    sink: Sink = print,
) -> list[BuiltImage]:
    """Build the stage and inference images (or ``only`` one) on the engine at ``docker_host``.

    ``wheels`` are folders of local wheels put into the build context (pip looks there first);
    ``base`` replaces the Dockerfiles' ``BASE`` (e.g. ``tinymlaas-base:bookworm`` offline).
    """
    names = (only,) if only else IMAGE_NAMES
    for name in names:
        image_tag(name)  # unknown names fail before anything is built
    client = client_for(docker_host)
    built: list[BuiltImage] = []
    try:
        for name in names:
            tag = image_tag(name, tag_suffix)
            base_image = base or DEFAULT_BASE
            sink(f"== building {tag} from {base_image} on {host_label(docker_host)}")
            started = time.perf_counter()
            previous = _image_id(client, tag, docker_host)
            with tempfile.TemporaryDirectory(prefix="tmc.") as tmp:
                ctx = Path(tmp)
                facts = prepare_context(ctx, dockerfile_path(name, repo), wheels=tuple(wheels))
                sink(f"   context: {facts['package_wheel']}; local wheels: {facts['local_wheels']}")
                buildargs = {"BASE": base_image}
                if name == "stage" and any((ctx / "wheels").glob("torch-2.13.0*.whl")):
                    buildargs["TORCH_INDEX"] = ""  # the local CPU wheel; no extra index needed
                image_id = build_image(client, ctx, tag, buildargs=buildargs, sink=sink, host=docker_host)
            if previous and previous != image_id:
                _drop_untagged(client, previous, docker_host, sink)
            with docker_errors(docker_host, f"inspecting {tag}"):
                size = int(client.images.get(image_id).attrs.get("Size") or 0)
            built.append(BuiltImage(name, tag, image_id, size, time.perf_counter() - started))
    finally:
        client.close()
    return built


def _image_id(client, ref: str, host: str | None) -> str | None:
    image = find_image(client, ref, host)
    return image.id if image is not None else None


def _drop_untagged(client, image_id: str, host: str | None, sink: Sink) -> None:
    """Remove the image a rebuild replaced, if nothing else names or uses it.

    Every rebuild would otherwise leave a gigabyte-sized dangling image behind.
    """
    import docker

    try:
        if client.images.get(image_id).tags:
            return
        client.images.remove(image_id)
        sink(f"   removed the replaced image {image_id[:19]}")
    except docker.errors.DockerException:
        pass  # still used by a container, or already gone: leaving it is harmless


# -- stage images of your own ----------------------------------------------------------------------

USER_IMAGE_PREFIX = "tinymlaas-user-"
"""Tags of images built from a pipeline stage's ``image: <folder with a Dockerfile>``."""


def folder_image(repo_root: Path, ref: str | None) -> Path | None:
    """The folder when a stage's ``image`` names a folder of the repository holding a
    ``Dockerfile`` (e.g. ``pipelines/images/size-report``); None for an image name."""
    if not ref:
        return None
    folder = (Path(repo_root) / ref).resolve()
    try:
        folder.relative_to(Path(repo_root).resolve())
    except ValueError:
        return None
    return folder if (folder / "Dockerfile").is_file() else None


def user_image_tag(folder: Path) -> str:
    """A content tag: the same folder contents always give the same tag, so the engine knows
    whether the image it would run is the one built from the files in the repository."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    name = re.sub(r"[^a-z0-9_.-]+", "-", folder.name.lower()).strip("-.") or "stage"
    return f"{USER_IMAGE_PREFIX}{name}:{h.hexdigest()[:12]}"


def build_user_images(
    repo_root: Path,
    folders: list[Path],
    *,
    base: str | None = None,
    docker_host: str | None = None,
    sink: Sink = print,
) -> list[BuiltImage]:
    """Build each folder's Dockerfile into its content tag (skipping tags that exist).
    ``base`` is passed as the ``BASE`` build argument to Dockerfiles that declare it."""
    client = client_for(docker_host)
    built: list[BuiltImage] = []
    try:
        for folder in folders:
            tag = user_image_tag(folder)
            existing = _image_id(client, tag, docker_host)
            started = time.perf_counter()
            if existing:
                sink(f"== {tag} is up to date ({folder.relative_to(repo_root)})")
                image_id = existing
            else:
                sink(f"== building {tag} from {folder.relative_to(repo_root)} on {host_label(docker_host)}")
                declares_base = re.search(r"^\s*ARG\s+BASE\b", (folder / "Dockerfile").read_text(), re.M)
                buildargs = {"BASE": base} if (base and declares_base) else None
                image_id = build_image(client, folder, tag, buildargs=buildargs, sink=sink, host=docker_host)
            with docker_errors(docker_host, f"inspecting {tag}"):
                size = int(client.images.get(image_id).attrs.get("Size") or 0)
            built.append(BuiltImage(folder.name, tag, image_id, size, time.perf_counter() - started))
    finally:
        client.close()
    return built
