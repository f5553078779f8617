"""Error messages carry no terminal escape codes: an ONNX export error (the exporter colours its
messages) reads as plain text in the terminal, error.json, results, emails and pages."""

from __future__ import annotations

import pytest

from tinymlaas_ci.errors import TinymlError


def test_onnx_export_error_has_no_ansi_escapes(tmp_path):
    torch = pytest.importorskip("torch")
    from tinymlaas_ci.ml.formats import export_onnx

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("\x1b[1;31mTorchExportError\x1b[0m: \x1b[33mcannot trace this\x1b[0m")

    with pytest.raises(TinymlError) as info:
        export_onnx(Broken().eval(), tmp_path / "m.onnx", (1, 8, 8))
    text = str(info.value)
    assert "TorchExportError: cannot trace this" in text
    assert "\x1b" not in text


def test_every_error_message_is_plain_text():
    err = TinymlError("\x1b[31mred\x1b[0m and \x1b[1mbold\x1b[22m", hint="fix it")
    assert err.message == "red and bold"
