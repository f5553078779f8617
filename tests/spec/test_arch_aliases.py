"""``arch`` accepts what ``uname -m`` prints (one alias table, in hostinfo), and the hint for an
unknown value never names a different architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinymlaas_ci.hostinfo import ARCH_ALIASES, arch, canonical_arch
from tinymlaas_ci.results.schemas import generate_schemas
from tinymlaas_ci.spec.repo import load_repo


def _device(root: Path, name: str, arch_value: str) -> None:
    (root / "devices").mkdir(parents=True, exist_ok=True)
    (root / "devices" / f"{name}.yaml").write_text(f"schema: 1\nkind: local\narch: {arch_value}\n")


@pytest.mark.parametrize(
    "spelling,expected",
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("AMD64", "amd64"), ("armv7l", "armv7"), ("arm64", "arm64")],
)
def test_uname_spellings_are_accepted(tmp_path: Path, spelling: str, expected: str):
    _device(tmp_path, "board", spelling)
    repo = load_repo(tmp_path)
    assert repo.problems == []
    assert repo.devices["board"].arch == expected


def test_a_typo_suggests_the_same_architecture_never_another(tmp_path: Path):
    _device(tmp_path, "a", "x86-64")
    _device(tmp_path, "b", "aarch")
    problems = {p.path: p for p in load_repo(tmp_path).problems}
    a, b = problems["devices/a.yaml"], problems["devices/b.yaml"]
    assert (a.line, a.column) == (3, 7)
    assert "did you mean 'amd64' (x86_64)?" in a.format()
    assert "did you mean 'x86'" not in a.format()
    assert "did you mean 'arm64' (aarch64)?" in b.format()


def test_this_machine_and_the_spec_use_one_table():
    assert canonical_arch(arch()) == arch()
    assert all(canonical_arch(spelling) == value for spelling, value in ARCH_ALIASES.items())


def test_the_json_schema_accepts_the_aliases_for_editors():
    schema = json.loads(generate_schemas()["device.schema.json"])
    text = json.dumps(schema)
    assert '"x86_64"' in text and '"aarch64"' in text
