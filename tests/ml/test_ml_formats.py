"""Model formats: detection, loading, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml import formats, zoo
from tinymlaas_ci.ml.model_format import detect_model_format
from tinymlaas_ci.ml.zoo import DigitsCNN, TinyCNN
from tinymlaas_ci.spec.models import Architecture


def test_detects_each_format(tmp_path):
    model = TinyCNN().eval()
    torch.save(model, tmp_path / "m.pkl")
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 16, 16)), tmp_path / "m.pt")
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 16, 16),)), tmp_path / "m.pt2")
    assert detect_model_format(tmp_path / "m.pkl") == "pytorch"
    assert detect_model_format(tmp_path / "m.pt") == "torchscript"
    assert detect_model_format(tmp_path / "m.pt2") == "exported-program"
    # The declared format wins over detection.
    assert detect_model_format(tmp_path / "m.pt", "pytorch") == "pytorch"
    ep = formats.load_torch_model(tmp_path / "m.pt2", "exported-program")
    assert formats.torch_input_shape(ep) == (3, 16, 16)
    assert formats.torch_input_shape(formats.load_torch_model(tmp_path / "m.pt", "torchscript")) is None


def test_onnx_detected_by_content(tmp_path):
    formats.export_onnx(DigitsCNN(), tmp_path / "m.onnx", (1, 8, 8))
    (tmp_path / "model.bin").write_bytes((tmp_path / "m.onnx").read_bytes())
    assert detect_model_format(tmp_path / "model.bin") == "onnx"
    proto = formats.check_onnx(tmp_path / "m.onnx")
    assert formats.onnx_input_shape(proto) == (1, 8, 8)
    assert formats.count_onnx_parameters(proto) >= 38282


def test_unknown_shape_names_the_spec_field():
    with pytest.raises(TinymlError) as info:
        formats.resolve_input_shape(None, None, fmt="torchscript")
    assert "model.input_shape" in info.value.hint


def test_bare_state_dict_and_checkpoint(tmp_path):
    model = TinyCNN()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(TinymlError, match="weights only") as info:
        formats.load_torch_model(tmp_path / "sd.pt", "pytorch")
    assert "model.architecture" in info.value.hint
    arch = Architecture(python="zoo_copy.py:TinyCNN")
    (tmp_path / "zoo_copy.py").write_text(Path(zoo.__file__).read_text())
    rebuilt = formats.load_torch_model(tmp_path / "sd.pt", "pytorch", architecture=arch)
    assert torch.equal(rebuilt.head.weight, model.head.weight)
    torch.save(
        {"arch": "tinymlaas_ci.ml.zoo:TinyCNN", "kwargs": {"num_classes": 4}, "state_dict": model.state_dict()},
        tmp_path / "ckpt.pt",
    )
    loaded = formats.load_torch_model(tmp_path / "ckpt.pt", "pytorch")
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_user_class_next_to_the_pickle_is_importable(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "usernet_mod.py").write_text(
        "import torch\n"
        "class UserNet(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(6, 3)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
    )
    import subprocess
    import sys

    # Pickle it in another process so this one has never imported the user's module.
    subprocess.run(
        [sys.executable, "-c", "import torch, usernet_mod; torch.save(usernet_mod.UserNet(), 'model.pkl')"],
        cwd=folder,
        check=True,
    )
    model = formats.load_torch_model(folder / "model.pkl", "pytorch")
    assert type(model).__name__ == "UserNet"
    (folder / "usernet_mod.py").unlink()
    sys.modules.pop("usernet_mod", None)
    sys.path.remove(str(folder.resolve()))
    with pytest.raises(TinymlError, match="cannot unpickle") as info:
        formats.load_torch_model(folder / "model.pkl", "pytorch")
    assert ".py file" in info.value.hint


def test_corrupt_onnx_is_reported(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(TinymlError, match="not a valid ONNX model"):
        formats.check_onnx(bad)
