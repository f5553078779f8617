"""Planning: specs -> expanded runs -> stage invocations with content-addressed keys.

Pure: no file, network or process I/O. :func:`plan` takes a loaded :class:`~tinymlaas_ci.spec.repo.Repo`
and returns the same :class:`Plan` every time for the same input, so tests assert on it and the
workflows build their job matrix from its JSON form.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from tinymlaas_ci import __version__
from tinymlaas_ci.errors import UsageError
from tinymlaas_ci.fs import canonical_json
from tinymlaas_ci.results.layout import result_path
from tinymlaas_ci.spec.models import PipelineSpec, RunSpec
from tinymlaas_ci.spec.repo import COMPANIONS_SUFFIX, ExpandedRun, Repo

__all__ = [
    "PENDING",
    "PLAN_SCHEMA",
    "STAGE_INPUTS",
    "Plan",
    "PlannedRun",
    "PlannedStage",
    "plan",
    "spec_hash",
    "stage_key",
]

PLAN_SCHEMA = 1
RunStatus = Literal["new", "changed", "up-to-date", "gates-failed"]
"""``new`` (no committed result), ``changed`` (the committed result has another spec hash),
``up-to-date`` (it has this spec hash and passed its gates) or ``gates-failed`` (it has this
spec hash and failed a gate: the verdict stands until the spec changes)."""
PENDING: tuple[str, ...] = ("new", "changed")
"""The statuses of runs that would run: a recorded result, passed or not, is not measured again
unless forced."""

STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "fetch": ("model", "dataset"),
    # The device and the measured batch and threads: static-int8 times its candidates on the
    # device's CPU at the batch and threads the infer stage will measure, and runtime auto
    # deploys what won there.
    "compile": (
        "compression",
        "model.format",
        "model.input_shape",
        "runtime",
        "device",
        "measure.batch_size",
        "measure.threads",
    ),
    "install": ("runtime", "device"),
    "infer": ("measure", "runtime", "dataset.split", "device"),
}
"""The spec fields each built-in stage depends on. Other fields (gates, notify, description)
change a run's spec hash but no stage's key: the stages are reused, the verdicts recomputed."""


@dataclass(frozen=True)
class PlannedStage:
    name: str
    builtin: str | None
    command: tuple[str, ...] | None
    image: str | None
    needs: tuple[str, ...]
    network: bool
    params: dict[str, Any]
    key: str
    """Content-addressed plan key: stage, parameters, relevant spec fields, input digests, the
    keys of the stages it needs, and the package version. The engine extends it with the digests
    of the upstream outputs and the image digest to get the cache key."""


@dataclass(frozen=True)
class PlannedRun:
    id: str
    project: str
    name: str
    source: str
    spec: RunSpec
    spec_hash: str
    device: str
    device_kind: str
    runner: tuple[str, ...]
    pipeline: str
    stages: tuple[PlannedStage, ...]
    status: RunStatus
    result_path: str
    matrix: dict[str, Any] = field(default_factory=dict)
    executor: str = "docker"
    """How the device's runner runs stages (``executor`` in the device file)."""

    @property
    def pending(self) -> bool:
        """True when the run would run: it is new or its spec changed."""
        return self.status in PENDING

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project,
            "name": self.name,
            "source": self.source,
            "spec_hash": self.spec_hash,
            "device": self.device,
            "device_kind": self.device_kind,
            "runner": list(self.runner),
            "pipeline": self.pipeline,
            "status": self.status,
            "result": self.result_path,
            "matrix": self.matrix,
            "executor": self.executor,
            "stages": [
                {
                    "name": s.name,
                    "builtin": s.builtin,
                    "command": list(s.command) if s.command else None,
                    "image": s.image,
                    "needs": list(s.needs),
                    "network": s.network,
                    "key": s.key,
                }
                for s in self.stages
            ],
        }


@dataclass(frozen=True)
class Plan:
    runs: tuple[PlannedRun, ...]

    def to_json(self, *, force: bool = False) -> dict[str, Any]:
        """The plan as the workflows read it. ``matrix`` holds one job per device with runs to
        run: the new and changed ones, or with ``force`` every run of the plan (a forced
        dispatch runs up-to-date runs again)."""
        runs = [r.to_json() for r in self.runs]
        todo = self.runs if force else [r for r in self.runs if r.pending]
        devices: dict[str, dict[str, Any]] = {}
        for r in todo:
            entry = devices.setdefault(
                r.device, {"device": r.device, "runner": list(r.runner), "executor": r.executor, "runs": []}
            )
            entry["runs"].append(r.id)
        return {
            "schema": PLAN_SCHEMA,
            "runs": runs,
            "summary": {
                "total": len(runs),
                "new": sum(r.status == "new" for r in self.runs),
                "changed": sum(r.status == "changed" for r in self.runs),
                "up-to-date": sum(r.status == "up-to-date" for r in self.runs),
                "gates-failed": sum(r.status == "gates-failed" for r in self.runs),
            },
            # What the workflows turn into a job matrix: one job per device with runs to run.
            "matrix": {"include": sorted(devices.values(), key=lambda d: d["device"])},
        }

    def select(self, patterns: list[str]) -> Plan:
        return Plan(tuple(r for r in self.runs if _selected(r, patterns)))


def _selected(run: PlannedRun, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(run.id, p) or fnmatch.fnmatchcase(run.name, p) or run.project == p for p in patterns)


def _h(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj, indent=None).encode()).hexdigest()


def _dump(model) -> Any:
    return model.model_dump(mode="json", by_alias=True)


def _pick(spec_json: dict, dotted_key: str) -> Any:
    cur: Any = spec_json
    for part in dotted_key.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _uploads(spec: RunSpec, digests: dict[str, str]) -> dict[str, str | None]:
    return {s.upload: digests.get(s.upload) for s in (spec.model, spec.dataset) if s.upload is not None}


def _fetched_uploads(spec: RunSpec, digests: dict[str, str]) -> dict[str, str | None]:
    """What the fetch stage copies: the uploads, and the files that come with an uploaded model
    (its ``*.py``, ``config.json``, ONNX external data), so an edit to any of them fetches again."""
    out = _uploads(spec, digests)
    if spec.model.upload is not None:
        companions = spec.model.upload + COMPANIONS_SUFFIX
        if companions in digests:
            out[companions] = digests[companions]
    return out


def spec_hash(run: ExpandedRun, device: Any, pipeline: PipelineSpec, digests: dict[str, str]) -> str:
    """sha256 of everything that defines a run's result: the expanded spec, its device and
    pipeline, and the digests of its uploads."""
    return _h(
        {
            "schema": PLAN_SCHEMA,
            "spec": _dump(run.spec),
            "device": _dump(device) if device is not None else None,
            "pipeline": _dump(pipeline),
            "uploads": _uploads(run.spec, digests),
        }
    )


def stage_key(stage, spec_json: dict, device_json: Any, uploads: dict, upstream: list[str]) -> str:
    if stage.builtin:
        inputs = {k: (device_json if k == "device" else _pick(spec_json, k)) for k in STAGE_INPUTS[stage.builtin]}
    else:
        inputs = {"spec": spec_json, "device": device_json}
    return _h(
        {
            "stage": stage.name,
            "builtin": stage.builtin,
            "command": stage.command,
            "image": stage.image,
            "network": stage.network,
            "params": stage.params,
            "inputs": inputs,
            "uploads": uploads if stage.builtin in ("fetch", None) else {},
            "upstream": upstream,
            "version": __version__,
        }
    )


def _plan_run(repo: Repo, run: ExpandedRun) -> PlannedRun:
    device = repo.devices.get(run.spec.device)
    pipeline = repo.pipelines.get(run.spec.pipeline)
    if device is None or pipeline is None:
        raise UsageError(f"{run.id}: cannot plan a run whose device or pipeline is unknown; run 'tinymlaas validate'")
    spec_json = _dump(run.spec)
    device_json = _dump(device)
    uploads = _fetched_uploads(run.spec, repo.upload_digests)
    keys: dict[str, str] = {}
    stages = []
    for st in pipeline.order():
        key = stage_key(st, spec_json, device_json, uploads, [keys[n] for n in st.needs])
        keys[st.name] = key
        stages.append(
            PlannedStage(
                name=st.name,
                builtin=st.builtin,
                command=tuple(st.command) if st.command else None,
                image=st.image,
                needs=tuple(st.needs),
                network=st.network,
                params=dict(st.params),
                key=key,
            )
        )
    digest = spec_hash(run, device, pipeline, repo.upload_digests)
    committed = repo.results.get(run.id)
    status: RunStatus
    if committed is None:
        status = "new"
    elif committed.spec_hash == digest:
        # A recorded verdict stays a verdict: re-running the same spec would not change it.
        status = "gates-failed" if committed.status == "gates-failed" else "up-to-date"
    else:
        status = "changed"
    return PlannedRun(
        id=run.id,
        project=run.project,
        name=run.name,
        source=run.source,
        spec=run.spec,
        spec_hash=digest,
        device=device.name,
        device_kind=device.kind,
        runner=tuple(device.runner),
        pipeline=pipeline.name,
        stages=tuple(stages),
        status=status,
        result_path=result_path(run.project, run.name),
        matrix=dict(run.matrix),
        executor=device.executor,
    )


def plan(repo: Repo, select: list[str] | None = None) -> Plan:
    """The plan for every valid run of ``repo`` (or those matching ``select`` glob patterns of
    ``project/run``, ``run`` or a project name). Runs with problems are not planned; check
    ``repo.problems`` first."""
    runs = tuple(_plan_run(repo, r) for r in repo.runs)
    result = Plan(runs)
    if select:
        result = result.select(select)
        if not result.runs:
            known = ", ".join(r.id for r in runs[:20]) or "none"
            raise UsageError(f"no run matches {' '.join(select)}", hint=f"runs: {known}")
    return result
