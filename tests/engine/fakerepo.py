"""A small repository whose pipeline is made of user stages (plain Python scripts), so the
engine can be tested for real (processes, files, locks) without any ML."""

from __future__ import annotations

import textwrap
from pathlib import Path

FAKE_STAGE = textwrap.dedent(
    '''
    """A user stage that follows the stage contract: reads stage.json, writes outputs.json."""
    import fcntl, hashlib, json, os, sys, time
    from pathlib import Path

    run, name = Path(sys.argv[1]), sys.argv[2]
    folder = run / name
    config = json.loads((folder / "stage.json").read_text())
    params = config["params"]
    started = time.time()
    print(f"{name} starting", flush=True)
    # Progress marker, so tests can kill the stage while it is running.
    (folder / "started").write_text(str(os.getpid()))
    time.sleep(float(params.get("sleep", 0)))
    fail_flag = params.get("fail_if_exists")
    if fail_flag and (Path(config["repo"]) / fail_flag).exists():
        error = {"message": f"{name} was told to fail", "hint": "remove the flag"}
        (folder / "error.json").write_text(json.dumps(error))
        print("failing on purpose", flush=True)
        sys.exit(3)
    upstream = "".join(o["artifacts"]["data"]["sha256"] for o in config["inputs"].values())
    payload = f"{name}:{config['spec']['compression']['quantization']}:{upstream}"
    (folder / "data.txt").write_text(payload)
    counter = Path(config["repo"]) / f".count-{name}"
    with open(Path(config["repo"]) / ".count.lock", "w") as lock:  # runs may be parallel (--jobs)
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
    outputs = {
        "schema": 1, "stage": name,
        "artifacts": {"data": {"path": f"{name}/data.txt", "sha256": hashlib.sha256(payload.encode()).hexdigest(),
                               "bytes": len(payload)}},
        "metrics": {"started": started, "finished": time.time()}, "records": {},
    }
    tmp = folder / ".outputs.tmp"
    tmp.write_text(json.dumps(outputs))
    os.replace(tmp, folder / "outputs.json")
    print(f"{name} done", flush=True)
    '''
)


def make_repo(root: Path, *, devices=("host",), sleep: float = 0.0, runs: dict[str, dict] | None = None) -> Path:
    """Write the fake repository; ``runs`` maps run name -> overrides (device, quantization)."""
    (root / "devices").mkdir(parents=True, exist_ok=True)
    for d in devices:
        (root / "devices" / f"{d}.yaml").write_text(f"schema: 1\nkind: local\nrunner: [self-hosted, {d}]\n")
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / "stages").mkdir(exist_ok=True)
    (root / "pipelines" / "stages" / "fake.py").write_text(FAKE_STAGE)
    stages = []
    for name, needs in (("prepare", []), ("install", ["prepare"]), ("infer", ["install"])):
        stages.append(
            f"  - name: {name}\n    command: [python, pipelines/stages/fake.py, '{{run}}', {name}]\n"
            f"    needs: {needs}\n    params: {{sleep: {sleep}, fail_if_exists: fail-{name}}}\n"
        )
    (root / "pipelines" / "fake.yaml").write_text("schema: 1\nstages:\n" + "".join(stages))
    (root / "uploads").mkdir(exist_ok=True)
    (root / "uploads" / "model.onnx").write_bytes(b"not really a model")
    (root / "uploads" / "data.zip").write_bytes(b"not really a dataset")
    (root / "runs" / "p").mkdir(parents=True, exist_ok=True)
    for name, over in (runs or {"r1": {}}).items():
        (root / "runs" / "p" / f"{name}.yaml").write_text(
            "schema: 1\n"
            "model: {upload: uploads/model.onnx}\n"
            "dataset: {upload: uploads/data.zip}\n"
            f"compression: {{quantization: {over.get('quantization', 'none')}}}\n"
            f"device: {over.get('device', devices[0])}\n"
            "pipeline: fake\n"
        )
    return root
