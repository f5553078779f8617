"""Reading result files tolerantly: one bad file is reported with its reason, never fatal."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from tinymlaas_ci.results.layout import RESULT_GLOB, parse_result, parse_result_path
from tinymlaas_ci.results.models import Result

__all__ = ["LoadedResult", "Skipped", "load_results"]


@dataclass
class Skipped:
    """A result file that could not be read, and why."""

    path: str
    reason: str

    def format(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class LoadedResult:
    """One valid result file.

    ``project`` and ``slug`` come from the file's location (``runs/<project>/results/<slug>.json``),
    which is what the site's URLs are made of; ``result.run`` carries the names the runner wrote.
    """

    path: str
    """Path relative to the repository root, with forward slashes."""
    project: str
    slug: str
    result: Result
    raw: bytes = field(repr=False, default=b"")

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
        loaded.append(LoadedResult(rel, *where, result, raw))
    return loaded, skipped
