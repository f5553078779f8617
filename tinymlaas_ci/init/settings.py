"""``tinymlaas.yaml``: the repository settings, of which the one that matters is ``install``.

``install`` is one pip requirement for the package ``tinymlaas-ci`` in any form pip accepts
(PEP 508): ``tinymlaas-ci==1.2.0`` from an index, ``tinymlaas-ci @ https://.../x.whl`` for a
wheel, ``tinymlaas-ci @ git+https://...@tag`` for a git URL. ``tinymlaas init`` writes the exact
release that made the repository; the workflows read the line and add the extras they need
(:func:`with_extras` is the rule: the extras go right after the name).
"""

from __future__ import annotations

import re
from pathlib import Path

from tinymlaas_ci import __version__
from tinymlaas_ci.errors import UsageError

__all__ = [
    "DISTRIBUTION",
    "INSTALL_PLACEHOLDER",
    "SETTINGS_FILE",
    "default_install",
    "read_install",
    "with_extras",
]

SETTINGS_FILE = "tinymlaas.yaml"
DISTRIBUTION = "tinymlaas-ci"
INSTALL_PLACEHOLDER = "__TINYMLAAS_INSTALL__"
"""Replaced in every template file by the ``install`` requirement when ``tinymlaas init`` writes
it; ``__TINYMLAAS_INSTALL_ML__`` and ``__TINYMLAAS_INSTALL_SITE__`` by the same requirement with
the ``ml`` or ``site`` extras."""

_NAME = re.compile(r"^\s*tinymlaas[-_.]ci(\[[^\]]*\])?", re.IGNORECASE)


def default_install() -> str:
    """The exact release of the running package."""
    return f"{DISTRIBUTION}=={__version__}"


def check_install(requirement: str) -> str:
    """``requirement`` stripped, or a :class:`UsageError` when it is not one for this package."""
    requirement = requirement.strip()
    if not _NAME.match(requirement) or "\n" in requirement:
        raise UsageError(
            f"install requirement {requirement!r} does not name the package {DISTRIBUTION}",
            hint=f"e.g. '{default_install()}', "
            f"'{DISTRIBUTION} @ https://host/tinymlaas_ci-{__version__}-py3-none-any.whl' "
            f"or '{DISTRIBUTION} @ git+https://github.com/owner/repo@v{__version__}'",
        )
    return requirement


def with_extras(requirement: str, *extras: str) -> str:
    """``requirement`` with ``extras`` after the package name: ``tinymlaas-ci[ml]==1.2.0``,
    ``tinymlaas-ci[ml] @ git+https://...``. Extras already there are kept."""
    requirement = check_install(requirement)
    match = _NAME.match(requirement)
    assert match is not None
    have = [e.strip() for e in (match.group(1) or "[]")[1:-1].split(",") if e.strip()]
    wanted = list(dict.fromkeys([*have, *extras]))
    name = DISTRIBUTION + (f"[{','.join(wanted)}]" if wanted else "")
    return name + requirement[match.end() :]


def read_install(root: Path) -> str:
    """The ``install`` requirement of the repository at ``root`` (the release of the running
    package when the file or the line is missing)."""
    path = Path(root) / SETTINGS_FILE
    if not path.is_file():
        return default_install()
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}", hint="see the comments in the file") from exc
    value = data.get("install") if isinstance(data, dict) else None
    return check_install(str(value)) if value else default_install()
