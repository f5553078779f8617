"""Turn pydantic's validation errors into :class:`~tinymlaas_ci.errors.Problem` s with
``file:line:column`` positions, plain messages and "did you mean" hints."""

from __future__ import annotations

import difflib
import types
import typing
from enum import Enum
from typing import Any

from pydantic import BaseModel, ValidationError

from tinymlaas_ci.errors import Problem
from tinymlaas_ci.spec.loader import LoadedYaml

__all__ = ["validate_loaded", "problems_from_error", "field_keys", "suggest", "dotted"]


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def suggest(word: str, choices: typing.Iterable[str]) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def _unwrap(tp: Any, data: Any = None) -> Any:
    """Strip Annotated / Optional; pick the model of a union that fits ``data``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if len(models) > 1 and isinstance(data, dict) and "kind" in data:
                for m in models:
                    kind = m.model_fields.get("kind")
                    if kind is not None and data["kind"] in typing.get_args(kind.annotation):
                        return m
            tp = models[0] if models else (members[0] if members else tp)
            continue
        return tp


def _field(model: type[BaseModel], key: str):
    for name, info in model.model_fields.items():
        if key == name or key == info.alias:
            return info
    return None


def field_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _type_at(root: Any, loc: tuple, data: Any) -> Any:
    """The (unwrapped) type expected at ``loc`` inside ``root``; None when unknown."""
    tp = _unwrap(root, data)
    for part in loc:
        if isinstance(data, (dict, list)):
            try:
                data = data[part]
            except (KeyError, IndexError, TypeError):
                data = None
        else:
            data = None
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = _field(tp, str(part))
            if info is None:
                return None
            tp = _unwrap(info.annotation, data)
        elif typing.get_origin(tp) in (list, tuple):
            tp = _unwrap(typing.get_args(tp)[0], data)
        elif typing.get_origin(tp) is dict:
            tp = _unwrap(typing.get_args(tp)[1], data)
        else:
            return None
    return tp


def _resolve_loc(data: Any, loc: tuple) -> tuple:
    """Keep only the parts of pydantic's ``loc`` that exist in the data (drop union tags and
    validator labels), except the last, which may name a missing or unknown key."""
    out: list = []
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif last and isinstance(part, (str, int)) and not (isinstance(part, str) and "[" in part):
            out.append(part)
        # else: a union member tag or function label - not a data path.
    return tuple(out)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems_from_error(
    err: ValidationError, loaded: LoadedYaml, model: Any, *, prefix: tuple = ()
) -> list[Problem]:
    problems: list[Problem] = []
    data = loaded.data
    for e in err.errors(include_url=False):
        loc = prefix + _resolve_loc(_get(data, prefix), tuple(e["loc"]))
        kind = e["type"]
        where = dotted(loc)
        hint = None
        if kind == "extra_forbidden":
            key = loc[-1]
            parent = _type_at(model, loc[len(prefix):-1], _get(data, prefix))
            keys = field_keys(parent) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
            hint = suggest(str(key), keys) or (f"allowed keys: {', '.join(keys)}" if keys else None)
            parent_name = dotted(loc[:-1])
            msg = f"unknown key {key!r}" + (f" in {parent_name!r}" if parent_name else "")
            problems.append(loaded.problem(loc, msg, key=True, hint=hint))
            continue
        if kind == "missing":
            key = loc[-1]
            parent_name = dotted(loc[:-1])
            msg = f"missing required key {key!r}" + (f" in {parent_name!r}" if parent_name else "")
            problems.append(loaded.problem(loc[:-1], msg, key=True))
            continue
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, "):]
        if kind in ("enum", "literal_error"):
            expected = _type_at(model, loc[len(prefix):], _get(data, prefix))
            choices: list[str] = []
            if isinstance(expected, type) and issubclass(expected, Enum):
                choices = [str(m.value) for m in expected]
            elif typing.get_origin(expected) is typing.Literal:
                choices = [str(a) for a in typing.get_args(expected)]
            if choices:
                msg = f"{_short(e.get('input'))} is not one of: {', '.join(choices)}"
                hint = suggest(str(e.get("input")), choices)
        elif kind not in ("value_error", "assertion_error") and "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg}, got {_short(e['input'])}"
        text = f"{where}: {msg}" if where else msg
        problems.append(loaded.problem(loc, text, hint=hint))
    return problems


def _get(data: Any, loc: tuple) -> Any:
    for part in loc:
        data = data[part]
    return data


def validate_loaded(loaded: LoadedYaml, model: Any) -> tuple[Any | None, list[Problem]]:
    """Validate loaded YAML against a pydantic model class (or TypeAdapter-able type)."""
    if loaded.problems or loaded.data is None:
        return None, list(loaded.problems)
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(loaded.data), []
        from pydantic import TypeAdapter

        return TypeAdapter(model).validate_python(loaded.data), []
    except ValidationError as err:
        return None, problems_from_error(err, loaded, model)
