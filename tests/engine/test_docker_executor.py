"""The Docker executor against a real engine: the sandbox, the stage contract, the errors.

Most tests run a tiny user stage (``python3 -c ...``) on the small base image, so they do not
need the big stage image; the ``slow`` ones build the stage and inference images for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # so that `tests.docker_support` imports however pytest is started
    sys.path.insert(0, str(_ROOT))

from tests.docker_support import base_image, docker_client, docker_engine, leftover_containers  # noqa: F401
from tinymlaas_ci.engine.executor import StageCall
from tinymlaas_ci.errors import ExecutorError
from tinymlaas_ci.spec.models import DockerDevice

docker_sdk = pytest.importorskip("docker")

from tinymlaas_ci.engine.docker import DockerExecutor


def _call(stage: str, script: str, *, image: str | None, run_id: str | None = None, **kw) -> StageCall:
    """A user stage running ``script`` with python3; ``sys.argv[1]`` is the stage folder."""
    return StageCall(
        run_id=run_id or f"test/{uuid.uuid4().hex[:12]}",
        stage=stage,
        builtin=None,
        command=("python3", "-c", textwrap.dedent(script), "{run}/" + stage),
        image=image,
        **kw,
    )


@pytest.fixture
def volume(tmp_path) -> Path:
    path = tmp_path / "volume"
    path.mkdir()
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "README.txt").write_text("the repository\n")
    return path


@pytest.fixture
def executor():
    ex = DockerExecutor()
    yield ex
    ex.close()


PROBE = r"""
import json, os, socket, sys

stage_dir = sys.argv[1]
facts = {"argv1": stage_dir, "uid": os.getuid(), "gid": os.getgid()}
facts["stage_json"] = json.load(open(os.path.join(stage_dir, "stage.json")))

def can_write(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        os.remove(path)
        return True
    except OSError:
        return False

try:
    socket.create_connection(("1.1.1.1", 53), timeout=2).close()
    facts["connect"] = "connected"
except OSError as exc:
    facts["connect"] = repr(exc)
facts["interfaces"] = sorted(os.listdir("/sys/class/net"))
facts["write_root"] = can_write("/probe")
facts["write_usr"] = can_write("/usr/probe")
facts["write_tmp"] = can_write("/tmp/probe")
facts["write_stage"] = can_write(os.path.join(stage_dir, "probe"))
facts["write_other_stage"] = can_write("/run/other/probe")
facts["read_other_stage"] = open("/run/other/private.txt").read()
facts["write_repo"] = can_write("/repo/probe")
facts["read_repo"] = open("/repo/README.txt").read()

for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    if os.path.exists(path):
        facts["memory_limit"] = open(path).read().strip()
        break
for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
    if os.path.exists(path):
        facts["cpu_limit"] = open(path).read().strip()
        break
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
facts["cap_eff"] = status["CapEff"].strip()
facts["no_new_privs"] = status.get("NoNewPrivs", "").strip()
facts["env"] = {k: os.environ.get(k) for k in ("TINYMLAAS_SANDBOXED", "HOME", "MY_SETTING")}
facts["cwd"] = os.getcwd()

json.dump({"schema": 1, "stage": "probe", "facts": facts}, open(os.path.join(stage_dir, "outputs.json"), "w"))
print("probe done")
"""


@pytest.fixture(scope="module")
def sandbox_facts(docker_engine, base_image, tmp_path_factory):
    """What a stage sees from inside the sandbox, gathered by one real container."""
    root = tmp_path_factory.mktemp("sandbox")
    volume, repo = root / "volume", root / "repo"
    (volume / "probe").mkdir(parents=True)
    (volume / "probe" / "stage.json").write_text(json.dumps({"schema": 1, "stage": "probe", "params": {"x": 1}}))
    (volume / "other").mkdir()
    private = volume / "other" / "private.txt"
    private.write_text("from an earlier stage\n")
    private.chmod(0o600)  # as a stage running as another user might leave it
    repo.mkdir()
    (repo / "README.txt").write_text("the repository\n")
    call = _call("probe", PROBE, image=base_image, memory_mb=256, cpus=1.5, env={"MY_SETTING": "on"})
    lines: list[str] = []
    executor = DockerExecutor()
    outcome = executor.run(call, volume, repo, lines.append)
    executor.close()
    assert outcome.returncode == 0, "\n".join(lines)
    outputs = json.loads((volume / "probe" / "outputs.json").read_text())
    return {
        "outcome": outcome,
        "lines": lines,
        "facts": outputs["facts"],
        "call": call,
        "engine": docker_engine,
    }


pytestmark = pytest.mark.docker


def test_stage_reads_stage_json_and_writes_outputs(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert facts["argv1"] == "/run/probe"  # {run} became the mount point
    assert facts["stage_json"]["params"] == {"x": 1}
    assert facts["cwd"] == "/repo"  # as under the local executor: relative paths mean the same
    assert sandbox_facts["lines"] == ["probe done"]


def test_outcome_records_executor_and_image_digest(sandbox_facts, docker_client, base_image):
    outcome = sandbox_facts["outcome"]
    assert outcome.executor == "docker"
    assert outcome.image == base_image
    assert outcome.image_digest == docker_client.images.get(base_image).id
    assert outcome.image_digest.startswith("sha256:")
    assert outcome.oom_killed is False


def test_no_network(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert facts["interfaces"] == ["lo"]
    assert facts["connect"] != "connected"


def test_root_filesystem_is_read_only_but_tmp_is_writable(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert facts["write_root"] is False
    assert facts["write_usr"] is False
    assert facts["write_tmp"] is True


def test_stage_folder_writable_rest_of_volume_readable_only(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert facts["write_stage"] is True
    assert facts["write_other_stage"] is False
    assert facts["read_other_stage"] == "from an earlier stage\n"


def test_repo_is_read_only(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert facts["read_repo"] == "the repository\n"
    assert facts["write_repo"] is False


def test_runs_as_non_root(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert facts["uid"] != 0 and facts["gid"] != 0
    expected = (1000, 1000) if os.getuid() == 0 else (os.getuid(), os.getgid())
    assert (facts["uid"], facts["gid"]) == expected


def test_capabilities_dropped_and_no_new_privileges(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert int(facts["cap_eff"], 16) == 0
    assert facts["no_new_privs"] == "1"


def test_memory_and_cpu_limits_applied(sandbox_facts):
    facts = sandbox_facts["facts"]
    assert int(facts["memory_limit"]) == 256 * 1024 * 1024
    # cgroup v2: "150000 100000" (quota period); v1: the quota alone.
    assert facts["cpu_limit"].split()[0] == "150000"


def test_environment(sandbox_facts):
    env = sandbox_facts["facts"]["env"]
    assert env == {"TINYMLAAS_SANDBOXED": "1", "HOME": "/tmp", "MY_SETTING": "on"}


def test_container_removed_after_success(sandbox_facts, docker_client):
    assert leftover_containers(docker_client, sandbox_facts["call"].run_id) == []


def test_failing_stage_returns_its_exit_code_and_is_removed(executor, volume, repo, base_image, docker_client):
    call = _call("boom", "import sys; print('about to fail'); sys.exit(3)", image=base_image)
    lines: list[str] = []
    outcome = executor.run(call, volume, repo, lines.append)
    assert outcome.returncode == 3
    assert outcome.oom_killed is False
    assert lines == ["about to fail"]
    assert not (volume / "boom" / "outputs.json").exists()
    assert leftover_containers(docker_client, call.run_id) == []


def test_lines_streamed_in_order_including_a_last_partial_line(executor, volume, repo, base_image):
    script = """
    import sys, time
    for i in range(300):
        print(f"line {i}", flush=True)
        if i % 100 == 0:
            time.sleep(0.05)
    sys.stdout.write("no newline at the end")
    """
    lines: list[str] = []
    outcome = executor.run(_call("chatty", script, image=base_image), volume, repo, lines.append)
    assert outcome.returncode == 0
    assert lines == [f"line {i}" for i in range(300)] + ["no newline at the end"]


def test_quiet_stage_outlives_the_client_timeout(volume, repo, base_image):
    # Reading the logs and waiting must not time out on a stage that prints nothing for a while.
    executor = DockerExecutor(timeout=2)
    try:
        call = _call("quiet", "import time; time.sleep(4); print('awake')", image=base_image)
        lines: list[str] = []
        assert executor.run(call, volume, repo, lines.append).returncode == 0
        assert lines == ["awake"]
    finally:
        executor.close()


def test_out_of_memory_is_reported(executor, volume, repo, base_image, docker_client):
    script = """
    chunks = []
    print("allocating", flush=True)
    for _ in range(64):
        chunks.append(bytearray(16 * 1024 * 1024))
    print("should not get here")
    """
    call = _call("hungry", script, image=base_image, memory_mb=64)
    lines: list[str] = []
    outcome = executor.run(call, volume, repo, lines.append)
    assert outcome.returncode == 137
    assert outcome.oom_killed is True
    assert "should not get here" not in lines
    assert "out of memory (limit 64 MiB)" in lines[-1]
    error = json.loads((volume / "hungry" / "error.json").read_text())
    assert error["type"] == "OutOfMemory"
    assert "resources.memory_mb" in error["hint"] and "memory_mb in the device file" in error["hint"]
    assert leftover_containers(docker_client, call.run_id) == []


def test_interrupt_removes_the_container(executor, volume, repo, base_image, docker_client):
    call = _call("interrupted", "import time; print('started', flush=True); time.sleep(60)", image=base_image)

    def sink(line: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the stage runs

    with pytest.raises(KeyboardInterrupt):
        executor.run(call, volume, repo, sink)
    assert leftover_containers(docker_client, call.run_id) == []


RUNNER = """
import sys, textwrap
from pathlib import Path
from tinymlaas_ci.engine.docker import DockerExecutor
from tinymlaas_ci.engine.executor import StageCall

run_id, image, volume, repo = sys.argv[1:5]
call = StageCall(run_id=run_id, stage="sleeper", builtin=None, image=image,
                 command=("python3", "-c", "import time; print('started', flush=True); time.sleep(300)"))
DockerExecutor().run(call, Path(volume), Path(repo), lambda line: print(line, flush=True))
"""


def test_kill_9_of_the_runner_removes_its_stage_container(volume, repo, base_image, docker_client):
    # The Docker engine, not the runner, is the container's parent: the reaper the executor
    # starts next to each container removes it when the runner dies, kill -9 included.
    run_id = f"test/{uuid.uuid4().hex[:12]}"
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, run_id, base_image, str(volume), str(repo)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout.readline().strip() == "started"
        assert len(leftover_containers(docker_client, run_id)) == 1
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
    deadline = time.monotonic() + 30
    while leftover_containers(docker_client, run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover_containers(docker_client, run_id) == [], "the stage container outlived its runner"


def test_network_when_the_stage_asks_for_it(executor, volume, repo, base_image):
    script = "import os; print(len(os.listdir('/sys/class/net')) > 1)"
    lines: list[str] = []
    call = _call("online", script, image=base_image, network=True)
    assert executor.run(call, volume, repo, lines.append).returncode == 0
    assert lines == ["True"]


def test_missing_image_has_a_hint(docker_engine, volume, repo):
    executor = DockerExecutor(default_image="tinymlaas-stage:does-not-exist")
    call = StageCall(run_id="test/missing", stage="compile", builtin="compile", command=None, image=None)
    with pytest.raises(ExecutorError, match=r"image tinymlaas-stage:does-not-exist not found on ") as info:
        executor.run(call, volume, repo, print)
    assert "tinymlaas images build" in info.value.hint
    executor.close()


def test_missing_user_image_names_the_stage(executor, docker_engine, volume, repo):
    call = _call("mine", "print(1)", image="example.invalid/my-stage:1")
    with pytest.raises(ExecutorError, match=r"image example.invalid/my-stage:1 not found .*stage 'mine'"):
        executor.run(call, volume, repo, print)


@pytest.mark.parametrize("host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:9"])
def test_unreachable_engine(host, volume, repo):
    executor = DockerExecutor(timeout=5)
    call = _call("any", "print(1)", image="tinymlaas-base:bookworm", docker_host=host)
    with pytest.raises(ExecutorError, match=f"no Docker engine answers at {host}") as info:
        executor.run(call, volume, repo, print)
    assert "DOCKER_HOST" in info.value.hint


def test_unreachable_default_engine_names_docker_host(monkeypatch, volume, repo):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/other.sock")
    with pytest.raises(ExecutorError, match="no Docker engine answers at unix:///nonexistent/other.sock"):
        DockerExecutor().run(_call("any", "print(1)", image="x"), volume, repo, print)


def test_call_selects_another_engine(docker_engine, base_image, volume, repo, monkeypatch):
    # The default engine is broken; the call's docker_host (a docker device) is the real one.
    real = docker_engine.host
    if real is None:
        pytest.skip("needs DOCKER_HOST set to name the engine explicitly")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/other.sock")
    executor = DockerExecutor()
    lines: list[str] = []
    outcome = executor.run(
        _call("remote", "print('here')", image=base_image, docker_host=real),
        volume,
        repo,
        lines.append,
    )
    assert (outcome.returncode, lines) == (0, ["here"])
    executor.close()


def test_probe_reports_the_engine(docker_engine, base_image):
    from tinymlaas_ci.devices.docker_client import probe

    facts = probe(docker_engine.host, images=(base_image, "tinymlaas-stage:does-not-exist"))
    assert facts["arch"] in ("amd64", "arm64", "armv7", "riscv64", "x86")
    assert facts["memory_mb"] > 0 and facts["cpus"] >= 1
    assert facts["engine_version"]
    assert facts["images"] == {base_image: True, "tinymlaas-stage:does-not-exist": False}
    assert facts["cpu_model"]


# -- images (slow: real builds) ------------------------------------------------------------------


@pytest.mark.slow
def test_build_stage_image_and_import_the_ml_stack(docker_engine, base_image, volume, repo):
    from tinymlaas_ci.engine.images import STAGE_IMAGE, build_images, pip_find_links

    lines: list[str] = []
    built = build_images(
        only="stage",
        base=base_image,
        wheels=pip_find_links(),
        docker_host=docker_engine.host,
        sink=lines.append,
    )
    assert [b.tag for b in built] == [STAGE_IMAGE]
    assert built[0].size_bytes > 100_000_000
    # The dangling builder stage was pruned.
    assert docker_engine.client.images.list(filters={"dangling": True, "label": "org.tinymlaas.builder"}) == []

    executor = DockerExecutor()  # the default image is the one just built
    call = StageCall(
        run_id="test/stage-image",
        stage="imports",
        builtin=None,
        command=(
            "python",
            "-c",
            "import tinymlaas_ci, torch, onnxruntime, onnx, onnxscript; print(torch.__version__)",
        ),
        image=None,
        memory_mb=1024,
    )
    out: list[str] = []
    outcome = executor.run(call, volume, repo, out.append)
    executor.close()
    assert outcome.returncode == 0, "\n".join(out)
    assert out[-1].startswith("2.13.0")
    assert outcome.image_digest == built[0].id


@pytest.mark.slow
def test_build_inference_image_from_a_bundle_and_reuse_it(docker_engine, base_image, tmp_path):
    from tinymlaas_ci.devices.docker_build import install_bundle

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"schema": 1, "model": "model.onnx", "baseline": "baseline.json"}))
    (bundle / "model.onnx").write_bytes(os.urandom(256))  # unique content: a fresh tag
    (bundle / "baseline.json").write_text("{}")
    device = DockerDevice(
        schema=1, name="box", kind="docker", arch="amd64", docker={"host": docker_engine.host, "base_image": base_image}
    )
    client = docker_engine.client
    lines: list[str] = []
    first = install_bundle(bundle, device, lines.append)
    try:
        assert first["image"].startswith("tinymlaas-inference:")
        assert first["image_digest"] == client.images.get(first["image"]).id
        out = client.containers.run(
            first["image"],
            [
                "python",
                "-c",
                "import onnxruntime, numpy, tinymlaas_ci, os; print(sorted(os.listdir('/bundle')))",
            ],
            remove=True,
            network_mode="none",
        )
        assert out.decode().strip() == "['baseline.json', 'manifest.json', 'model.onnx']"
        again: list[str] = []
        assert install_bundle(bundle, device, again.append) == first
        assert again[0].startswith("reusing ")
    finally:
        client.images.remove(first["image"], force=True)


def test_inference_image_needs_a_manifest(docker_engine, tmp_path):
    from tinymlaas_ci.devices.docker_build import build_inference_image

    with pytest.raises(ExecutorError, match="not a model bundle"):
        build_inference_image(tmp_path, "tinymlaas-inference:x", None, docker_engine.client)
