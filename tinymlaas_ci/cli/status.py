"""``tinymlaas status``: each run volume's stages in pipeline order, and a run state that agrees
with them.

A stage still marked ``running`` whose runner process is gone, one that ended by SIGINT or
SIGTERM (a cancelled job), or one the runner marked failed when Ctrl-C stopped it (no exit code,
no ``error.json``) is ``interrupted``. The run's state comes from its stages
first: a run with a failed, interrupted or running stage is never shown as ``succeeded`` because
an older ``result.json`` from an earlier attempt is still in the volume.
"""

from __future__ import annotations

import fnmatch
import json
import signal
from pathlib import Path
from typing import Any

from tinymlaas_ci.cli.common import repo_root, work_dir
from tinymlaas_ci.hostinfo import process_alive

__all__ = ["BUILTIN_ORDER", "cmd_status", "run_state", "stage_rows"]

BUILTIN_ORDER = ("fetch", "compile", "install", "infer")
_INTERRUPT_CODES = {-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


def _order(run_dir: Path, names: list[str], pipeline_order: dict[str, list[str]], run_id: str) -> list[str]:
    """The pipeline's order: from the plan when the specs load, else the order the last result
    recorded, else the built-in stages first; stages it does not know go last by name."""
    known = pipeline_order.get(run_id)
    if not known:
        try:
            recorded = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
            known = [s["name"] for s in recorded.get("stages") or [] if isinstance(s, dict) and "name" in s]
        except (OSError, ValueError, TypeError, KeyError):
            known = []
    known = known or list(BUILTIN_ORDER)
    rank = {name: i for i, name in enumerate(known)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def stage_rows(volume, run_dir: Path, pipeline_order: dict[str, list[str]], run_id: str) -> list[dict[str, Any]]:
    """One row per stage of the volume (those in the pipeline not started yet are ``pending``)."""
    present = [d.name for d in run_dir.iterdir() if (d / "status.json").exists()]
    planned = pipeline_order.get(run_id, [])
    names = _order(run_dir, sorted(set(present) | set(planned)), pipeline_order, run_id)
    rows = []
    for name in names:
        if name not in present:
            rows.append({"stage": name, "status": "pending", "duration_s": None, "started_at": None, "cache_key": None})
            continue
        st = volume.status(name)
        state = st.status
        if state == "running" and st.pid and not process_alive(st.pid):
            state = "interrupted"  # its runner died (Ctrl-C, crash or kill -9); the next run redoes it
        elif state == "failed" and (
            st.returncode in _INTERRUPT_CODES
            # Ctrl-C in the runner: the stage was marked failed with no exit code and no error.json.
            or (st.returncode is None and not (run_dir / name / "error.json").exists())
        ):
            state = "interrupted"
        rows.append(
            {
                "stage": st.stage,
                "status": state,
                "duration_s": st.duration_s,
                "started_at": st.started_at,
                "cache_key": st.cache_key,
            }
        )
    return rows


def run_state(stages: list[dict[str, Any]], result_status: str | None) -> str | None:
    """The run's state as its stages say it: ``running``, ``interrupted`` or ``failed`` when a
    stage is; else the recorded result's status when every stage finished; else ``incomplete``."""
    states = [s["status"] for s in stages]
    for state in ("running", "interrupted", "failed"):
        if state in states:
            return state
    if states and all(s == "generated" for s in states):
        return result_status or "incomplete"
    return "incomplete" if states else result_status


def _pipeline_orders(args) -> dict[str, list[str]]:
    """run id -> stage names in pipeline order, from the specs when they load (never fatal)."""
    try:
        from tinymlaas_ci.plan import plan
        from tinymlaas_ci.spec.repo import load_repo

        repo = load_repo(repo_root(args), results=False)
        if repo.problems:
            repo = _valid_only(repo)
        return {r.id: [s.name for s in r.stages] for r in plan(repo).runs}
    except Exception:  # status must work even when the specs do not
        return {}


def _valid_only(repo):
    from dataclasses import replace

    files = []
    for rf in repo.run_files:
        files.append(
            replace(
                rf, runs=[r for r in rf.runs if r.spec.device in repo.devices and r.spec.pipeline in repo.pipelines]
            )
        )
    return replace(repo, run_files=files)


def cmd_status(args) -> int:
    from tinymlaas_ci.engine.volume import RunVolume

    work = work_dir(args)
    orders = _pipeline_orders(args) if work.is_dir() else {}
    rows = []
    if work.is_dir():
        # Dot folders are the engine's own (the shared stage cache), not projects.
        for project in sorted(p for p in work.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for run in sorted(p for p in project.iterdir() if p.is_dir()):
                run_id = f"{project.name}/{run.name}"
                if args.runs and not any(
                    fnmatch.fnmatchcase(run_id, pat) or fnmatch.fnmatchcase(run.name, pat) or project.name == pat
                    for pat in args.runs
                ):
                    continue
                volume = RunVolume(work, project.name, run.name)
                stages = stage_rows(volume, run, orders, run_id)
                result = volume.read_json(".", "result.json") if (run / "result.json").exists() else None
                recorded = result.get("status") if isinstance(result, dict) else None
                rows.append({"run": run_id, "stages": stages, "result": run_state(stages, recorded)})
    if args.format == "json":
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"no run volumes under {work}" + (" matching " + " ".join(args.runs) if args.runs else ""))
        return 0
    width = max(len(r["run"]) for r in rows)
    for r in rows:
        cells = []
        for s in r["stages"]:
            took = f" {s['duration_s']:.1f}s" if s["duration_s"] is not None else ""
            cells.append(f"{s['stage']}:{s['status']}{took}")
        print(f"{r['run'].ljust(width)}  {(r['result'] or '-'):<12}  {'  '.join(cells)}")
    return 0
