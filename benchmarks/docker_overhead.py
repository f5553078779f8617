"""What does the Docker sandbox cost per stage?

Runs the same trivial stage (a Python one-liner that writes ``outputs.json``) N times as a
local subprocess and N times through :class:`~tinymlaas_ci.engine.docker.DockerExecutor`, and
prints the mean time per stage, the per-stage overhead of Docker in seconds, and the ratio.

    eval "$(.ci/docker.sh start)" && .ci/docker.sh base
    python benchmarks/docker_overhead.py -n 20 [--image tinymlaas-base:bookworm]

The image only needs ``python3``; the small base image keeps the number about the sandbox
(create, start, attach, wait, remove), not about importing a large stack.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinymlaas_ci.engine.executor import StageCall, builtin_argv

ONE_LINER = (
    "import json, sys; json.dump({'schema': 1, 'stage': 'trivial', 'artifacts': {}, 'metrics': {}}, "
    "open(sys.argv[1] + '/outputs.json', 'w'))"
)


def _call(i: int, image: str) -> StageCall:
    return StageCall(
        run_id=f"bench/overhead-{i}",
        stage="trivial",
        builtin=None,
        command=("python3", "-c", ONE_LINER, "{run}/trivial"),
        image=image,
        memory_mb=256,
    )


def run_local(call: StageCall, volume: Path) -> int:
    """The local executor's path: the stage as a plain subprocess of this interpreter."""
    (volume / call.stage).mkdir(parents=True, exist_ok=True)
    argv = builtin_argv(call, str(volume), python=sys.executable)
    argv[0] = sys.executable  # the runner's interpreter, as the local executor uses
    return subprocess.run(argv, check=False).returncode


def _time(fn, n: int) -> list[float]:
    times = []
    for i in range(n):
        with tempfile.TemporaryDirectory(prefix="tmbench.") as tmp:
            volume = Path(tmp)
            started = time.perf_counter()
            rc = fn(i, volume)
            times.append(time.perf_counter() - started)
            if rc != 0 or not (volume / "trivial" / "outputs.json").is_file():
                raise SystemExit(f"run {i} failed (exit {rc})")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20, help="runs per executor (default 20)")
    parser.add_argument("--image", default="tinymlaas-base:bookworm", help="image with python3")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)

    from tinymlaas_ci.engine.docker import DockerExecutor

    executor = DockerExecutor()
    repo = Path(tempfile.mkdtemp(prefix="tmbench."))
    repo.chmod(0o755)  # mounted read-only for the sandbox user, who must be able to read it
    try:
        # One warm-up each: the first container start also loads the image's layers.
        _time(lambda i, v: run_local(_call(i, args.image), v), 1)
        _time(
            lambda i, v: executor.run(_call(i, args.image), v, repo, lambda line: None).returncode,
            1,
        )
        local = _time(lambda i, v: run_local(_call(i, args.image), v), args.n)
        docker = _time(
            lambda i, v: executor.run(_call(i, args.image), v, repo, lambda line: None).returncode,
            args.n,
        )
    finally:
        executor.close()
        repo.rmdir()

    result = {
        "runs": args.n,
        "image": args.image,
        "local_mean_s": statistics.mean(local),
        "local_median_s": statistics.median(local),
        "docker_mean_s": statistics.mean(docker),
        "docker_median_s": statistics.median(docker),
        "docker_p90_s": sorted(docker)[max(0, int(0.9 * len(docker)) - 1)],
        "overhead_per_stage_s": statistics.mean(docker) - statistics.mean(local),
        "ratio": statistics.mean(docker) / statistics.mean(local),
    }
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"{args.n} runs each of a trivial stage (image {args.image})")
        print(f"  local subprocess : mean {result['local_mean_s']:.3f}s  median {result['local_median_s']:.3f}s")
        print(
            f"  docker executor  : mean {result['docker_mean_s']:.3f}s  median {result['docker_median_s']:.3f}s"
            f"  p90 {result['docker_p90_s']:.3f}s"
        )
        print(f"  overhead per stage: {result['overhead_per_stage_s']:.3f}s  (ratio {result['ratio']:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
