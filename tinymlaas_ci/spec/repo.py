"""Load a whole repository of specs: runs, devices, pipelines and the committed results.

Everything that reads files lives here, so that :mod:`tinymlaas_ci.plan` can stay pure. Every
problem in every file is collected before anything is reported.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tinymlaas_ci.errors import Problem, SpecError
from tinymlaas_ci.fs import sha256_file
from tinymlaas_ci.results.layout import result_file
from tinymlaas_ci.spec.loader import LoadedYaml, load_yaml_file
from tinymlaas_ci.spec.models import (
    DEFAULT_PIPELINE,
    NAME_PATTERN,
    NAME_RULE,
    DockerDevice,
    LocalDevice,
    McuDevice,
    PipelineSpec,
    RunSpec,
    SshDevice,
    suggest,
)
from tinymlaas_ci.spec.validate import (
    _type_at,
    dotted,
    field_keys,
    problems_from_error,
    validate_loaded,
)

__all__ = ["SPEC_SUFFIXES", "ExpandedRun", "Repo", "ResultSummary", "RunFile", "expand_matrix", "load_repo"]

SPEC_SUFFIXES = (".yaml", ".yml")
_DEVICE_CLASSES = {"local": LocalDevice, "docker": DockerDevice, "ssh": SshDevice, "mcu": McuDevice}
_NAME_RE = re.compile(NAME_PATTERN)
_MATRIX_FORBIDDEN = {"schema", "name", "matrix", "description"}


@dataclass(frozen=True)
class ExpandedRun:
    """One run after matrix expansion."""

    project: str
    name: str
    spec: RunSpec
    source: str
    """The spec file, relative to the repository root (POSIX)."""
    matrix: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.project}/{self.name}"


@dataclass
class RunFile:
    path: str
    project: str
    loaded: LoadedYaml
    spec: RunSpec | None = None
    runs: list[ExpandedRun] = field(default_factory=list)


@dataclass(frozen=True)
class ResultSummary:
    """The part of a committed result that planning needs."""

    path: str
    spec_hash: str | None
    status: str | None


@dataclass
class Repo:
    """Everything loaded from a repository, with every problem found."""

    root: Path
    run_files: list[RunFile] = field(default_factory=list)
    devices: dict[str, Any] = field(default_factory=dict)
    device_files: dict[str, str] = field(default_factory=dict)
    pipelines: dict[str, PipelineSpec] = field(default_factory=dict)
    upload_digests: dict[str, str] = field(default_factory=dict)
    results: dict[str, ResultSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def runs(self) -> list[ExpandedRun]:
        return [run for f in self.run_files for run in f.runs]

    def raise_for_problems(self) -> None:
        if self.problems:
            raise SpecError(self.problems)


COMPANIONS_SUFFIX = "#companions"
"""``upload_digests[<model upload> + COMPANIONS_SUFFIX]``: digest of the files fetched with the model."""
_COMPANION_NAMES = ("config.json", "preprocessor_config.json")


def _model_companions(model: Path) -> list[Path]:
    """Files an uploaded model brings along (what the fetch stage copies): ``*.py``, the metadata
    files, and data files named after the model (ONNX external data such as ``model.onnx.data``)."""
    out = []
    for p in sorted(model.parent.iterdir()):
        if p == model or p.is_symlink() or not p.is_file():
            continue
        if (
            p.suffix == ".py"
            or p.name in _COMPANION_NAMES
            or p.name.startswith(model.name + ".")
            or (model.suffix == ".onnx" and p.suffix in (".data", ".bin", ".weight", ".weights"))
        ):
            out.append(p)
    return out


def _companions_digest(folder: Path, files: list[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as shown to the user. The file itself is not resolved, so a
    symlinked spec keeps its own name (its target is checked by :func:`_escapes`)."""
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        pass
    try:  # e.g. a PATH given through a symlinked folder
        return (absolute.parent.resolve() / absolute.name).relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _escapes(path: Path, root: Path) -> bool:
    """True when ``path`` is (or passes through) a symlink that leads outside ``root``."""
    # Cheap first: a path under root with no symlink on the way cannot leave it. Resolving
    # every spec file costs more than parsing it.
    cur = path if path.is_absolute() else Path.cwd() / path
    while cur != root:
        if os.path.islink(cur) or cur == cur.parent:
            break
        cur = cur.parent
    else:
        return False
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return True
    return False


def _outside_problem(rel: str) -> Problem:
    return Problem(
        rel,
        0,
        0,
        "spec file is a symlink that points outside the repository",
        "commit the file itself into the repository",
    )


def _spec_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES and not p.name.startswith("."))


def _slug(value: Any) -> str:
    if isinstance(value, dict):
        text = "-".join(f"{k}-{_slug(v)}" for k, v in value.items())
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, list):
        text = "-".join(_slug(v) for v in value)
    else:
        text = str(value)
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return text


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in ``data``, copying each mapping on the way so that the mappings ``data``
    shares with the loaded file (and with other combinations) are never changed."""
    parts = key.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        nxt = dict(nxt) if isinstance(nxt, dict) else {}
        cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _check_matrix_key(key: str) -> tuple[str | None, str | None]:
    """(problem, hint) when a matrix key does not name a real field of a run spec."""
    if key in _MATRIX_FORBIDDEN:
        return (
            f"matrix key {key!r} cannot be swept",
            "sweep model, dataset, compression, device, runtime or measure fields",
        )
    parts = key.split(".")
    model: Any = RunSpec
    for i, part in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return f"matrix key {key!r}: {'.'.join(parts[:i])!r} has no fields", f"sweep {'.'.join(parts[:i])!r} itself"
        keys = field_keys(model)
        if part not in keys:
            prefix = ".".join(parts[:i])
            hint = suggest(part, keys, lambda k, head=parts[:i]: ".".join([*head, k]))
            where = f"in {prefix!r}" if prefix else "of a run spec"
            return f"matrix key {key!r}: {part!r} is not a field {where}", hint or f"fields: {', '.join(keys)}"
        model = _type_at(model, (part,), None)
    return None, None


def sweepable_keys() -> list[str]:
    """Every dotted key a ``matrix`` may sweep (what :func:`_check_matrix_key` accepts), for the
    JSON Schema: editors then flag a typo in a matrix key too."""
    out: list[str] = []

    def walk(model: Any, prefix: tuple[str, ...]) -> None:
        for key in field_keys(model):
            if not prefix and key in _MATRIX_FORBIDDEN:
                continue
            path = (*prefix, key)
            out.append(".".join(path))
            inner = _type_at(model, (key,), None)
            if isinstance(inner, type) and issubclass(inner, BaseModel) and len(path) < 4:
                walk(inner, path)

    walk(RunSpec, ())
    return out


def matrix_key_problems(loaded: LoadedYaml) -> list[Problem]:
    """The problems of the matrix keys alone: reported even when the rest of the file has
    errors, so a typo in a sweep is never hidden behind another mistake."""
    data = loaded.data
    matrix = data.get("matrix") if isinstance(data, dict) else None
    if not isinstance(matrix, dict):
        return []
    problems = []
    for key in matrix:
        msg, hint = _check_matrix_key(str(key))
        if msg:
            problems.append(loaded.problem(("matrix", key), msg, key=True, hint=hint))
    return problems


def expand_matrix(loaded: LoadedYaml, base_name: str) -> tuple[list[tuple[str, dict, dict]], list[Problem]]:
    """Expand a ``matrix`` into ``(name, data, values)`` combinations, with problems for bad keys."""
    data = loaded.data
    matrix = data.get("matrix") if isinstance(data, dict) else None
    if not matrix:
        plain = {k: v for k, v in data.items() if k != "matrix"}
        return [(base_name, plain, {})], []
    problems: list[Problem] = []
    if not isinstance(matrix, dict):
        return [], []  # the model validation reports the type error
    keys = []
    for key, values in matrix.items():
        msg, hint = _check_matrix_key(str(key))
        if msg:
            problems.append(loaded.problem(("matrix", key), msg, key=True, hint=hint))
        elif isinstance(values, list) and values:
            seen: dict[str, Any] = {}
            for j, value in enumerate(values):
                slug = _slug(value)
                if slug in seen:
                    what = "is listed twice" if value == seen[slug] else f"gives the same run name as {seen[slug]!r}"
                    problems.append(
                        loaded.problem(
                            ("matrix", key, j), f"matrix.{key}[{j}]: {value!r} {what}", hint="list each value once"
                        )
                    )
                else:
                    seen[slug] = value
            keys.append(key)
    if problems or not keys:
        return [], problems
    combos = []
    for values in itertools.product(*(matrix[k] for k in keys)):
        name = "-".join([base_name] + [_slug(v) or "x" for v in values])
        # Shallow: validation does not change its input, and _set_dotted copies what it changes.
        expanded = {k: v for k, v in data.items() if k != "matrix"}
        for key, value in zip(keys, values, strict=True):
            _set_dotted(expanded, key, value)
        expanded["name"] = name
        combos.append((name, expanded, dict(zip(keys, values, strict=True))))
    return combos, problems


class Loader:
    def __init__(self, root: Path):
        self.repo = Repo(root=root.resolve())

    # -- devices and pipelines -------------------------------------------------------------
    def load_devices(self) -> None:
        repo = self.repo
        for path in _spec_files(repo.root / "devices"):
            rel = _rel(path, repo.root)
            if _escapes(path, repo.root):
                repo.problems.append(_outside_problem(rel))
                continue
            loaded = load_yaml_file(path, rel)
            if loaded.problems:
                repo.problems += loaded.problems
                continue
            kind = loaded.data.get("kind")
            cls = _DEVICE_CLASSES.get(kind) if isinstance(kind, str) else None
            if cls is None:
                if "kind" not in loaded.data:
                    repo.problems.append(
                        loaded.problem(
                            (),
                            "missing required key 'kind'",
                            key=True,
                            hint="add 'kind: local', 'kind: docker' or 'kind: ssh'",
                        )
                    )
                else:
                    repo.problems.append(
                        loaded.problem(
                            ("kind",),
                            f"kind: {kind!r} is not one of: local, docker, ssh",
                            hint=suggest(str(kind), _DEVICE_CLASSES)
                            or "local is the runner itself, docker any Docker engine, ssh a Linux board",
                        )
                    )
                continue
            spec, problems = validate_loaded(loaded, cls)
            repo.problems += problems
            if spec is None:
                continue
            name = self._name_of(loaded, spec, path, "device", "devices")
            if name is None:
                continue
            if name in repo.devices:
                repo.problems.append(
                    loaded.problem((), f"device {name!r} is defined twice, also in {repo.device_files[name]}")
                )
                continue
            repo.devices[name] = spec.model_copy(update={"name": name})
            repo.device_files[name] = rel

    def _name_of(self, loaded: LoadedYaml, spec, path: Path, what: str, folder: str) -> str | None:
        """The name a device or pipeline is referred to by: its file name. A ``name`` that
        differs from it is a problem (None), since runs could not find it."""
        if spec.name and spec.name != path.stem:
            self.repo.problems.append(
                loaded.problem(
                    ("name",),
                    f"{what} name {spec.name!r} differs from its file name {path.stem!r}",
                    hint=f"rename the file to {folder}/{spec.name}.yaml or remove 'name'",
                )
            )
            return None
        return path.stem

    def load_pipelines(self) -> None:
        repo = self.repo
        repo.pipelines["default"] = DEFAULT_PIPELINE
        for path in _spec_files(repo.root / "pipelines"):
            rel = _rel(path, repo.root)
            if _escapes(path, repo.root):
                repo.problems.append(_outside_problem(rel))
                continue
            loaded = load_yaml_file(path, rel)
            spec, problems = validate_loaded(loaded, PipelineSpec)
            repo.problems += problems
            if spec is None:
                continue
            name = self._name_of(loaded, spec, path, "pipeline", "pipelines")
            if name is None:
                continue
            for i, stage in enumerate(spec.stages):
                if (
                    stage.image
                    and "/" in stage.image
                    and not (repo.root / stage.image).is_dir()
                    and stage.image.startswith("pipelines/")
                ):
                    repo.problems.append(
                        loaded.problem(
                            ("stages", i, "image"),
                            f"stages[{i}].image: folder {stage.image!r} does not exist",
                            hint="give an image name, or a folder holding a Dockerfile",
                        )
                    )
            repo.pipelines[name] = spec.model_copy(update={"name": name})

    # -- runs --------------------------------------------------------------------------------
    def run_paths(self, selected: list[Path] | None) -> list[Path]:
        root = self.repo.root
        runs_dir = root / "runs"
        found: list[Path] = []
        if runs_dir.is_dir():
            for entry in sorted(runs_dir.iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):
                    found += _spec_files(entry)
                elif entry.suffix in SPEC_SUFFIXES:
                    found.append(entry)
        if selected:
            # Explicit files outside runs/ are validated too (e.g. a spec being drafted).
            for sel in selected:
                if sel.is_file() and sel.resolve() not in {f.resolve() for f in found}:
                    found.append(sel)
        return found

    def load_runs(self, selected: list[Path] | None) -> None:
        repo = self.repo
        for path in self.run_paths(selected):
            rel = _rel(path, repo.root)
            parts = Path(rel).parts
            if _escapes(path, repo.root) and not (Path(rel).is_absolute() or parts[:1] == ("..",)):
                repo.problems.append(_outside_problem(rel))
                continue
            loaded = load_yaml_file(path, rel)
            if len(parts) == 3 and parts[0] == "runs":
                project = parts[1]
            else:
                project = path.resolve().parent.name
                if len(parts) == 2 and parts[0] == "runs":
                    repo.problems.append(
                        Problem(
                            rel,
                            0,
                            0,
                            "run spec is not in a project folder",
                            f"run specs live in runs/<project>/<run>.yaml: move it, e.g. to runs/default/{path.name}",
                        )
                    )
                    continue
            if not _NAME_RE.match(project):
                better = _slug(project)[:63] or "default"
                repo.problems.append(
                    Problem(
                        rel,
                        0,
                        0,
                        f"project folder name {project!r} is not a valid name",
                        f"rename the folder, e.g. to runs/{better}/: {NAME_RULE}",
                    )
                )
            rf = RunFile(path=rel, project=project, loaded=loaded)
            repo.run_files.append(rf)
            spec, problems = validate_loaded(loaded, RunSpec)
            repo.problems += problems
            if spec is None:
                repo.problems += matrix_key_problems(loaded)
                continue
            rf.spec = spec
            base = spec.name or path.stem
            if not spec.name and not _NAME_RE.match(base):
                repo.problems.append(
                    Problem(
                        rel,
                        0,
                        0,
                        f"run name {base!r}, taken from the file name, is not a valid name",
                        f"rename the file or set 'name': {NAME_RULE}",
                    )
                )
                continue
            combos, problems = expand_matrix(loaded, base)
            repo.problems += problems
            seen_errors: set[tuple] = set()
            for name, data, values in combos:
                if not _NAME_RE.match(name):
                    repo.problems.append(
                        loaded.problem(
                            ("matrix",),
                            f"matrix run name {name!r} is not a valid name",
                            hint="shorten the values or the base name (at most 63 characters)",
                        )
                    )
                    continue
                try:
                    expanded = RunSpec.model_validate(data)
                except ValidationError as err:
                    for p in self._matrix_problems(err, loaded, values, data):
                        if (p.line, p.column, p.message) not in seen_errors:
                            seen_errors.add((p.line, p.column, p.message))
                            repo.problems.append(p)
                    continue
                rf.runs.append(ExpandedRun(project, name, expanded, rel, values))

    def _matrix_problems(self, err: ValidationError, loaded: LoadedYaml, values: dict, data: dict) -> list[Problem]:
        """Point errors of an expanded run at the matrix value that caused them."""
        out = []
        probe = LoadedYaml(loaded.path, data=data, values=dict(loaded.values), keys=dict(loaded.keys))
        for p in problems_from_error(err, probe, RunSpec):
            for key, value in values.items():
                idx = loaded.data["matrix"][key].index(value)
                line, col = loaded.position(("matrix", key, idx))
                message = p.message
                if message.split(":")[0] in (key, dotted(tuple(key.split(".")))) or key in message:
                    if message.startswith(key + ": "):
                        message = message[len(key) + 2 :]
                    out.append(Problem(p.path, line, col, f"matrix.{key}[{idx}]: {message}", p.hint))
                    break
            else:
                line, col = loaded.position(("matrix",), key=True)
                out.append(Problem(p.path, line, col, f"matrix combination {values}: {p.message}", p.hint))
        return out

    # -- cross-file checks -------------------------------------------------------------------
    def cross_check(self) -> None:
        repo = self.repo
        names: dict[tuple[str, str], str] = {}
        for rf in repo.run_files:
            if rf.spec is None:
                self._check_raw_refs(rf)
            for run in rf.runs:
                key = (run.project, run.name)
                if key in names:
                    line, col = rf.loaded.position(("name",), key=True) if "name" in rf.loaded.data else (0, 0)
                    repo.problems.append(
                        Problem(
                            rf.path,
                            line,
                            col,
                            f"run name {run.name!r} is used twice in project {run.project!r}, also by {names[key]}",
                            "run names must be unique within a project: set a different 'name'",
                        )
                    )
                    continue
                names[key] = rf.path
                self._check_refs(rf, run)

    def _check_refs(self, rf: RunFile, run: ExpandedRun) -> None:
        repo = self.repo
        loaded = rf.loaded

        def where(field_path: tuple) -> tuple:
            key = field_path[0] if len(field_path) == 1 else ".".join(field_path)
            if key in run.matrix:
                idx = loaded.data["matrix"][key].index(run.matrix[key])
                return ("matrix", key, idx)
            return field_path

        spec = run.spec
        if spec.device not in repo.devices:
            known = sorted(repo.devices)
            hint = suggest(spec.device, known) or (
                f"known devices: {', '.join(known)}"
                if known
                else f"register it: create devices/{spec.device}.yaml (tinymlaas device register {spec.device})"
            )
            repo.problems.append(
                loaded.problem(where(("device",)), f"device {spec.device!r} is not defined in devices/", hint=hint)
            )
        else:
            self._check_device_runtime(loaded, run, where)
        if spec.pipeline not in repo.pipelines:
            known = sorted(repo.pipelines)
            repo.problems.append(
                loaded.problem(
                    where(("pipeline",)),
                    f"pipeline {spec.pipeline!r} is not defined in pipelines/",
                    hint=suggest(spec.pipeline, known) or f"known pipelines: {', '.join(known)}",
                )
            )
        for part in ("model", "dataset"):
            source = getattr(spec, part)
            if source.upload is None:
                continue
            self._check_upload(
                loaded, where((part, "upload")) if (f"{part}.upload" in run.matrix) else (part, "upload"), source.upload
            )
        self._check_upload_files(loaded, spec, where)

    def _check_upload_files(self, loaded: LoadedYaml, spec: RunSpec, where) -> None:
        from tinymlaas_ci.spec.files import upload_problems

        repo = self.repo
        if not all(repo.upload_digests.get(s.upload) for s in (spec.model, spec.dataset) if s.upload is not None):
            return  # a missing upload is already reported
        seen = {(p.path, p.message) for p in repo.problems}
        for loc, message, hint in upload_problems(spec, repo.root):
            problem = loaded.problem(where(loc), message, hint=hint)
            if (problem.path, problem.message) not in seen:
                repo.problems.append(problem)

    def _check_device_runtime(self, loaded: LoadedYaml, run: ExpandedRun, where) -> None:
        """A microcontroller runs generated C only, and generated C needs a static-int8 model."""
        spec = run.spec
        device = self.repo.devices[spec.device]
        if device.kind != "mcu":
            return
        at = where(("runtime",)) if "runtime" in run.matrix or "runtime" in loaded.data else where(("device",))
        if spec.runtime.value not in ("c", "auto"):
            self.repo.problems.append(
                loaded.problem(
                    at,
                    f"device {spec.device!r} is a microcontroller ({device.board}): it needs runtime 'c', "
                    f"not {spec.runtime.value!r}",
                    hint="set 'runtime: c' and 'compression.quantization: static-int8'",
                )
            )
        elif spec.runtime.value == "auto" and spec.compression.quantization.value != "static-int8":
            q = ("compression", "quantization")
            self.repo.problems.append(
                loaded.problem(
                    where(q) if "compression.quantization" in run.matrix or "compression" in loaded.data else at,
                    f"device {spec.device!r} is a microcontroller ({device.board}): runtime 'auto' deploys "
                    f"generated C there, which runs static-int8 models only, not "
                    f"'{spec.compression.quantization.value}'",
                    hint="set 'compression.quantization: static-int8'",
                )
            )

    def _check_raw_refs(self, rf: RunFile) -> None:
        """A spec that failed validation still gets its references checked, so that every
        problem of the file is reported at once, not a second batch after the first is fixed."""
        data, loaded, repo = rf.loaded.data, rf.loaded, self.repo
        if not isinstance(data, dict):
            return
        swept = set((data.get("matrix") or {}) if isinstance(data.get("matrix"), dict) else ())
        device = data.get("device", "host")
        if isinstance(device, str) and _NAME_RE.match(device) and "device" not in swept and device not in repo.devices:
            known = sorted(repo.devices)
            repo.problems.append(
                loaded.problem(
                    ("device",),
                    f"device {device!r} is not defined in devices/",
                    hint=suggest(device, known) or (f"known devices: {', '.join(known)}" if known else None),
                )
            )
        pipeline = data.get("pipeline", "default")
        if (
            isinstance(pipeline, str)
            and _NAME_RE.match(pipeline)
            and "pipeline" not in swept
            and pipeline not in repo.pipelines
        ):
            known = sorted(repo.pipelines)
            repo.problems.append(
                loaded.problem(
                    ("pipeline",),
                    f"pipeline {pipeline!r} is not defined in pipelines/",
                    hint=suggest(pipeline, known) or f"known pipelines: {', '.join(known)}",
                )
            )
        for part in ("model", "dataset"):
            source = data.get(part)
            rel = source.get("upload") if isinstance(source, dict) else None
            if (
                isinstance(rel, str)
                and rel
                and f"{part}.upload" not in swept
                and not rel.startswith("/")
                and ".." not in re.split(r"[\\/]", rel)
            ):
                self._check_upload(loaded, (part, "upload"), rel)

    def _check_upload(self, loaded: LoadedYaml, loc: tuple, rel: str) -> None:
        repo = self.repo
        if rel in repo.upload_digests:
            return
        path = repo.root / rel
        if path.is_symlink() or any(p.is_symlink() for p in path.parents if p != repo.root and repo.root in p.parents):
            try:
                path.resolve().relative_to(repo.root)
            except ValueError:
                repo.problems.append(
                    loaded.problem(
                        loc,
                        f"upload {rel!r} is a symlink that points outside the repository",
                        hint="commit the file itself into the repository; Git LFS is fine",
                    )
                )
                return
        if not path.exists():
            siblings = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
            hint = suggest(path.name, siblings, lambda n: (Path(rel).parent / n).as_posix()) or (
                "commit the file, or fix the path: it is relative to the repository root"
            )
            repo.problems.append(loaded.problem(loc, f"upload {rel!r} does not exist", hint=hint))
            return
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file"
            repo.problems.append(
                loaded.problem(
                    loc,
                    f"upload {rel!r} is {what}, not a file",
                    hint="name one file: a model file, or a dataset archive such as data.zip",
                )
            )
            return
        repo.upload_digests[rel] = sha256_file(path)
        if loc and loc[0] == "model":
            companions = _model_companions(path)
            if companions:
                # The files fetched with the model (its *.py, config.json, external data) under
                # their own key, so the fetch stage's cache key can include them.
                repo.upload_digests[rel + COMPANIONS_SUFFIX] = _companions_digest(path.parent, companions)

    # -- results -----------------------------------------------------------------------------
    def load_results(self) -> None:
        repo = self.repo
        for rf in repo.run_files:
            for run in rf.runs:
                path = result_file(repo.root, run.project, run.name)
                if not path.is_file():
                    continue
                try:
                    data = json.loads(path.read_text())
                    summary = ResultSummary(_rel(path, repo.root), data["run"]["spec_hash"], data.get("status"))
                except (OSError, ValueError, KeyError, TypeError):
                    summary = ResultSummary(_rel(path, repo.root), None, None)
                repo.results[run.id] = summary


def load_repo(root: Path, paths: list[Path] | None = None, *, results: bool = True) -> Repo:
    """Load and check every spec in the repository at ``root``.

    ``paths`` narrows the run specs to those files or folders (devices and pipelines are always
    loaded, since runs refer to them). Problems are collected in ``repo.problems``.
    """
    loader = Loader(root)
    loader.load_devices()
    loader.load_pipelines()
    selected = [Path(p) for p in paths] if paths else None
    loader.load_runs(selected)
    loader.cross_check()
    repo = loader.repo
    if selected:
        wanted = [p.resolve() for p in selected]

        def keep(rel: str) -> bool:
            full = (repo.root / rel).resolve()
            return any(full == w or w in full.parents for w in wanted)

        for w, sel in zip(wanted, selected, strict=True):
            if not w.exists():
                repo.problems.append(Problem(str(sel), 0, 0, "no such file or folder"))
        repo.run_files = [rf for rf in repo.run_files if keep(rf.path)]
        run_paths = {rf.path for rf in loader.repo.run_files}
        repo.problems = [
            p
            for p in repo.problems
            if p.path.startswith(("devices/", "pipelines/")) or p.path in run_paths or not (repo.root / p.path).exists()
        ]
    if results:
        loader.load_results()
    # File order, then line order: what a reader scanning the output expects.
    repo.problems = sorted(dict.fromkeys(repo.problems))
    return repo
