"""Fixtures shared by the spec tests: a small valid repository in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

HOST_DEVICE = "schema: 1\nkind: local\nrunner: [self-hosted, host]\n"
RUN = """\
schema: 1
model:
  upload: uploads/m/model.onnx
dataset:
  upload: uploads/d/data.zip
"""


def make_repo(root: Path) -> Path:
    """A minimal valid repository: one device, two uploads, no runs yet."""
    (root / "devices").mkdir(parents=True)
    (root / "devices" / "host.yaml").write_text(HOST_DEVICE)
    (root / "uploads" / "m").mkdir(parents=True)
    (root / "uploads" / "m" / "model.onnx").write_bytes(b"not really onnx")
    (root / "uploads" / "d").mkdir(parents=True)
    (root / "uploads" / "d" / "data.zip").write_bytes(b"not really zip")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")
