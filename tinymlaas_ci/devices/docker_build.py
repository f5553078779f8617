"""Docker images built on a device's engine: build contexts (this package as a wheel, local
wheels, the host CA bundle, a model bundle), streaming builds, and the inference image of a
model bundle. Talking to the engine and its errors: :mod:`.docker_client`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tinymlaas_ci import __version__
from tinymlaas_ci.devices.docker_client import (
    client_for,
    docker_errors,
    find_image,
    host_label,
    platform_for,
    resolve_host,
)
from tinymlaas_ci.errors import ExecutorError
from tinymlaas_ci.fs import sha256_file
from tinymlaas_ci.spec.models import DockerDevice, DockerEndpoint

__all__ = [
    "BUNDLE_DIR",
    "DEFAULT_BASE",
    "INFERENCE_REPOSITORY",
    "build_image",
    "build_inference_image",
    "ca_bundle",
    "dockerfile_path",
    "inference_tag",
    "install_bundle",
    "prepare_context",
    "source_root",
]

DEFAULT_BASE: str = DockerEndpoint.model_fields["base_image"].default
"""Base image of our Dockerfiles when none is given (``--base``): a device's default one."""
INFERENCE_REPOSITORY = "tinymlaas-inference"
"""Repository name of inference images; the tag is a content hash of what went in."""
BUNDLE_DIR = "/bundle"
"""Where an inference image holds the model bundle (``manifest.json``, model, baseline)."""
BUILDER_LABEL = "org.tinymlaas.builder"
"""Label of the builder stage of our Dockerfiles, so pruning touches only our leftovers."""

_CA_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)

Sink = Callable[[str], None]


def source_root() -> Path:
    """The source checkout of this package (the folder holding ``pyproject.toml``).

    Images get the package as a wheel built from it, so this is the code the runner runs.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "tinymlaas_ci").is_dir():
        raise ExecutorError(
            f"cannot build images: the tinymlaas_ci source tree was not found at {root}",
            hint="build images from a checkout of the TinyMLaaS-CI repository (pip install -e .)",
        )
    return root


def dockerfile_path(name: str, repo: Path | None = None) -> Path:
    """``pipelines/images/<name>/Dockerfile`` of ``repo``, else of the package's source tree."""
    candidates = []
    if repo is not None:
        candidates.append(Path(repo) / "pipelines" / "images" / name / "Dockerfile")
    with contextlib.suppress(ExecutorError):
        candidates.append(source_root() / "pipelines" / "images" / name / "Dockerfile")
    for path in candidates:
        if path.is_file():
            return path
    raise ExecutorError(
        f"no Dockerfile for image {name!r} (looked at {', '.join(map(str, candidates)) or 'nothing'})",
        hint=f"add pipelines/images/{name}/Dockerfile or run from the TinyMLaaS-CI repository",
    )


def ca_bundle() -> Path | None:
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    for candidate in _CA_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # wheels can be hundreds of MB: a hard link is free
    except OSError:
        shutil.copy2(src, dst)


def _released_wheel(dest: Path) -> Path:
    """An installed (not checked-out) package: the images get the released wheel of the same
    version from the package index, so they run the code the runner runs."""
    from tinymlaas_ci import __version__

    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-q",
        "-d",
        str(dest),
        f"tinymlaas-ci=={__version__}",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("tinymlaas_ci-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise ExecutorError(
            f"no source checkout of tinymlaas-ci, and its wheel {__version__} could not be downloaded:\n{tail}",
            hint="build images from a checkout of TinyMLaaS-CI (pip install -e .), or make the package index reachable",
        )
    return wheels[-1]


def build_package_wheel(dest: Path) -> Path:
    """Build a wheel of this package into ``dest`` and return its path.

    The sources are copied to a temp folder first, so the build writes no ``build/`` or
    ``*.egg-info`` into the checkout that others are working in.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        root = source_root()
    except ExecutorError:
        return _released_wheel(dest)
    with tempfile.TemporaryDirectory(prefix="tmw.") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        shutil.copytree(
            root / "tinymlaas_ci",
            src / "tinymlaas_ci",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        argv = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(dest),
        ]
        # Fixed timestamps make the wheel byte-identical while the code is unchanged, so the
        # image layers that install it come from the build cache instead of a fresh pip run.
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:  # no setuptools in this env: let pip fetch it in isolation
            argv.remove("--no-build-isolation")
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise ExecutorError(
                f"building the tinymlaas-ci wheel from {root} failed:\n{tail}",
                hint="check that 'pip wheel --no-deps .' works in the repository",
            )
    wheels = sorted(dest.glob("tinymlaas_ci-*.whl"))
    if not wheels:
        raise ExecutorError(f"pip built no tinymlaas_ci wheel into {dest}")
    return wheels[-1]


def prepare_context(
    ctx: Path,
    dockerfile: Path,
    *,
    wheels: tuple[Path, ...] | list[Path] = (),
    bundle: Path | None = None,
) -> dict[str, str]:
    """Fill a build context folder: ``Dockerfile``, ``wheels/`` (this package + local wheels),
    ``certs/ca-certificates.crt`` (the host CA bundle, for pip behind a TLS-inspecting proxy;
    empty when the host has none) and ``bundle/`` (the model bundle; empty without one).

    Returns facts about the context worth printing (wheel names).
    """
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.copy2(dockerfile, ctx / "Dockerfile")
    wheel_dir = ctx / "wheels"
    wheel_dir.mkdir(exist_ok=True)
    package_wheel = build_package_wheel(wheel_dir)
    local = []
    for folder in wheels:
        folder = Path(folder)
        if not folder.is_dir():
            raise ExecutorError(f"--wheels {folder}: not a folder", hint="point it at a folder of .whl files")
        for wheel in sorted(folder.glob("*.whl")):
            if not (wheel_dir / wheel.name).exists():
                _link_or_copy(wheel, wheel_dir / wheel.name)
                local.append(wheel.name)
    certs = ctx / "certs"
    certs.mkdir(exist_ok=True)
    ca = ca_bundle()
    if ca is not None:
        shutil.copyfile(ca, certs / "ca-certificates.crt")
    else:
        (certs / "ca-certificates.crt").write_bytes(b"")
    if bundle is not None:
        shutil.copytree(bundle, ctx / "bundle", symlinks=False)
    else:
        (ctx / "bundle").mkdir(exist_ok=True)  # the bare inference image: an empty /bundle
    return {"package_wheel": package_wheel.name, "local_wheels": ", ".join(local) or "none"}


def build_image(
    client,
    context: Path,
    tag: str,
    *,
    buildargs: Mapping[str, str] | None = None,
    platform: str | None = None,
    labels: Mapping[str, str] | None = None,
    sink: Sink = print,
    host: str | None = None,
) -> str:
    """Build ``context`` into ``tag`` on ``client``'s engine, streaming the output to ``sink``.

    Builds with the host network (pip must resolve names; the engine runs without a bridge)
    and prunes our dangling builder-stage images afterwards. Returns the image id. A failing
    step raises :class:`ExecutorError` with its last output lines.
    """
    base = (buildargs or {}).get("BASE")
    tail: collections.deque[str] = collections.deque(maxlen=25)
    error: str | None = None
    pending = ""
    with docker_errors(host, f"building {tag}"):
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=dict(buildargs or {}),
            network_mode="host",
            platform=platform,
            labels=dict(labels or {}),
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                pending += chunk["stream"]
                *lines, pending = pending.split("\n")
                for line in lines:
                    line = line.rstrip("\r")
                    if line.strip():
                        tail.append(line)
                        sink(line)
            if "error" in chunk:
                error = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
        if pending.strip():
            tail.append(pending)
            sink(pending)
    _prune_builders(client, host)
    if error is not None:
        hint = "read the failing step's output above"
        if base and find_image(client, base, host) is None:
            hint = (
                f"the base image {base!r} is not on {host_label(host)} and could not be pulled; "
                "pull it, or build the offline one with '.ci/docker.sh base' and pass "
                "--base tinymlaas-base:bookworm"
            )
        last = "\n".join(tail)
        raise ExecutorError(f"building {tag} on {host_label(host)} failed: {error}\n{last}", hint=hint)
    with docker_errors(host, f"inspecting the new image {tag}"):
        return client.images.get(tag).id


def _prune_builders(client, host: str | None) -> None:
    # The builder stage of a two-stage build stays behind as an untagged image. Only ours go:
    # the label filter keeps other people's dangling images on a shared engine alone.
    with docker_errors(host, "pruning builder images"):
        client.images.prune(filters={"dangling": True, "label": BUILDER_LABEL})


def inference_tag(bundle_dir: Path, base: str, platform: str | None = None) -> str:
    """A content-addressed tag: the same bundle, base, platform, Dockerfile and package version
    give the same tag, so an unchanged bundle is never rebuilt on a device."""
    digest = hashlib.sha256()
    for part in (__version__, base, platform or "", dockerfile_path("inference").read_text()):
        digest.update(part.encode() + b"\0")
    bundle_dir = Path(bundle_dir)
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(bundle_dir).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\0")
    return f"{INFERENCE_REPOSITORY}:{digest.hexdigest()[:16]}"


def build_inference_image(
    bundle_dir: Path,
    tag: str,
    base: str | None,
    client,
    platform: str | None = None,
    *,
    sink: Sink = print,
    host: str | None = None,
) -> tuple[str, str]:
    """Build the small inference image (ONNX Runtime + numpy + this package) with the model
    bundle at ``/bundle``. Returns ``(tag, image_id)``.

    ``bundle_dir`` is what the install stage wrote: ``manifest.json``, the model, the baseline.
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "manifest.json").is_file():
        raise ExecutorError(
            f"{bundle_dir} is not a model bundle (no manifest.json)",
            hint="pass the folder the install stage wrote",
        )
    with tempfile.TemporaryDirectory(prefix="tmc.") as tmp:
        ctx = Path(tmp)
        prepare_context(ctx, dockerfile_path("inference"), bundle=bundle_dir)
        image_id = build_image(
            client,
            ctx,
            tag,
            buildargs={"BASE": base or DEFAULT_BASE},
            platform=platform,
            labels={"org.tinymlaas.bundle": tag.rsplit(":", 1)[-1]},
            sink=sink,
            host=host,
        )
    return tag, image_id


def install_bundle(bundle_dir: Path, device: DockerDevice, sink: Sink = print) -> dict[str, str]:
    """Make the bundle runnable on a ``docker`` device: build its inference image (from the
    device's ``docker.base_image``) on the device's engine, or reuse the one with the same
    content tag. Returns ``{"image": tag, "image_digest": id}`` for the install stage's records."""
    host = resolve_host(device)
    platform = platform_for(device)
    base = device.docker.base_image
    tag = inference_tag(Path(bundle_dir), base, platform)
    client = client_for(host)
    try:
        image = find_image(client, tag, host)
        if image is not None:
            sink(f"reusing {tag} ({image.id[:19]}) on {host_label(host)}")
            return {"image": tag, "image_digest": image.id}
        started = time.perf_counter()
        sink(f"building {tag} on {host_label(host)} from {base}")
        tag, image_id = build_inference_image(Path(bundle_dir), tag, base, client, platform, sink=sink, host=host)
        sink(f"built {tag} ({image_id[:19]}) in {time.perf_counter() - started:.1f}s")
        return {"image": tag, "image_digest": image_id}
    finally:
        client.close()
