"""The Docker executor: each stage in a fresh, locked-down container.

The sandbox (DESIGN section 3) is what makes it safe to unpickle an uploaded model:

* no network (``network_mode="none"``) unless the stage asks for it (fetch);
* a read-only root filesystem, with a 512 MB tmpfs at ``/tmp`` (also ``HOME``);
* every capability dropped and ``no-new-privileges``;
* a non-root user (1000:1000, or the caller's uid:gid when the runner is not root);
* memory (no extra swap) and CPU limits, and a bound on the number of processes;
* the run volume at ``/run`` read-only, with only the stage's own folder ``/run/<stage>``
  mounted writable over it, and the repository at ``/repo`` (read-only); earlier stages'
  folders also belong to the runner, not to the sandbox user;
* the evaluation data hidden from every stage but install and infer (``StageCall.withheld``):
  an empty read-only file over each withheld file, an empty read-only tmpfs over each withheld
  folder, in the run volume and in the repository (the run's dataset upload);
* the container removed when the runner dies for any reason, ``kill -9`` included, by a small
  reaper process with a parent-death signal (:mod:`tinymlaas_ci.engine.reaper`).

Bind mounts name paths on the engine's machine: the volume and the repository must be
visible there, which they are for the local engine and for a runner that sits next to its
device's engine.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tinymlaas_ci.devices.docker_client import client_for, docker_errors, host_label, require_image
from tinymlaas_ci.engine.executor import ExecOutcome, LineSink, StageCall, builtin_argv
from tinymlaas_ci.engine.images import STAGE_IMAGE
from tinymlaas_ci.errors import ExecutorError
from tinymlaas_ci.fs import is_within
from tinymlaas_ci.stages.contract import error_record, write_error

__all__ = ["REPO_MOUNT", "SANDBOX_UID", "VOLUME_MOUNT", "DockerExecutor", "oom_error"]

SANDBOX_UID = 1000
"""uid and gid of stages when the runner runs as root."""
VOLUME_MOUNT = "/run"
REPO_MOUNT = "/repo"
TMPFS_SIZE = "512m"
WITHHELD_DIR = ".withheld"
"""Folder of the run volume holding the empty files mounted over withheld files."""
PIDS_LIMIT = 4096


def oom_error(call: StageCall, host: str | None = None) -> ExecutorError:
    """The error for a stage the kernel killed for exceeding its memory limit."""
    limit = f"{call.memory_mb} MiB" if call.memory_mb else "the engine's memory"
    where = f" on {host_label(host)}" if host or call.docker_host else ""
    return ExecutorError(
        f"stage {call.stage!r} of {call.run_id} was killed: out of memory (limit {limit}){where}",
        hint="raise resources.memory_mb in the run spec, or memory_mb in the device file",
    )


class DockerExecutor:
    """Runs each stage in a container on a Docker engine (see the module docstring).

    ``default_image`` is used for stages without an image of their own; ``docker_host`` is
    the engine unless a call names another (``StageCall.docker_host``, a ``docker`` device).
    """

    name = "docker"

    def __init__(
        self,
        *,
        default_image: str = STAGE_IMAGE,
        docker_host: str | None = None,
        timeout: int = 120,
        client_factory: Callable[..., object] = client_for,
    ) -> None:
        self.default_image = default_image
        self.docker_host = docker_host
        self.timeout = timeout
        self._client_factory = client_factory
        self._clients: dict[str | None, object] = {}

    # -- public --------------------------------------------------------------------------------

    def run(self, call: StageCall, volume: Path, repo: Path, sink: LineSink) -> ExecOutcome:
        """Run ``call`` in a container and return its exit code; see :class:`Executor`."""
        host = call.docker_host or self.docker_host
        client = self._client(host)
        image_ref = call.image or self.default_image
        image = self._image(client, image_ref, host, call)
        volume = Path(volume).resolve()
        repo = Path(repo).resolve()
        uid, gid = self.sandbox_user()
        self._prepare_volume(volume, call.stage, uid, gid)
        self._check_repo_readable(repo, uid)

        # Built-in stages use the image's `python`; a user's command runs exactly as written
        # (its interpreter is the image's business, not the runner's).
        argv = builtin_argv(call, VOLUME_MOUNT, python="python" if call.builtin else None)
        env = dict(call.env)
        env.update({"TINYMLAAS_SANDBOXED": "1", "HOME": "/tmp", "PYTHONUNBUFFERED": "1"})
        kwargs: dict = {
            "image": image.id,  # the exact image we inspected, even if the tag moves meanwhile
            "command": argv,
            "user": f"{uid}:{gid}",
            "environment": env,
            # The same working directory as the local executor (the repository), so a user
            # stage's relative paths mean the same under both executors.
            "working_dir": REPO_MOUNT,
            "volumes": self.mounts(volume, repo, call.stage) | self.hiding_mounts(volume, repo, call),
            "network_mode": "host" if call.network else "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"size={TMPFS_SIZE}"} | self.hiding_tmpfs(volume, repo, call),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": PIDS_LIMIT,
            "labels": {"org.tinymlaas.run": call.run_id, "org.tinymlaas.stage": call.stage},
            "detach": True,
        }
        if call.memory_mb:
            # memswap == mem: no swap on top, so the limit is the limit and an overrun is an OOM kill.
            kwargs["mem_limit"] = f"{call.memory_mb}m"
            kwargs["memswap_limit"] = f"{call.memory_mb}m"
        if call.cpus:
            kwargs["nano_cpus"] = int(call.cpus * 1_000_000_000)

        where = f"stage {call.stage!r} of {call.run_id} in {image_ref}"
        container = reaper = None
        try:
            with docker_errors(host, f"creating the container for {where}"):
                container = client.containers.create(**kwargs)
            reaper = self._start_reaper(container.id, host)
            with docker_errors(host, f"starting {where}"):
                # Attach before starting: a logs(follow=True) stream can end before the last
                # line without a newline arrives; the attached stream carries every byte.
                output = container.attach(stream=True, logs=True, stdout=True, stderr=True)
                container.start()
            with docker_errors(host, f"reading the output of {where}"):
                self._stream(output, sink)
            with docker_errors(host, f"waiting for {where}"):
                status = container.wait(timeout=None)
                container.reload()
            returncode = int(status.get("StatusCode", 1))
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        finally:
            if container is not None:
                self._remove(container)
            if reaper is not None:
                reaper.kill()
                reaper.wait()
        if oom:
            # The stage could not write error.json itself: the kernel killed it. This is the one
            # place an OOM kill is detected and reported; the engine keeps this error.json.
            error = oom_error(call, host)
            sink(f"error: {error}")
            write_error(volume / call.stage, error_record(call.stage, error, type_="OutOfMemory"))
        return ExecOutcome(
            returncode=returncode,
            executor=self.name,
            image=image_ref,
            image_digest=image.id,
            oom_killed=oom,
        )

    def identity(self, call: StageCall) -> str:
        """What the stage's cache key records about the code that runs it: the image id."""
        host = call.docker_host or self.docker_host
        client = self._client(host)
        image_ref = call.image or self.default_image
        return "docker:" + self._image(client, image_ref, host, call).id

    @staticmethod
    def mounts(volume: Path, repo: Path, stage: str) -> dict[str, dict[str, str]]:
        """The bind mounts of a stage: the run volume read-only at ``/run`` with only the
        stage's own folder writable on top of it, and the repository read-only at ``/repo``.
        So no stage, whatever code a model runs in it, can change an earlier stage's outputs
        (the dataset it will be graded on, a recorded digest), even when it runs as the uid that
        owns them."""
        stage_dir = (volume / stage).resolve()
        if stage_dir.parent != volume.resolve():
            raise ExecutorError(f"stage name {stage!r} is not a folder of the run volume")
        return {
            str(volume): {"bind": VOLUME_MOUNT, "mode": "ro"},
            str(stage_dir): {"bind": f"{VOLUME_MOUNT}/{stage}", "mode": "rw"},
            str(repo): {"bind": REPO_MOUNT, "mode": "ro"},
        }

    @staticmethod
    def _hidden(volume: Path, repo: Path, call: StageCall) -> list[tuple[Path, str]]:
        # (path on the engine's machine, path in the container) of everything the stage may not read.
        out = []
        for root, mount, rels in ((volume, VOLUME_MOUNT, call.withheld), (repo, REPO_MOUNT, call.withheld_repo)):
            for rel in rels:
                path = root / rel
                if not is_within(path, root):
                    raise ExecutorError(f"withheld path {rel!r} is not inside {root}")
                if path.exists():
                    out.append((path, f"{mount}/{PurePosixPath(rel).as_posix()}"))
        return out

    def hiding_mounts(self, volume: Path, repo: Path, call: StageCall) -> dict[str, dict[str, str]]:
        """Bind mounts that hide the withheld files (:attr:`StageCall.withheld`): an empty,
        read-only file of the run volume is mounted over each, so the stage reads nothing there.
        (Folders are hidden by :meth:`hiding_tmpfs`.)"""
        files = [target for path, target in self._hidden(volume, repo, call) if not path.is_dir()]
        mounts = {}
        for i, target in enumerate(files):
            # One placeholder per file: a bind mount's source is its key.
            empty = volume / WITHHELD_DIR / f"{i}"
            if not empty.exists():
                empty.parent.mkdir(exist_ok=True)
                empty.touch()
                os.chmod(empty, 0o444)
            mounts[str(empty)] = {"bind": target, "mode": "ro"}
        return mounts

    def hiding_tmpfs(self, volume: Path, repo: Path, call: StageCall) -> dict[str, str]:
        """An empty, read-only tmpfs over each withheld folder."""
        return {target: "ro,size=4k,mode=0555" for path, target in self._hidden(volume, repo, call) if path.is_dir()}

    @staticmethod
    def sandbox_user() -> tuple[int, int]:
        """The uid:gid stages run as: 1000:1000 for a root runner, else the runner's own."""
        if os.getuid() == 0:
            return SANDBOX_UID, SANDBOX_UID
        return os.getuid(), os.getgid()

    def close(self) -> None:
        """Close the engine connections."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- internals -----------------------------------------------------------------------------

    def _client(self, host: str | None):
        if host not in self._clients:
            self._clients[host] = self._client_factory(host, timeout=self.timeout)
        return self._clients[host]

    @staticmethod
    def _image(client, ref: str, host: str | None, call: StageCall):
        ours = call.image is None or ref.startswith(("tinymlaas-stage:", "tinymlaas-inference:", "tinymlaas-user-"))
        return require_image(
            client,
            ref,
            host,
            needed_by=f"stage {call.stage!r} of {call.run_id}",
            hint=None if ours else f"build or pull {ref} on that engine, or fix the stage's image in the pipeline",
        )

    @staticmethod
    def _check_repo_readable(repo: Path, uid: int) -> None:
        """The repository is mounted read-only as is; we never change its permissions, so say
        plainly when the sandbox user cannot read it (e.g. a checkout in a 0700 folder)."""
        if uid == os.getuid():
            return
        mode = repo.stat().st_mode
        if not (mode & stat.S_IROTH and mode & stat.S_IXOTH):
            raise ExecutorError(
                f"the repository {repo} is not readable by the sandbox user (uid {uid})",
                hint=f"let others read it: chmod o+rX {repo} (and its files), or check it out elsewhere",
            )

    @staticmethod
    def _prepare_volume(volume: Path, stage: str, uid: int, gid: int) -> None:
        """Let the sandbox user write its stage folder and read the rest of the volume."""
        stage_dir = volume / stage
        stage_dir.mkdir(parents=True, exist_ok=True)
        if os.getuid() != 0:
            return  # the sandbox user is the caller: it owns what it created
        for root, _dirs, files in os.walk(volume):  # symlinked folders are not entered
            folder = Path(root)
            inside = folder == stage_dir or stage_dir in folder.parents
            for path in (folder, *(folder / name for name in files)):
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    continue
                if inside:
                    if (st.st_uid, st.st_gid) != (uid, gid):
                        os.lchown(path, uid, gid)
                    continue
                # Outside its own folder the sandbox user owns nothing: a folder an earlier stage
                # wrote as that user goes back to the runner.
                if st.st_uid == uid or st.st_gid == gid:
                    os.lchown(path, os.getuid(), os.getgid())
                # Readable (and searchable, for folders) by the sandbox user; never writable.
                want = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
                mode = stat.S_IMODE(st.st_mode)
                new_mode = (mode | want) & ~(stat.S_IWGRP | stat.S_IWOTH)
                if new_mode != mode:
                    os.chmod(path, new_mode)

    @staticmethod
    def _stream(output, sink: LineSink) -> None:
        # Output arrives in chunks that need not end at line ends; keep the partial line.
        pending = b""
        for chunk in output:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                sink(line.rstrip(b"\r").decode("utf-8", "replace"))
        if pending:
            sink(pending.rstrip(b"\r").decode("utf-8", "replace"))

    @staticmethod
    def _start_reaper(container_id: str, host: str | None) -> subprocess.Popen:
        """The container's reaper (:mod:`tinymlaas_ci.engine.reaper`): it removes the container
        if this process dies before it could (``kill -9`` included). Returns once the reaper's
        parent-death signal is set."""
        from tinymlaas_ci.engine.reaper import READY

        proc = subprocess.Popen(
            [sys.executable, "-m", "tinymlaas_ci.engine.reaper", str(os.getpid()), container_id, host or ""],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C is the runner's to handle; it removes the container itself
        )
        line = proc.stdout.readline().strip() if proc.stdout else ""
        if line != READY:
            proc.kill()
            proc.wait()
            raise ExecutorError(f"could not start the reaper of container {container_id[:12]}: {line or 'no answer'}")
        return proc

    @staticmethod
    def _remove(container) -> None:
        import docker

        # Always, also on Ctrl-C: a stage container is never reused, and a leftover one
        # would keep its mounts (and the volume) busy.
        for attempt in range(3):
            try:
                container.remove(force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if "removal of container" in str(exc) and "in progress" in str(exc):
                    return
                time.sleep(0.2 * (attempt + 1))
            except Exception:
                return
