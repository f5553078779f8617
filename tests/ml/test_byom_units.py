"""The pieces behind bring-your-own-model: preprocessing, labels, readers, ONNX fixes, budgets."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from tinymlaas_ci.errors import SourceError, TinymlError
from tinymlaas_ci.ml import datasets
from tinymlaas_ci.ml.preprocess import apply_preprocess, resize_bilinear, resolve_preprocess

ROOT = Path(__file__).resolve().parents[2]


def _standalone():
    spec = importlib.util.spec_from_file_location(
        "exported_infer", ROOT / "tinymlaas_ci" / "engine" / "export_runtime" / "infer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "plan",
    [
        {},
        {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]},
        {"channels": 1, "resize": [7, 5], "scale": 0.01, "mean": [0.1], "std": [0.3]},
        {"channels": 3, "resize": [32, 32], "mean": [0.5], "std": [0.5], "layout": "nhwc"},
        {"reshape": [3, 16 * 12]},
    ],
)
def test_the_exported_runtime_preprocesses_exactly_like_the_pipeline(plan):
    x = np.random.default_rng(0).integers(0, 256, size=(4, 3, 16, 12), dtype=np.uint8)
    if plan.get("channels") == 3:
        x = x[:, :1]
        plan = {**plan}
    if "reshape" in plan:
        plan = {**plan, "reshape": [x.shape[1], x.shape[2] * x.shape[3]]}
    ours = apply_preprocess(x, plan)
    theirs = _standalone().apply_preprocess(x, plan)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_bilinear_resize_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).random((2, 3, 13, 9), dtype=np.float32)
    for size in ((26, 18), (5, 4), (13, 20)):
        expect = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(resize_bilinear(x, size), expect.numpy(), atol=1e-5)


def test_plan_fields_come_from_spec_then_model_then_defaults():
    plan = resolve_preprocess({"std": [0.5]}, {"mean": [0.1], "std": [0.9], "resize": [8, 8]}, dtype=np.uint8)
    assert plan["std"] == [0.5] and plan["source"]["std"] == "spec"
    assert plan["mean"] == [0.1] and plan["source"]["mean"] == "model"
    assert plan["resize"] == [8, 8] and plan["scale"] == pytest.approx(1 / 255)
    assert resolve_preprocess(None, None, dtype=np.float32)["scale"] == 1.0


def test_folder_label_order_and_mapping():
    assert datasets.folder_label_order(["10", "2", "0", "1"]) == (["0", "1", "2", "10"], "folders (integers)")
    names, source = datasets.folder_label_order(["zero", "one", "two"])
    assert names == ["one", "two", "zero"] and "assumed" in source
    assert datasets.label_mapping(["one", "two", "zero"], ["zero", "one", "two"]) == [1, 2, 0]
    assert datasets.label_mapping(["Cat", "dog"], ["dog", "cat"]) == [1, 0]
    assert datasets.label_mapping(["0", "2"], ["a", "b", "c"]) == [0, 2]
    assert datasets.label_mapping(["x"], ["a", "b"]) is None


def test_split_reader_streams_one_split(tmp_path):
    arrays = {
        "x_train": np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3),
        "y_train": np.arange(5),
        "x_test": np.random.default_rng(0).random((7, 4), dtype=np.float32),
        "y_test": np.arange(7),
        "x_val": np.zeros((0, 4), np.float32),
        "y_val": np.zeros((0,), np.int64),
    }
    datasets.write_npz(tmp_path / "d.npz", arrays, ["a"], label_source="index")
    reader = datasets.SplitReader(tmp_path / "d.npz", "x_test")
    assert len(reader) == 7 and reader.sample_shape == (4,)
    np.testing.assert_array_equal(reader[2:5], arrays["x_test"][2:5])
    np.testing.assert_array_equal(reader.take(np.array([0, 6])).materialize(), arrays["x_test"][[0, 6]])
    doubled = datasets.SplitReader(tmp_path / "d.npz", "x_train", transform=lambda a: a.astype(np.float32) * 2)
    np.testing.assert_array_equal(doubled[0:5], arrays["x_train"] * 2.0)
    assert datasets.load_npz_meta(tmp_path / "d.npz")["sizes"] == {"train": 5, "val": 0, "test": 7}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (what a decompression bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12000, 20000])
def test_a_huge_image_header_is_refused_before_decoding(tmp_path, side):
    folder = tmp_path / "ds" / "test" / "0"
    folder.mkdir(parents=True)
    (folder / "bomb.png").write_bytes(_png_header_only(side, side))
    with pytest.raises(SourceError, match=rf"test/0/bomb\.png declares {side}x{side} pixels.*limit of \d+ pixels"):
        datasets.convert_dataset(tmp_path / "ds", tmp_path / "d.npz")


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tinymlaas_ci.ml.formats import check_onnx, onnx_external_files

    weight = onnx.numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(model, str(tmp_path / "ok.onnx"), save_as_external_data=True, location="ok.data", size_threshold=0)
    assert onnx_external_files(tmp_path / "ok.onnx") == ["ok.data"]
    check_onnx(tmp_path / "ok.onnx")
    bad = onnx.load(str(tmp_path / "ok.onnx"), load_external_data=False)
    for entry in bad.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../../etc/passwd"
    onnx.save_model(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(TinymlError, match="outside its folder"):
        check_onnx(tmp_path / "bad.onnx")
    (tmp_path / "ok.data").unlink()
    with pytest.raises(TinymlError, match="external data ok.data is missing"):
        check_onnx(tmp_path / "ok.onnx")


def test_model_meta_from_timm_and_transformers_files(tmp_path):
    from tinymlaas_ci.ml.architectures import read_model_meta

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architecture": "resnet18",
                "num_classes": 3,
                "label_names": ["cat", "dog", "owl"],
                "pretrained_cfg": {
                    "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225],
                    "input_size": [3, 96, 96],
                },
            }
        )
    )
    meta = read_model_meta(tmp_path)
    assert meta.labels == ["cat", "dog", "owl"] and meta.input_shape == (3, 96, 96)
    assert meta.preprocess == {
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resize": [96, 96],
        "channels": 3,
    }
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["X"], "model_type": "x", "id2label": {"0": "LABEL_0"}})
    )
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 64, "width": 48}})
    )
    meta = read_model_meta(tmp_path)
    assert meta.labels is None  # LABEL_0 names nothing
    assert meta.preprocess["resize"] == [64, 48] and meta.preprocess_source == "preprocessor_config.json"


def test_missing_extra_is_named_with_the_install_command(monkeypatch):
    from tinymlaas_ci.ml.architectures import import_extra

    monkeypatch.setitem(sys.modules, "timm", None)  # what Python does for a module that is absent
    with pytest.raises(TinymlError, match="needs timm, which is not installed") as info:
        import_extra("timm", "model.architecture timm:resnet18")
    assert "tinymlaas-ci[timm]" in info.value.hint


def test_timm_architecture_from_config_json(tmp_path):
    timm = pytest.importorskip("timm", reason="timm (the timm extra) does not import here")
    from safetensors.torch import save_file

    from tinymlaas_ci.ml.formats import load_model

    m = timm.create_model("resnet10t", pretrained=False, num_classes=3, in_chans=1).eval()
    save_file(m.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architecture": "resnet10t",
                "num_classes": 3,
                "in_chans": 1,
                "pretrained_cfg": {"mean": [0.5], "std": [0.5]},
            }
        )
    )
    model, meta = load_model(tmp_path / "model.safetensors", "safetensors")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in m.parameters())
    assert meta.preprocess["mean"] == [0.5]


def test_parquet_label_names_from_the_readme_dataset_info(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from tinymlaas_ci.ml.datasets import convert_dataset

    (tmp_path / "ds" / "data").mkdir(parents=True)
    table = pa.table({"image": [[0.0] * 4, [1.0] * 4], "label": pa.array([1, 0], type=pa.int64())})
    pq.write_table(table, tmp_path / "ds" / "data" / "test-00000.parquet")
    (tmp_path / "ds" / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    sequence: float32\n  - name: label\n"
        "    dtype:\n      class_label:\n        names:\n          '0': cat\n          '1': dog\n---\n# cards\n"
    )
    summary = convert_dataset(tmp_path / "ds", tmp_path / "d.npz")
    assert summary.labels == ["cat", "dog"] and summary.label_source == "README dataset_info"


def test_unsorted_graph_is_sorted(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tinymlaas_ci.ml.formats import sort_graph

    nodes = [helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Neg", ["x"], ["a"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert sort_graph(model.graph)
    assert [n.op_type for n in model.graph.node] == ["Neg", "Relu"]
    onnx.checker.check_model(model)
    assert not sort_graph(model.graph)
