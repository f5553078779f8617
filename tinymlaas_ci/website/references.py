"""Reference pages generated from the code, so they cannot drift from it.

The spec reference walks the pydantic spec models (every field: type, default, constraints,
description); the CLI reference walks ``build_parser()`` (every command and option).
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["RESULT_MODELS", "SPEC_MODELS", "cli_sections", "model_sections"]


def _spec_models() -> list[tuple[str, list[type[BaseModel]]]]:
    from tinymlaas_ci.spec import models as s

    return [
        (
            "Run spec (`runs/<project>/<run>.yaml`)",
            [s.RunSpec, s.ModelSource, s.DatasetSource, s.Compression, s.Pruning, s.Measure, s.Gates, s.Resources],
        ),
        (
            "Device spec (`devices/<device>.yaml`)",
            [s.LocalDevice, s.DockerDevice, s.SshDevice, s.McuDevice, s.DockerEndpoint, s.SshEndpoint, s.SerialPort],
        ),
        ("Pipeline spec (`pipelines/<pipeline>.yaml`)", [s.PipelineSpec, s.StageSpec]),
    ]


def _result_models() -> list[tuple[str, list[type[BaseModel]]]]:
    from tinymlaas_ci.results import models as r

    return [
        (
            "Result file (`runs/<project>/results/<run>.json`)",
            [
                r.Result,
                r.RunIdentity,
                r.Inputs,
                r.ModelInput,
                r.DatasetInput,
                r.CompressionRecord,
                r.DeviceRecord,
                r.RuntimeRecord,
                r.Metrics,
                r.Latency,
                r.GateVerdict,
                r.StageRecord,
                r.ErrorRecord,
            ],
        )
    ]


SPEC_MODELS = _spec_models
RESULT_MODELS = _result_models


def _anchor(model: type) -> str:
    return model.__name__.lower()


def type_name(annotation: Any, known: set[type]) -> str:
    """A short, readable type for a field annotation, with links to documented models."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], known)
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a, known) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin in (list, tuple, set):
        return f"list of {type_name(args[0], known)}" if args else "list"
    if origin is dict:
        return f"map of {type_name(args[0], known)} to {type_name(args[1], known)}" if args else "map"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(f'`"{m.value}"`' for m in annotation)
        if issubclass(annotation, BaseModel):
            if annotation in known:
                return f"[{annotation.__name__}](#{_anchor(annotation)})"
            return annotation.__name__
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    if annotation is typing.Any:
        return "any"
    return str(annotation).replace("typing.", "")


def _constraints(field) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (
            ("ge", "≥"),
            ("gt", ">"),
            ("le", "≤"),
            ("lt", "<"),
            ("min_length", "min length"),
            ("max_length", "max length"),
            ("pattern", "pattern"),
        ):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} `{value}`" if attr != "pattern" else f"pattern `{value}`")
    return ", ".join(parts)


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "*(computed)*"
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "*(all defaults)*"
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, (list, dict)) and not value:
        return f"`{value!r}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def model_sections(groups: list[tuple[str, list[type[BaseModel]]]]) -> list[dict[str, Any]]:
    """Groups of models, each model with its fields as dicts (name, type, default, description)."""
    known = {m for _, models in groups for m in models}
    out = []
    for title, models in groups:
        entries = []
        for model in models:
            fields = []
            for name, field in model.model_fields.items():
                fields.append(
                    {
                        "name": field.alias or name,
                        "type": _cell(type_name(field.annotation, known)),
                        "constraints": _cell(_constraints(field)),
                        "default": _cell(_default(field)),
                        "description": _cell(field.description or ""),
                    }
                )
            doc = " ".join((model.__doc__ or "").split())
            if doc.startswith("!!!") or "Usage docs:" in doc:
                doc = ""
            entries.append({"name": model.__name__, "anchor": _anchor(model), "doc": doc, "fields": fields})
        out.append({"title": title, "models": entries})
    return out


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return ""
    try:
        return text % dict(vars(action), prog=prog)
    except (KeyError, TypeError, ValueError):
        return text


def _option_rows(parser: argparse.ArgumentParser) -> list[dict[str, str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += (
                    " " + (action.metavar or action.dest.upper())
                    if isinstance(action.metavar, (str, type(None)))
                    else ""
                )
        else:
            name = action.metavar or action.dest
            if isinstance(name, tuple):
                name = " ".join(name)
        default = ""
        if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS, [], ""):
            default = f"`{action.default}`"
        choices = (
            ", ".join(f"`{c}`" for c in action.choices)
            if action.choices and not isinstance(action.choices, dict)
            else ""
        )
        rows.append(
            {
                "name": _cell(name),
                "help": _cell(_help(action, parser.prog)),
                "default": _cell(default),
                "choices": _cell(choices),
                "required": bool(action.required or not action.option_strings),
            }
        )
    return rows


def cli_sections(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """Every command and subcommand of ``parser``, depth first, with its usage and options."""
    out: list[dict[str, Any]] = []

    def walk(p: argparse.ArgumentParser, depth: int, help_text: str) -> None:
        out.append(
            {
                "prog": p.prog,
                "anchor": p.prog.replace(" ", "-"),
                "depth": depth,
                "help": " ".join((help_text or "").split()),
                "description": " ".join((p.description or "").split()),
                "usage": " ".join(p.format_usage().replace("usage:", "", 1).split()),
                "options": _option_rows(p),
            }
        )
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if name in helps:  # a command added without help is a hidden alias
                        walk(sub, depth + 1, helps[name])

    walk(parser, 0, "")
    return out
