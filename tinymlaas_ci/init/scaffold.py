"""``tinymlaas init DIR``: scaffold a new adopter repository that validates and plans at once.

The files come from package data: ``template/`` (an example run with its model and dataset,
the local device, the default pipeline, the website's ``site/``, ``tinymlaas.yaml`` with the
``install`` setting, editor settings, a README and ``.gitignore``) and ``workflows/``
(this project's own GitHub workflows, kept identical by a test). The JSON Schemas are
generated from the spec models, so they always match the installed version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinymlaas_ci import __version__
from tinymlaas_ci.errors import UsageError
from tinymlaas_ci.fs import atomic_write_bytes
from tinymlaas_ci.git import init_repository
from tinymlaas_ci.hostinfo import arch
from tinymlaas_ci.init.settings import INSTALL_PLACEHOLDER, check_install, default_install, with_extras

__all__ = ["TEMPLATE_DIR", "WORKFLOWS_DIR", "InitReport", "init_repo", "template_files"]

_HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = _HERE / "template"
WORKFLOWS_DIR = _HERE / "workflows"
_RENAMES = {"gitignore.txt": ".gitignore", "vscode/settings.json": ".vscode/settings.json"}
"""Package data cannot ship dotfiles reliably; these are renamed on the way out."""


@dataclass
class InitReport:
    """What :func:`init_repo` did."""

    root: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Files that existed already and were left alone."""
    git: str = ""
    """What happened about git: ``initialised``, ``already a repository`` or why not."""


def _placeholders(install: str) -> dict[bytes, bytes]:
    return {
        b"__TINYMLAAS_INSTALL_ML__": with_extras(install, "ml").encode(),
        b"__TINYMLAAS_INSTALL_SITE__": with_extras(install, "site").encode(),
        INSTALL_PLACEHOLDER.encode(): install.encode(),
        b"__TINYMLAAS_VERSION__": __version__.encode(),
    }


def template_files(install: str | None = None) -> dict[str, bytes]:
    """Relative path in the new repository -> content, for every template file.

    ``install`` is the pip requirement the repository installs (default: this exact release);
    it replaces the placeholders of :mod:`tinymlaas_ci.init.settings` in every file.
    """
    values = _placeholders(check_install(install) if install else default_install())
    files: dict[str, bytes] = {}
    for path in sorted(TEMPLATE_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(TEMPLATE_DIR).as_posix()
            rel = _RENAMES.get(rel, rel)
            data = path.read_bytes()
            if rel == "devices/host.yaml":
                data = data.replace(b"__ARCH__", arch().encode())
            files[rel] = _fill(data, values)
    for path in sorted(WORKFLOWS_DIR.glob("*.yml")):
        files[f".github/workflows/{path.name}"] = _fill(path.read_bytes(), values)
    return files


def _fill(data: bytes, values: dict[bytes, bytes]) -> bytes:
    for key, value in values.items():  # the longer names first: they contain the short one
        data = data.replace(key, value)
    return data


def _schemas() -> dict[str, bytes]:
    import tempfile

    from tinymlaas_ci.results.schemas import write_schemas

    with tempfile.TemporaryDirectory(prefix="tmi.") as tmp:
        write_schemas(Path(tmp))
        return {f"schemas/{p.name}": p.read_bytes() for p in sorted(Path(tmp).glob("*.json"))}


def init_repo(dest: Path, *, force: bool = False, install: str | None = None) -> InitReport:
    """Write a new repository into ``dest``. A non-empty ``dest`` needs ``force``; even then no
    existing file is overwritten (they are listed in ``skipped``). ``install`` is the pip
    requirement written to ``tinymlaas.yaml`` (default: this exact release)."""
    dest = Path(dest)
    install = check_install(install) if install else None  # refuse before writing anything
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a folder", hint="give a new or empty folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UsageError(
            f"{dest} is not empty",
            hint="give a new or empty folder, or add --force to add the missing files (existing ones are kept)",
        )
    dest.mkdir(parents=True, exist_ok=True)
    report = InitReport(root=dest.resolve())
    files = {**template_files(install), **_schemas()}
    for rel, data in sorted(files.items()):
        target = dest / rel
        if target.exists() or target.is_symlink():
            report.skipped.append(rel)
            continue
        atomic_write_bytes(target, data)
        target.chmod(0o644)
    report.written = sorted(set(files) - set(report.skipped))
    report.git = init_repository(dest)
    return report
