"""Docker device transport: talk to a Docker engine, build images on it, probe it.

This is the one module below the engine that talks to the Docker SDK; the engine's Docker
executor and image builder reuse its client factory, its error mapping and its image build.
Every ``docker`` exception is turned into an :class:`~tinymlaas_ci.errors.ExecutorError` here,
once, with the host and the image it concerns and what to do about it.

The ``docker`` package is imported inside functions only: ``tinymlaas validate`` must not
pay for it (and the light install does not have it).
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tinymlaas_ci import __version__
from tinymlaas_ci.errors import ExecutorError
from tinymlaas_ci.fs import sha256_file
from tinymlaas_ci.hostinfo import normalise_arch

__all__ = [
    "BUNDLE_DIR",
    "DEFAULT_BASE",
    "INFERENCE_REPOSITORY",
    "build_image",
    "build_inference_image",
    "client_for",
    "docker_errors",
    "dockerfile_path",
    "host_label",
    "image_size",
    "inference_tag",
    "install_bundle",
    "platform_for",
    "prepare_context",
    "probe",
    "resolve_host",
    "source_root",
]

DEFAULT_BASE = "python:3.11-slim"
"""Base image of our Dockerfiles when none is given (``--base``)."""
INFERENCE_REPOSITORY = "tinymlaas-inference"
"""Repository name of inference images; the tag is a content hash of what went in."""
BUNDLE_DIR = "/bundle"
"""Where an inference image holds the model bundle (``manifest.json``, model, baseline)."""
BUILDER_LABEL = "org.tinymlaas.builder"
"""Label of the builder stage of our Dockerfiles, so pruning touches only our leftovers."""

_ARCH_PLATFORMS = {
    "amd64": "linux/amd64",
    "arm64": "linux/arm64",
    "armv7": "linux/arm/v7",
    "riscv64": "linux/riscv64",
    "x86": "linux/386",
}
_CA_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)

Sink = Callable[[str], None]


def _docker():
    try:
        import docker
    except ModuleNotFoundError as exc:
        raise ExecutorError(
            "the Docker SDK for Python is not installed",
            hint="pip install 'tinymlaas-ci[docker]'",
        ) from exc
    return docker


# -- hosts and clients ---------------------------------------------------------------------------


def resolve_host(device_or_host: Any = None) -> str | None:
    """The Docker host URL of a device spec (dict or model), a host string, or None (the default).

    ``None`` means "the environment's engine": ``DOCKER_HOST``, else the local socket.
    """
    if device_or_host is None:
        return None
    if isinstance(device_or_host, str):
        return device_or_host or None
    if isinstance(device_or_host, Mapping):
        endpoint = device_or_host.get("docker") or {}
        return (endpoint.get("host") if isinstance(endpoint, Mapping) else None) or None
    endpoint = getattr(device_or_host, "docker", None)
    return getattr(endpoint, "host", None) or None


def host_label(host: str | None) -> str:
    """A host as it should appear in messages: the explicit one, DOCKER_HOST, or the default."""
    return host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _no_engine(host: str | None, exc: BaseException) -> ExecutorError:
    label = host_label(host)
    return ExecutorError(
        f"no Docker engine answers at {label}: {_short(exc)}",
        hint='start one (CI: eval "$(.ci/docker.sh start)") or set DOCKER_HOST '
        "(or the device's docker.host) to an engine that runs",
    )


def client_for(device_or_host: Any = None, *, timeout: int = 120):
    """A connected ``docker.DockerClient`` for a device spec (dict or model) or a host URL.

    The engine is pinged, so a missing engine fails here with a clear
    :class:`ExecutorError` instead of later in the middle of a run.
    """
    docker = _docker()
    import requests

    host = resolve_host(device_or_host)
    try:
        if host:
            client = docker.DockerClient(base_url=host, timeout=timeout, use_ssh_client=host.startswith("ssh://"))
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise _no_engine(host, exc) from exc
    return client


def _short(exc: BaseException, limit: int = 300) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    text = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def docker_errors(host: str | None, doing: str, *, hint: str | None = None) -> Iterator[None]:
    """Turn any Docker SDK or connection error raised inside into one :class:`ExecutorError`.

    ``doing`` says what was being done ("starting stage compile in IMAGE"); the host is added.
    """
    docker = _docker()
    import requests

    try:
        yield
    except ExecutorError:
        raise
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise _no_engine(host, exc) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ExecutorError(f"{doing} on {host_label(host)} failed: {_short(exc)}", hint=hint) from exc


def platform_for(device: Any) -> str | None:
    """The image platform of a device: ``docker.platform``, else derived from ``arch``."""
    if device is None or isinstance(device, str):
        return None
    get = device.get if isinstance(device, Mapping) else lambda k, d=None: getattr(device, k, d)
    endpoint = get("docker") or {}
    platform = endpoint.get("platform") if isinstance(endpoint, Mapping) else getattr(endpoint, "platform", None)
    if platform:
        return platform
    arch = get("arch")
    return _ARCH_PLATFORMS.get(arch) if arch else None


# -- build contexts ------------------------------------------------------------------------------


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


# -- building ------------------------------------------------------------------------------------


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
        if base and not _image_exists(client, base, host):
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


def _image_exists(client, ref: str, host: str | None) -> bool:
    docker = _docker()
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:
        raise ExecutorError(f"cannot inspect image {ref} on {host_label(host)}: {_short(exc)}") from exc
    return True


def image_size(client, ref: str, host: str | None = None) -> int:
    """Size of an image in bytes."""
    with docker_errors(host, f"inspecting {ref}"):
        return int(client.images.get(ref).attrs.get("Size") or 0)


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


def install_bundle(
    bundle_dir: Path, device: Mapping[str, Any] | Any, base: str | None, sink: Sink = print
) -> dict[str, str]:
    """Make the bundle runnable on a ``docker`` device: build its inference image on the
    device's engine, or reuse the one with the same content tag. Returns
    ``{"image": tag, "image_digest": id}`` for the install stage's records."""
    docker = _docker()
    host = resolve_host(device)
    platform = platform_for(device)
    base = base or DEFAULT_BASE
    tag = inference_tag(Path(bundle_dir), base, platform)
    client = client_for(host)
    try:
        try:
            image = client.images.get(tag)
        except docker.errors.ImageNotFound:
            image = None
        except docker.errors.APIError as exc:
            raise ExecutorError(f"cannot inspect {tag} on {host_label(host)}: {_short(exc)}") from exc
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


# -- probing -------------------------------------------------------------------------------------


def probe(host: Any = None, *, images: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Facts about a Docker device: architecture, CPU model, memory, OS, engine version and
    which of our images it already holds.

    The CPU model is read from ``/proc/cpuinfo`` through a throw-away container when an image
    is available (the engine API does not report it); ``None`` otherwise.
    """
    host = resolve_host(host)
    if images is None:
        images = (f"tinymlaas-stage:{__version__}", "tinymlaas-base:bookworm")
    client = client_for(host)
    try:
        with docker_errors(host, "asking the engine for its info"):
            info = client.info()
            version = client.version()
        present = {}
        for ref in images:
            present[ref] = _image_exists(client, ref, host)
        facts: dict[str, Any] = {
            "host": host_label(host),
            "arch": normalise_arch(info.get("Architecture") or version.get("Arch")),
            "os": info.get("OperatingSystem"),
            "kernel": info.get("KernelVersion"),
            "cpus": info.get("NCPU"),
            "memory_mb": int(info.get("MemTotal") or 0) // (1024 * 1024),
            "engine_version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "cgroup_version": info.get("CgroupVersion"),
            "images": present,
            "cpu_model": None,
        }
        runner = next((ref for ref, ok in present.items() if ok), None)
        if runner is not None:
            facts["cpu_model"] = _cpu_model(client, runner)
        return facts
    finally:
        client.close()


def _cpu_model(client, image: str) -> str | None:
    docker = _docker()
    try:
        out = client.containers.run(
            image,
            [
                "sh",
                "-c",
                "grep -m1 -E '^(model name|Model|Hardware|cpu model)' /proc/cpuinfo || true",
            ],
            remove=True,
            network_mode="none",
            user="65534:65534",
            read_only=True,
        )
    except docker.errors.DockerException:
        return None  # a fact we can live without; the probe must not fail on it
    text = out.decode("utf-8", "replace").strip()
    return text.split(":", 1)[1].strip() if ":" in text else (text or None)
