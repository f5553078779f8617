"""Turn pydantic's validation errors into :class:`~tinymlaas_ci.errors.Problem` s with
``file:line:column`` positions, plain messages and "did you mean" hints."""

from __future__ import annotations

import types
import typing
from enum import Enum
from typing import Any

from pydantic import BaseModel, ValidationError

from tinymlaas_ci.errors import Problem
from tinymlaas_ci.spec.loader import LoadedYaml
from tinymlaas_ci.spec.models import NAME_PATTERN, NAME_RULE, SCHEMA_VERSION, DeviceSpec, LocatedError, suggest

__all__ = ["dotted", "field_keys", "problems_from_error", "validate_loaded"]


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


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
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if (isinstance(cur, dict) and part in cur) or in_list:
            out.append(part)
            cur = cur[part]
        elif last and isinstance(part, (str, int)) and not (isinstance(part, str) and "[" in part):
            out.append(part)
        # else: a union member tag or function label - not a data path.
    return tuple(out)


def _short(value: Any) -> str:
    if value is None:
        return "an empty value"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# pydantic error type -> our wording. Messages say what a value must be; the caller adds
# where it is and what was found.
_TYPE_MESSAGES = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of keys",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
}
_BOUND_MESSAGES = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "greater_than": ("gt", "must be greater than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "less_than": ("lt", "must be less than {}"),
}


def _describe_error(e: dict, model: Any, loc: tuple, data: Any) -> tuple[str, str | None]:
    """(message, hint) for one pydantic error, without its location."""
    kind = e["type"]
    ctx = e.get("ctx") or {}
    value = e.get("input")
    got = "" if isinstance(value, (dict, list)) else f", got {_short(value)}"
    if kind in _TYPE_MESSAGES:
        hint = None
        expected = _type_at(model, loc, data)
        if (
            kind in ("dict_type", "model_type", "model_attributes_type")
            and isinstance(expected, type)
            and issubclass(expected, BaseModel)
        ):
            hint = f"its keys: {', '.join(field_keys(expected))}"
        elif kind == "list_type":
            hint = "write a list: [a, b] or one '- item' per line"
        if value is None:
            parent = _type_at(model, loc[:-1], data) if loc else None
            info = _field(parent, str(loc[-1])) if isinstance(parent, type) and issubclass(parent, BaseModel) else None
            if hint and hint.startswith("its keys"):
                hint = "fill in " + hint
            else:
                hint = (
                    "give it a value"
                    if info is None or info.is_required()
                    else "give it a value, or remove the key to use the default"
                )
        return _TYPE_MESSAGES[kind] + got, hint
    if kind in _BOUND_MESSAGES:
        name, text = _BOUND_MESSAGES[kind]
        hint = None
        if ctx.get(name) == 1 and kind == "less_than_equal" and isinstance(value, (int, float)) and 1 < value <= 100:
            # Accuracies are fractions; 95 almost always means 95 %.
            hint = f"this is a fraction: write {value / 100:g} for {value:g}%"
        return text.format(ctx.get(name)) + got, hint
    if kind == "too_short":
        return f"must have at least {_plural(ctx.get('min_length'), 'item')}, has {ctx.get('actual_length')}", None
    if kind == "too_long":
        return f"must have at most {_plural(ctx.get('max_length'), 'item')}, has {ctx.get('actual_length')}", None
    if kind == "string_too_short":
        return "must not be empty", None
    if kind == "string_too_long":
        return f"must be at most {_plural(ctx.get('max_length'), 'character')}" + got, None
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return f"{_short(value)} is not a valid name", NAME_RULE
        return f"must match the pattern {ctx.get('pattern')}" + got, None
    if kind in ("enum", "literal_error"):
        expected = _type_at(model, loc, data)
        choices: list[str] = []
        if isinstance(expected, type) and issubclass(expected, Enum):
            choices = [str(m.value) for m in expected]
        elif typing.get_origin(expected) is typing.Literal:
            choices = [str(a) for a in typing.get_args(expected)]
        if loc[-1:] == ("schema",) and choices == [str(SCHEMA_VERSION)]:
            return (
                f"version {_short(value)} is not supported",
                f"write 'schema: {SCHEMA_VERSION}', the version this TinyMLaaS-CI reads",
            )
        if choices:
            return f"{_short(value)} is not one of: {', '.join(choices)}", suggest(str(value), choices)
    msg = e["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :], None
    return msg + got, None


def _missing_hint(model: Any, loc: tuple, data: Any) -> str | None:
    if loc == ("schema",) or loc[-1:] == ("schema",):
        return "add 'schema: 1' as the first key"
    parent = _type_at(model, loc[:-1], data)
    info = _field(parent, str(loc[-1])) if isinstance(parent, type) and issubclass(parent, BaseModel) else None
    desc = (info.description or "").split("\n")[0].split(". ")[0].strip().rstrip(".").replace("``", "'") if info else ""
    where = f" under '{dotted(loc[:-1])}'" if loc[:-1] else ""
    if desc:
        desc = desc[0].lower() + desc[1:]
        return f"add '{loc[-1]}'{where}: {desc}"
    return f"add '{loc[-1]}'{where}"


def problems_from_error(err: ValidationError, loaded: LoadedYaml, model: Any, *, prefix: tuple = ()) -> list[Problem]:
    """One problem per pydantic error, at the position of the key or value it concerns."""
    problems: list[Problem] = []
    data = loaded.data
    inner = _get(data, prefix)
    for e in err.errors(include_url=False):
        loc = prefix + _resolve_loc(inner, tuple(e["loc"]))
        rel = loc[len(prefix) :]
        kind = e["type"]
        if kind == "extra_forbidden":
            key = loc[-1]
            parent = _type_at(model, rel[:-1], inner)
            keys = field_keys(parent) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
            hint = (
                suggest(str(key), keys)
                or _other_kind(model, inner, rel)
                or (f"allowed keys: {', '.join(keys)}" if keys else None)
            )
            parent_name = dotted(loc[:-1])
            msg = f"unknown key {key!r}" + (f" in {parent_name!r}" if parent_name else "")
            problems.append(loaded.problem(loc, msg, key=True, hint=hint))
            continue
        if kind == "missing":
            key = loc[-1]
            parent_name = dotted(loc[:-1])
            msg = f"missing required key {key!r}" + (f" in {parent_name!r}" if parent_name else "")
            problems.append(loaded.problem(loc[:-1], msg, key=True, hint=_missing_hint(model, rel, inner)))
            continue
        error = (e.get("ctx") or {}).get("error")
        if kind == "value_error" and isinstance(error, LocatedError):
            for sub, msg, hint in error.items:
                where = dotted(loc + sub)
                problems.append(loaded.problem(loc + sub, f"{where}: {msg}" if where else msg, hint=hint))
            continue
        msg, hint = _describe_error(e, model, rel, inner)
        where = dotted(loc)
        # An empty value has no position of its own worth showing: point at its key.
        problems.append(
            loaded.problem(loc, f"{where}: {msg}" if where else msg, hint=hint, key=e.get("input", 0) is None)
        )
    return problems


def _other_kind(model: Any, data: Any, rel: tuple) -> str | None:
    """For a device file: 'docker' under kind 'local' is a key of another kind."""
    if len(rel) != 1 or not isinstance(data, dict):
        return None
    if not (isinstance(model, type) and issubclass(model, BaseModel) and "kind" in model.model_fields):
        return None
    for m in typing.get_args(_strip_annotated(DeviceSpec)):
        if m is model:
            continue
        kind = m.model_fields.get("kind")
        if kind is not None and _field(m, str(rel[0])) is not None:
            return f"{rel[0]!r} applies to devices of kind {typing.get_args(kind.annotation)[0]!r}"
    return None


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


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
