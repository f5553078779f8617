"""Every file from the Hub is checked against the hash the Hub announces, through the real
``huggingface_hub`` client against the fake Hub serving corrupted bytes (``FakeRepo.corrupt``:
same length, true hashes in the headers and the tree listing)."""

from __future__ import annotations

import hashlib

import pytest

from tests.sources.builders import imagefolder_files
from tinymlaas_ci.errors import IntegrityError, SourceError
from tinymlaas_ci.sources import hub

SMALL = b"onnx-model-" + bytes(range(256)) * 4
LARGE = b"\x01\x02\x03" * 100_000


@pytest.fixture
def repo(fake_hub):
    r = fake_hub.add_repo("acme/cnn")
    r.commit({"model.onnx": SMALL, "weights/big.bin": LARGE}, large=["weights/big.bin"])
    return r


def test_intact_files_pass_and_their_sha256_is_recorded(fake_hub, repo, tmp_path):
    small = hub.download_file("acme/cnn", "model.onnx", tmp_path / "a", endpoint=fake_hub.endpoint)
    large = hub.download_file("acme/cnn", "weights/big.bin", tmp_path / "b", endpoint=fake_hub.endpoint)
    assert small.sha256 == hashlib.sha256(SMALL).hexdigest()
    assert large.sha256 == hashlib.sha256(LARGE).hexdigest()


def test_a_corrupted_git_file_is_refused_by_its_git_blob_sha1(fake_hub, repo, tmp_path):
    repo.corrupt.add("model.onnx")
    with pytest.raises(IntegrityError) as info:
        hub.download_file("acme/cnn", "model.onnx", tmp_path, endpoint=fake_hub.endpoint)
    message = str(info.value)
    assert "'model.onnx'" in message and "'acme/cnn'" in message
    assert "git blob sha1" in message and "corrupted or substituted" in message
    assert info.value.hint


def test_a_corrupted_lfs_file_is_refused_by_its_sha256(fake_hub, repo, tmp_path):
    repo.corrupt.add("weights/big.bin")
    with pytest.raises(IntegrityError) as info:
        hub.download_file("acme/cnn", "weights/big.bin", tmp_path, endpoint=fake_hub.endpoint)
    message = str(info.value)
    assert "'weights/big.bin'" in message and "'acme/cnn'" in message
    assert f"instead of {hashlib.sha256(LARGE).hexdigest()}" in message
    # It came through the redirect, like an LFS file on the real Hub.
    assert [r for r in fake_hub.requests if r.server == "cdn" and r.method == "GET"]


@pytest.mark.parametrize("large", [False, True], ids=["git", "lfs"])
def test_a_corrupted_file_in_a_dataset_snapshot_is_refused(fake_hub, tmp_path, large):
    files = imagefolder_files({"test": {"0": 2, "1": 2}})
    r = fake_hub.add_repo("acme/digits", repo_type="dataset")
    victim = sorted(files)[1]
    r.commit(files, large=[victim] if large else [])
    r.corrupt.add(victim)
    with pytest.raises(IntegrityError) as info:
        hub.download_snapshot("acme/digits", tmp_path, endpoint=fake_hub.endpoint)
    assert repr(victim) in str(info.value) and "'acme/digits'" in str(info.value)


def test_an_intact_snapshot_passes(fake_hub, tmp_path):
    files = imagefolder_files({"test": {"0": 2, "1": 2}})
    r = fake_hub.add_repo("acme/digits", repo_type="dataset")
    r.commit(files, large=[sorted(files)[0]])
    snap = hub.download_snapshot("acme/digits", tmp_path, endpoint=fake_hub.endpoint)
    assert sorted(snap.files) == sorted(files)


@pytest.mark.parametrize("name", ["../escape.bin", "sub/../../escape.bin"])
def test_a_hub_file_name_that_escapes_is_a_clear_error(fake_hub, tmp_path, name):
    r = fake_hub.add_repo("acme/sneaky", repo_type="dataset")
    r.commit({"ok.txt": b"fine", name: b"evil"})
    with pytest.raises(SourceError) as info:
        hub.download_snapshot("acme/sneaky", tmp_path / "dest", endpoint=fake_hub.endpoint)
    message = str(info.value)
    assert "'acme/sneaky'" in message and "not a plain relative path" in message
    assert "rename" in info.value.hint
    assert not (tmp_path / "escape.bin").exists()


def test_a_model_file_name_that_escapes_is_a_clear_error(fake_hub, tmp_path):
    r = fake_hub.add_repo("acme/sneaky")
    r.commit({"../model.onnx": b"evil"})
    with pytest.raises(SourceError, match=r"'acme/sneaky'.*'\.\./model\.onnx'") as info:
        hub.download_file("acme/sneaky", "../model.onnx", tmp_path / "dest", endpoint=fake_hub.endpoint)
    assert not isinstance(info.value, ValueError) or "rename" in info.value.hint
