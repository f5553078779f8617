"""Reading result files tolerantly: one bad file is reported with its reason, never fatal.

Results are kept compressed and parsed on demand (:class:`Packed`), so the memory of a site
build does not grow with six times the size of every result and every committed version."""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tinymlaas_ci.results.layout import RESULT_GLOB, parse_result, parse_result_path
from tinymlaas_ci.results.models import Result

__all__ = ["PARSED", "LoadedResult", "Packed", "ParsedCache", "Skipped", "load_results"]


@dataclass
class Skipped:
    """A result file that could not be read, and why."""

    path: str
    reason: str

    def format(self) -> str:
        return f"{self.path}: {self.reason}"


class ParsedCache:
    """The last few parsed results, by the compressed file they came from.

    A site of thousands of results does not hold them all parsed at once: a parsed result
    takes about six times its file's size, a compressed file a quarter of it. Pages are
    rendered project by project, so the few hundred results a page needs stay parsed while
    it is rendered."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[int, Result] = OrderedDict()

    def get(self, key: int, packed: bytes) -> Result:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found
        result = parse_result(zlib.decompress(packed))
        self._items[key] = result
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return result


PARSED = ParsedCache()
"""The cache shared by every loaded result and history entry of a build."""


class Packed:
    """A result file kept compressed in memory, parsed when asked for (:data:`PARSED`)."""

    __slots__ = ("_packed",)

    def __init__(self, raw: bytes):
        self._packed = zlib.compress(raw, 1)

    @property
    def raw(self) -> bytes:
        """The file's bytes, exactly."""
        return zlib.decompress(self._packed)

    @property
    def result(self) -> Result:
        """The parsed result (the file was valid when it was loaded)."""
        return PARSED.get(id(self), self._packed)

    def __del__(self) -> None:
        PARSED._items.pop(id(self), None)  # a later object may get the same id


class LoadedResult(Packed):
    """One valid result file.

    ``project`` and ``slug`` come from the file's location (``runs/<project>/results/<slug>.json``),
    which is what the site's URLs are made of; ``result.run`` carries the names the runner wrote.
    ``result`` is parsed from the file's bytes when asked for; ``raw`` gives those bytes.
    """

    __slots__ = ("path", "project", "slug")

    def __init__(self, path: str, project: str, slug: str, raw: bytes):
        super().__init__(raw)
        self.path = path
        """Path relative to the repository root, with forward slashes."""
        self.project = project
        self.slug = slug

    def __repr__(self) -> str:
        return f"LoadedResult({self.path!r})"

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.slug)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        parts.append(f"{loc}: {err.get('msg')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "not a valid result: " + "; ".join(parts) + more


def load_results(root: Path) -> tuple[list[LoadedResult], list[Skipped]]:
    """Every result under ``root/runs/*/results/``, sorted by project and name, plus the skipped ones."""
    root = Path(root)
    loaded: list[LoadedResult] = []
    skipped: list[Skipped] = []
    for path in sorted(root.glob(RESULT_GLOB)):
        rel = path.relative_to(root).as_posix()
        where = parse_result_path(rel)
        if where is None:
            skipped.append(Skipped(rel, "not a result file name: runs/<project>/results/<run>.json"))
            continue
        try:
            raw = path.read_bytes()
            result = parse_result(raw)
        except OSError as exc:
            skipped.append(Skipped(rel, f"cannot read: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError:
            skipped.append(Skipped(rel, "not UTF-8 text"))
            continue
        except json.JSONDecodeError as exc:
            skipped.append(Skipped(rel, f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"))
            continue
        except ValidationError as exc:
            skipped.append(Skipped(rel, _first_error(exc)))
            continue
        except ValueError as exc:
            skipped.append(Skipped(rel, str(exc)))
            continue
        del result  # checked; parsed again when a page needs it
        loaded.append(LoadedResult(rel, *where, raw))
    return loaded, skipped
