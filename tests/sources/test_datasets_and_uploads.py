"""Dataset conversion (ImageFolder, parquet) to dataset.npz, and upload checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.sources.builders import (
    digit_pixels,
    imagefolder_files,
    parquet_bytes,
    png_bytes,
    write_tree,
)
from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.ml.datasets import canonical_split, convert_dataset, detect_format, load_npz
from tinymlaas_ci.sources.uploads import resolve_upload


def test_imagefolder_grayscale_values_labels_and_shapes(tmp_path):
    counts = {"train": {"0": 2, "1": 1, "10": 1}, "test": {"1": 2, "2": 1}}
    files = imagefolder_files(counts)
    write_tree(tmp_path / "ds", files)
    summary = convert_dataset(tmp_path / "ds", tmp_path / "dataset.npz")
    assert summary.format == "imagefolder"
    assert summary.labels == ["0", "1", "2", "10"]  # integer folder names, in numeric order, across splits
    assert summary.label_source == "folders (integers)"
    assert summary.splits == {"train": 4, "val": 0, "test": 3}
    assert summary.sample_shape == (1, 8, 8)
    data = load_npz(tmp_path / "dataset.npz")
    assert data["x_train"].dtype == np.uint8 and data["x_train"].shape == (4, 1, 8, 8)  # raw pixels
    assert data["y_train"].dtype == np.int64
    assert data["x_val"].shape == (0, 1, 8, 8) and data["y_val"].shape == (0,)
    assert data["labels"] == ["0", "1", "2", "10"]
    # train/0/000.png is seed 1; pixel = round(v*255/16), stored as is (scaled by preprocessing)
    np.testing.assert_array_equal(data["x_train"][0, 0], digit_pixels(1))
    assert data["y_train"].tolist() == [0, 0, 1, 3]
    assert data["y_test"].tolist() == [1, 1, 2]


def test_imagefolder_rgb_jpeg_bmp_npy_and_wrapper(tmp_path):
    root = tmp_path / "ds" / "wrapper"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "validation" / "dog").mkdir(parents=True)
    rgb = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    Image.fromarray(rgb, "RGB").save(root / "train" / "cat" / "a.bmp")
    Image.fromarray(rgb, "RGB").save(root / "validation" / "dog" / "b.png")
    (tmp_path / "ds" / ".cache").mkdir()  # hidden bookkeeping is ignored, wrapper still single
    summary = convert_dataset(tmp_path / "ds", tmp_path / "d.npz")
    assert summary.root == "wrapper" and summary.splits == {"train": 1, "val": 1, "test": 0}
    data = load_npz(tmp_path / "d.npz")
    assert data["x_train"].shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(data["x_train"][0], rgb.transpose(2, 0, 1))
    assert data["x_test"].shape == (0, 3, 4, 4)

    npy = tmp_path / "npy"
    for split, label, value in (("train", "a", 1.5), ("test", "b", -2.0)):
        (npy / split / label).mkdir(parents=True)
        np.save(npy / split / label / "s.npy", np.full((2, 3), value, dtype=np.float64))
    summary = convert_dataset(npy, tmp_path / "n.npz")
    data = load_npz(tmp_path / "n.npz")
    assert summary.sample_shape == (2, 3)
    assert data["x_test"].dtype == np.float32 and data["x_test"][0, 0, 0] == -2.0  # used as-is


def test_odd_shape_names_the_file(tmp_path):
    files = imagefolder_files({"train": {"0": 2}})
    files["train/0/zz_big.png"] = png_bytes(np.zeros((9, 9), np.uint8))
    write_tree(tmp_path / "ds", files)
    with pytest.raises(SourceError, match=r"train/0/zz_big\.png has shape \(1, 9, 9\) but .* \(1, 8, 8\)"):
        convert_dataset(tmp_path / "ds", tmp_path / "d.npz")
    assert not (tmp_path / "d.npz").exists()


def test_bad_layouts_are_explained(tmp_path):
    write_tree(
        tmp_path / "flat",
        {"a.png": png_bytes(digit_pixels(1)), "b.png": png_bytes(digit_pixels(2))},
    )
    with pytest.raises(SourceError, match=r"no known layout \(found: a\.png, b\.png\)") as info:
        detect_format(tmp_path / "flat")
    assert "train/, val/, test/" in info.value.hint
    write_tree(tmp_path / "loose", {"train/a.png": png_bytes(digit_pixels(1))})
    with pytest.raises(SourceError, match="file directly in a split folder"):
        convert_dataset(tmp_path / "loose", tmp_path / "x.npz")
    write_tree(tmp_path / "txt", {"train/0/notes.txt": b"hello"})
    with pytest.raises(SourceError, match=r"train/0/notes\.txt is not an image"):
        convert_dataset(tmp_path / "txt", tmp_path / "x.npz")
    write_tree(tmp_path / "broken", {"test/0/a.png": b"not a png"})
    with pytest.raises(SourceError, match=r"test/0/a\.png is not a readable image"):
        convert_dataset(tmp_path / "broken", tmp_path / "x.npz")


def test_parquet_hf_layout_with_label_names(tmp_path):
    imgs = [{"bytes": png_bytes(digit_pixels(i)), "path": None} for i in range(5)]
    write_tree(
        tmp_path / "pq",
        {
            "data/train-00000-of-00001.parquet": parquet_bytes(imgs[:3], [0, 1, 2], names=["zero", "one", "two"]),
            "data/test-00000-of-00001.parquet": parquet_bytes(imgs[3:], [2, 0], names=["zero", "one", "two"]),
            "README.md": b"# card",
        },
    )
    summary = convert_dataset(tmp_path / "pq", tmp_path / "d.npz")
    assert summary.format == "parquet"
    assert summary.labels == ["zero", "one", "two"]
    assert summary.splits == {"train": 3, "val": 0, "test": 2}
    data = load_npz(tmp_path / "d.npz")
    assert data["x_test"].shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(data["x_test"][0, 0], digit_pixels(3))
    assert data["y_test"].tolist() == [2, 0]


def test_parquet_split_folders_raw_bytes_and_numeric_rows(tmp_path):
    write_tree(
        tmp_path / "a",
        {
            "test/0000.parquet": parquet_bytes([png_bytes(digit_pixels(7))], [3]),
            "validation.parquet": parquet_bytes([png_bytes(digit_pixels(8))], [1]),
        },
    )
    summary = convert_dataset(tmp_path / "a", tmp_path / "a.npz")
    assert summary.splits == {"train": 0, "val": 1, "test": 1}
    assert summary.labels == ["0", "1", "2", "3"]  # no metadata: "0".."N-1"

    rows = [list(np.arange(64, dtype=float) / 64.0), list(np.ones(64))]
    write_tree(
        tmp_path / "b",
        {"test.parquet": parquet_bytes(rows, [0, 1], image_column="pixels", label_column="target")},
    )
    summary = convert_dataset(
        tmp_path / "b",
        tmp_path / "b.npz",
        image_column="pixels",
        label_column="target",
        sample_shape=[1, 8, 8],
    )
    data = load_npz(tmp_path / "b.npz")
    assert summary.sample_shape == (1, 8, 8)
    np.testing.assert_allclose(data["x_test"][0].ravel(), np.arange(64) / 64.0)  # numbers used as-is

    with pytest.raises(SourceError, match=r"has no column 'img' \(columns: pixels, target\)") as info:
        convert_dataset(tmp_path / "b", tmp_path / "c.npz", image_column="img", label_column="target")
    assert "image_column" in info.value.hint


def test_canonical_split():
    assert [canonical_split(s) for s in ("validation", "Valid", "dev", "test", "train")] == [
        "val",
        "val",
        "val",
        "test",
        "train",
    ]


def test_upload_checks(tmp_path):
    repo = tmp_path / "repo"
    (repo / "uploads" / "m").mkdir(parents=True)
    (repo / "uploads" / "m" / "model.onnx").write_bytes(b"onnx")
    up = resolve_upload(repo, "uploads/m/model.onnx")
    assert up.bytes == 4 and len(up.sha256) == 64 and up.rel == "uploads/m/model.onnx"

    with pytest.raises(SourceError, match="does not exist") as info:
        resolve_upload(repo, "uploads/m/model.pkl")
    assert "model.onnx" in info.value.hint  # what is there instead
    with pytest.raises(SourceError, match="is not a regular file"):
        resolve_upload(repo, "uploads/m")
    with pytest.raises(SourceError, match="absolute path"):
        resolve_upload(repo, "/etc/passwd")
    with pytest.raises(SourceError, match="climbs out"):
        resolve_upload(repo, "uploads/../../secret")

    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, repo / "uploads" / "m" / "escape.onnx")
    with pytest.raises(SourceError, match="resolves outside the repository"):
        resolve_upload(repo, "uploads/m/escape.onnx")
    os.symlink("model.onnx", repo / "uploads" / "m" / "alias.onnx")  # a link inside the repo is fine
    assert resolve_upload(repo, "uploads/m/alias.onnx").sha256 == up.sha256

    (repo / "uploads" / "m" / "lfs.onnx").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    with pytest.raises(SourceError, match="Git LFS pointer") as info:
        resolve_upload(repo, "uploads/m/lfs.onnx")
    assert "lfs" in info.value.hint
