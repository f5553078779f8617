"""Safe YAML loading that remembers where every key and value came from.

PyYAML composes a node tree (each node knows its line and column); we build the Python value
from it ourselves, so that we can refuse what a spec file must never contain (Python tags,
duplicate keys, merge keys, alias bombs) and report errors at ``file:line:column``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from tinymlaas_ci.errors import Problem

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "LoadedYaml", "load_yaml_file", "load_yaml_text"]

try:  # The C parser is ~10x faster; fall back to pure Python where libyaml is missing.
    _BaseLoader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _BaseLoader = yaml.SafeLoader


class _Loader(_BaseLoader):
    """The safe loader with a memo of implicit scalar tags.

    Resolving a plain scalar's tag runs a handful of regular expressions in Python for every
    scalar; spec files repeat the same keys and values, so the answer is remembered per
    ``(value, implicit)``. The memo is bounded so an odd file cannot grow it without limit.
    """

    _memo: ClassVar[dict] = {}

    def resolve(self, kind, value, implicit):
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = self._memo.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(self._memo) > 8192:
                self._memo.clear()
            self._memo[key] = tag
        return tag


MAX_NODES = 20_000
"""Most nodes a spec may expand to, aliases counted each time they are used."""
MAX_BYTES = 1_000_000
"""Largest spec file read, in bytes."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists in a spec (real specs nest about 4 levels)."""
_SCAN_ABOVE = 4_000
"""Texts longer than this are scanned for their nesting depth before they are composed: libyaml's
composer recurses on the C stack and crashes the process beyond some 20,000 levels, which a
1 MB file of '[' reaches. Shorter texts cannot nest that deep."""

_STD = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
_STR = _STD + "str"
_MERGE = _STD + "merge"
_SCALAR_CONSTRUCTORS = {
    _STD + "int": yaml.constructor.SafeConstructor.construct_yaml_int,
    _STD + "float": yaml.constructor.SafeConstructor.construct_yaml_float,
    _STD + "bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    _STD + "null": yaml.constructor.SafeConstructor.construct_yaml_null,
}

Path_ = tuple  # a key path: ("model", "upload"), ("matrix", "device", 1)


@dataclass
class LoadedYaml:
    """A loaded document and the positions (1-based line, column) of its keys and values."""

    path: str
    data: Any = None
    values: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def position(self, loc: tuple, *, key: bool = False) -> tuple[int, int]:
        """Best position for ``loc``: the key (when asked and known), else the value, else the
        nearest ancestor that exists."""
        loc = tuple(loc)
        while True:
            if key and loc in self.keys:
                return self.keys[loc]
            if loc in self.values:
                return self.values[loc]
            if loc in self.keys:
                return self.keys[loc]
            if not loc:
                return (1, 1)
            loc = loc[:-1]
            key = True

    def problem(self, loc: tuple, message: str, *, key: bool = False, hint: str | None = None) -> Problem:
        line, col = self.position(loc, key=key)
        return Problem(self.path, line, col, message, hint)


class _Refused(Exception):
    def __init__(self, mark, message: str, hint: str | None = None, *, pos: tuple[int, int] | None = None):
        self.mark = mark
        self.message = message
        self.hint = hint
        self.pos = pos


def _pos(mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _byte_pos(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of a byte offset (the column counts bytes)."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


class _Builder:
    def __init__(self, loader, out: LoadedYaml):
        self.loader = loader
        self.out = out
        self.count = 0

    def build(self, node, path: tuple) -> Any:
        self.count += 1
        if len(path) > MAX_DEPTH:
            raise _Refused(
                node.start_mark,
                f"values nest deeper than {MAX_DEPTH} levels",
                "a spec file nests a few levels; is this the right file?",
            )
        if self.count > MAX_NODES:
            # Aliases share one node, so the node's own mark would point at the anchor's first
            # use; the top-level key being built is where the expansion happens.
            top = self.out.keys.get(path[:1]) if path else None
            raise _Refused(
                node.start_mark,
                (f"key {path[0]!r} expands" if top else "the document expands") + f" to more than {MAX_NODES} values",
                "a spec file is small, and aliases that multiply into a huge document are refused",
                pos=top,
            )
        tag = node.tag
        mark = node.start_mark
        self.out.values[path] = (mark.line + 1, mark.column + 1)
        if tag == _STR and type(node) is yaml.ScalarNode:  # most values: no constructor needed
            return node.value
        if tag not in _ALLOWED_TAGS:
            if tag.startswith("tag:yaml.org,2002:python/") or tag.startswith("!"):
                shown = tag.replace("tag:yaml.org,2002:", "!!")
                raise _Refused(
                    node.start_mark, f"tag {shown} is not allowed", "spec files hold plain data: remove the tag"
                )
            if tag == _STD + "timestamp":
                # Dates are fine as text; we never want a datetime object.
                return str(node.value)
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise _Refused(node.start_mark, f"tag {shown} is not allowed", "spec files hold plain data: remove the tag")
        if isinstance(node, yaml.ScalarNode):
            try:
                if tag == _STR:
                    return node.value
                return _SCALAR_CONSTRUCTORS[tag](self.loader, node)
            except (yaml.YAMLError, ValueError, KeyError, TypeError, OverflowError):
                # An explicit tag on a value that does not fit it, e.g. '!!int x' or '!!bool 2'.
                shown = node.tag.replace(_STD, "!!")
                raise _Refused(
                    node.start_mark, f"{node.value!r} is not a valid {shown} value", "remove the tag or fix the value"
                ) from None
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        result: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _STR and type(key_node) is yaml.ScalarNode:
                self.count += 1
                key = key_node.value
            else:
                if key_node.tag == _MERGE:
                    raise _Refused(key_node.start_mark, "merge keys '<<' are not supported", "write the keys out")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Refused(key_node.start_mark, "a key must be a plain value, not a list or mapping")
                key = self.build(key_node, path + ("\0key",))
                self.out.values.pop(path + ("\0key",), None)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise _Refused(key_node.start_mark, f"unsupported key {key!r}")
            if not isinstance(key, str):
                key = str(key).lower() if isinstance(key, bool) or key is None else str(key)
                key = "null" if key == "none" else key
            if key in result:
                first = self.out.keys.get(path + (key,), (0, 0))
                raise _Refused(
                    key_node.start_mark,
                    f"duplicate key {key!r}, first defined on line {first[0]}",
                    "each key may appear once in a mapping; remove one",
                )
            self.out.keys[path + (key,)] = _pos(key_node.start_mark)
            result[key] = self.build(value_node, path + (key,))
        return result


def _describe(data: Any) -> str:
    if isinstance(data, list):
        return "a list"
    if isinstance(data, str):
        return "a string"
    if isinstance(data, bool):
        return "a boolean"
    if isinstance(data, (int, float)):
        return "a number"
    return type(data).__name__


def _tab_at(text: str, mark) -> bool:
    """True when the parser stopped at (or just after) a tab: the usual cause of the error."""
    if mark is None:
        return False
    lines = text.splitlines()
    if mark.line >= len(lines):
        return False
    line = lines[mark.line]
    return "\t" in line[: mark.column + 1] and not line[: mark.column].strip(" \t")


_NOT_CLOSED = "is not closed, or an item before here misses its ','"
_CONTEXT_HINTS = {
    "while parsing a flow mapping": "the '{{' at line {line}, column {col} " + _NOT_CLOSED,
    "while parsing a flow sequence": "the '[' at line {line}, column {col} " + _NOT_CLOSED,
    "while scanning a quoted scalar": "the quoted text that starts at line {line}, column {col} is not closed",
    "while parsing a quoted scalar": "inside the quoted text that starts at line {line}, column {col}",
    "while parsing a block mapping": (
        "check the indentation against the mapping that starts at line {line}, column {col}"
    ),
    "while parsing a block collection": (
        "check the indentation against the list that starts at line {line}, column {col}"
    ),
}
_PROBLEM_HINTS = {
    "mapping values are not allowed in this context": (
        "check the indentation of this line, and quote values that contain ': '"
    ),
    "found character that cannot start any token": "quote the value",
    "found undefined alias": "define the anchor &name before using it as *name",
}


def _syntax_error(text: str, exc: yaml.MarkedYAMLError) -> tuple[int, int, str, str | None]:
    """(line, column, message, hint) for a YAML syntax error, in words a spec author can act on."""
    mark = exc.problem_mark or exc.context_mark
    lines = text.splitlines()

    def inside(mark) -> tuple[int, int]:
        # The parser reports a missing closer at the end of the stream, past the last line;
        # an annotation there would land on no line at all.
        line, col = _pos(mark)
        if lines and line > len(lines):
            return len(lines), len(lines[-1]) + 1
        return line, col

    line, col = inside(mark)
    message = (exc.problem or str(exc)).strip()
    context = (exc.context or "").strip()
    if _tab_at(text, mark) or "'\\t'" in message:
        return line, col, "tab character where YAML expects indentation or a value", "indent YAML with spaces, not tabs"
    if "but found another document" in message:
        return (
            line,
            col,
            "more than one YAML document in the file",
            "a spec file holds one document; remove the extra '---'",
        )
    hint = _PROBLEM_HINTS.get(message)
    if context in _CONTEXT_HINTS and exc.context_mark is not None:
        cline, ccol = inside(exc.context_mark)
        hint = _CONTEXT_HINTS[context].format(line=cline, col=ccol)
    elif context and exc.context_mark is not None and hint is None:
        cline, ccol = inside(exc.context_mark)
        hint = f"{context} at line {cline}, column {ccol}"
    return line, col, message, hint


_OPEN = (
    yaml.BlockSequenceStartToken,
    yaml.BlockMappingStartToken,
    yaml.FlowSequenceStartToken,
    yaml.FlowMappingStartToken,
)
_CLOSE = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)


class _DepthScanner(yaml.reader.Reader, yaml.scanner.Scanner):
    """PyYAML's pure-Python scanner, for counting depth only.

    Not libyaml's: its scanner reads up to 1,024 characters ahead while it looks for a simple
    key, and libyaml versions with a nesting limit of their own stop there with their own words
    before :data:`MAX_DEPTH` is reached. The Python scanner stops where this function asks it to.
    """

    def __init__(self, text: str):
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)

    def dispose(self) -> None:
        pass


def _too_deep(text: str):
    """The mark where ``text`` first nests deeper than :data:`MAX_DEPTH`, else None.

    Uses the scanner only (iterative, no recursion); syntax errors are left to the parser.
    """
    scanner = _DepthScanner(text)
    depth = 0
    try:
        while (token := scanner.get_token()) is not None:
            if isinstance(token, _OPEN):
                depth += 1
                if depth > MAX_DEPTH:
                    return token.start_mark
            elif isinstance(token, _CLOSE):
                depth -= 1
    except yaml.YAMLError:
        return None
    finally:
        scanner.dispose()
    return None


def load_yaml_text(raw: bytes | str, path: str, *, expect_mapping: bool = True) -> LoadedYaml:
    """Load one YAML document from ``raw``. Problems are collected in ``.problems``; this never
    raises for bad input."""
    out = LoadedYaml(path=path)
    if isinstance(raw, bytes):
        if len(raw) > MAX_BYTES:
            out.problems.append(
                Problem(
                    path,
                    0,
                    0,
                    f"file is larger than {MAX_BYTES} bytes",
                    "a spec file is a few kB: is this the right file?",
                )
            )
            return out
        nul = raw.find(b"\0")
        if nul >= 0:
            line, col = _byte_pos(raw, nul)
            out.problems.append(
                Problem(
                    path,
                    line,
                    col,
                    "file is binary, not YAML text: it holds a NUL byte",
                    "spec files are UTF-8 YAML text",
                )
            )
            return out
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line, col = _byte_pos(raw, exc.start)
            out.problems.append(
                Problem(
                    path,
                    line,
                    col,
                    f"file is not UTF-8 text: byte 0x{raw[exc.start]:02x} is invalid here",
                    "save the file as UTF-8",
                )
            )
            return out
    else:
        text = raw
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        out.problems.append(
            Problem(path, 0, 0, "file is empty", "write a spec with at least 'schema: 1', or delete the file")
        )
        return out

    if len(text) > _SCAN_ABOVE:
        deep = _too_deep(text)
        if deep is not None:
            line, col = _pos(deep)
            out.problems.append(
                Problem(
                    path,
                    line,
                    col,
                    f"values nest deeper than {MAX_DEPTH} levels",
                    "a spec file nests a few levels; is this the right file?",
                )
            )
            return out

    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            out.problems.append(
                Problem(path, 0, 0, "file is empty", "write a spec with at least 'schema: 1', or delete the file")
            )
            return out
        out.data = _Builder(loader, out).build(node, ())
    except _Refused as exc:
        line, col = exc.pos or _pos(exc.mark)
        out.problems.append(Problem(path, line, col, exc.message, exc.hint))
        out.data = None
        out.values.clear()
        out.keys.clear()
        return out
    except yaml.MarkedYAMLError as exc:
        line, col, message, hint = _syntax_error(text, exc)
        out.problems.append(Problem(path, line, col, f"YAML syntax error: {message}", hint))
        return out
    except yaml.YAMLError as exc:
        out.problems.append(Problem(path, 0, 0, f"YAML error: {exc}"))
        return out
    except RecursionError:
        out.problems.append(Problem(path, 0, 0, "the document nests too deeply"))
        return out
    finally:
        loader.dispose()

    if expect_mapping and not isinstance(out.data, dict):
        out.problems.append(
            Problem(
                path,
                1,
                1,
                f"expected a mapping of keys at the top level, found {_describe(out.data)}",
                "a spec file starts with 'schema: 1' and then its keys",
            )
        )
        out.data = None
    return out


def load_yaml_file(path: Path, display: str | None = None) -> LoadedYaml:
    """Read and load one spec file; problems (unreadable, too large, bad YAML) are collected."""
    shown = display or str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except IsADirectoryError:
        return LoadedYaml(shown, problems=[Problem(shown, 0, 0, "is a directory, not a spec file")])
    except OSError as exc:
        return LoadedYaml(shown, problems=[Problem(shown, 0, 0, f"cannot read: {exc.strerror}")])
    return load_yaml_text(raw, shown)
