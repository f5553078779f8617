"""The Hub source against the fake Hub, through the real huggingface_hub client."""

from __future__ import annotations

import socket

import pytest

from tests.sources.builders import digit_pixels, imagefolder_files, parquet_bytes, png_bytes
from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.sources import hub


@pytest.fixture
def model_repo(fake_hub):
    repo = fake_hub.add_repo("acme/digits-cnn")
    first = repo.commit({"model.onnx": b"onnx-v1", "README.md": b"# v1"})
    repo.tag("v1", first)
    repo.commit(
        {"model.onnx": b"onnx-v2-" + b"x" * 4096, "weights/big.bin": b"\x01" * 300_000},
        large=["weights/big.bin"],
    )
    return repo


def test_branch_resolves_to_head_commit_and_downloads(fake_hub, model_repo, tmp_path):
    got = hub.download_file("acme/digits-cnn", "model.onnx", tmp_path, revision="main", endpoint=fake_hub.endpoint)
    assert got.commit == model_repo.head
    assert got.revision == "main"
    assert got.path.read_bytes().startswith(b"onnx-v2-")
    assert got.bytes == len(got.path.read_bytes())
    # the download asked for the resolved sha, not the moving branch
    assert fake_hub.requests_to(f"/resolve/{model_repo.head}/model.onnx")


def test_tag_and_commit_resolve_to_the_tagged_commit(fake_hub, model_repo, tmp_path):
    sha = model_repo.tags["v1"]
    assert hub.resolve_revision("acme/digits-cnn", "v1", endpoint=fake_hub.endpoint) == sha
    by_tag = hub.download_file(
        "acme/digits-cnn", "model.onnx", tmp_path / "t", revision="v1", endpoint=fake_hub.endpoint
    )
    by_sha = hub.download_file(
        "acme/digits-cnn", "model.onnx", tmp_path / "c", revision=sha, endpoint=fake_hub.endpoint
    )
    assert by_tag.commit == by_sha.commit == sha
    assert by_tag.path.read_bytes() == by_sha.path.read_bytes() == b"onnx-v1"


def test_large_file_follows_redirect_to_second_server(fake_hub, model_repo, tmp_path):
    got = hub.download_file("acme/digits-cnn", "weights/big.bin", tmp_path, endpoint=fake_hub.endpoint)
    assert got.bytes == 300_000 and got.path.read_bytes() == b"\x01" * 300_000
    assert got.path == tmp_path / "weights" / "big.bin"
    assert [r for r in fake_hub.requests if r.server == "cdn" and r.method == "GET"]


def test_missing_repo_names_repo_and_says_check_id(fake_hub, tmp_path):
    with pytest.raises(SourceError, match=r"model repo 'acme/nope' was not found") as info:
        hub.download_file("acme/nope", "model.onnx", tmp_path, endpoint=fake_hub.endpoint)
    assert "check the repository id" in info.value.hint
    assert isinstance(info.value.__cause__, Exception)  # wrapped once, with the vendor cause


def test_missing_revision_names_revision(fake_hub, model_repo, tmp_path):
    with pytest.raises(SourceError, match=r"revision 'nightly' was not found in .*'acme/digits-cnn'") as info:
        hub.download_file(
            "acme/digits-cnn",
            "model.onnx",
            tmp_path,
            revision="nightly",
            endpoint=fake_hub.endpoint,
        )
    assert "branch, tag" in info.value.hint


def test_missing_file_lists_files_that_exist(fake_hub, model_repo, tmp_path):
    with pytest.raises(
        SourceError,
        match=r"file 'model.pt' in .*'acme/digits-cnn' at revision 'main' does not exist",
    ) as info:
        hub.download_file("acme/digits-cnn", "model.pt", tmp_path, endpoint=fake_hub.endpoint)
    assert "model.onnx" in info.value.hint and "weights/big.bin" in info.value.hint


def test_gated_without_token_says_request_access_and_set_token(fake_hub, tmp_path):
    fake_hub.add_repo("acme/gated", gated=True, files={"model.onnx": b"secret-model"})
    with pytest.raises(SourceError, match=r"'acme/gated'.* is gated") as info:
        hub.download_file("acme/gated", "model.onnx", tmp_path, endpoint=fake_hub.endpoint)
    assert "request access" in info.value.hint and "HF_TOKEN" in info.value.hint
    got = hub.download_file("acme/gated", "model.onnx", tmp_path, endpoint=fake_hub.endpoint, token=fake_hub.token)
    assert got.path.read_bytes() == b"secret-model"


def test_gated_with_a_token_without_access(fake_hub, tmp_path):
    fake_hub.add_repo("acme/gated", gated=True, files={"model.onnx": b"m"})
    with pytest.raises(SourceError, match="is gated") as info:
        hub.download_file("acme/gated", "model.onnx", tmp_path, endpoint=fake_hub.endpoint, token="hf_wrong")
    assert "has no access" in info.value.hint
    assert "hf_wrong" not in str(info.value)


def test_private_needs_the_token_from_hf_token(fake_hub, tmp_path, monkeypatch):
    fake_hub.add_repo("acme/private", private=True, files={"model.onnx": b"private-model"})
    with pytest.raises(SourceError, match="not found") as info:
        hub.download_file("acme/private", "model.onnx", tmp_path / "a", endpoint=fake_hub.endpoint)
    assert "HF_TOKEN" in info.value.hint
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    got = hub.download_file("acme/private", "model.onnx", tmp_path / "b")
    assert got.path.read_bytes() == b"private-model"
    assert all(r.authorized for r in fake_hub.requests_to("acme/private") if r.had_token)


def test_unreachable_hub_says_check_the_network(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match="could not reach the Hugging Face Hub") as info:
        hub.resolve_revision("acme/digits-cnn", endpoint=f"http://127.0.0.1:{port}")
    assert "network" in info.value.hint


def test_dataset_snapshot_imagefolder(fake_hub, tmp_path):
    files = imagefolder_files({"train": {"0": 2, "1": 2}, "test": {"0": 1, "1": 1}})
    repo = fake_hub.add_repo("acme/digits", repo_type="dataset", files={**files, "README.md": b"# digits"})
    repo.branch("v2", repo.commit({"test/1/extra.png": png_bytes(digit_pixels(99))}, branch="dev"))
    snap = hub.download_snapshot("acme/digits", tmp_path, endpoint=fake_hub.endpoint)
    assert snap.commit == repo.head
    assert sorted(snap.files) == sorted([*files, "README.md"])
    assert (tmp_path / "train/0/000.png").read_bytes() == files["train/0/000.png"]
    again = hub.download_snapshot("acme/digits", tmp_path / "again", revision=repo.head, endpoint=fake_hub.endpoint)
    assert again.sha256 == snap.sha256
    dev = hub.download_snapshot("acme/digits", tmp_path / "dev", revision="v2", endpoint=fake_hub.endpoint)
    assert dev.commit == repo.branches["v2"] != repo.head and "test/1/extra.png" in dev.files


def test_dataset_snapshot_parquet_and_wrong_repo_type(fake_hub, tmp_path):
    table = parquet_bytes([{"bytes": png_bytes(digit_pixels(1)), "path": None}], [0], names=["zero"])
    repo = fake_hub.add_repo(
        "acme/pq",
        repo_type="dataset",
        files={"data/test-00000-of-00001.parquet": table},
        large=["data/test-00000-of-00001.parquet"],
    )
    snap = hub.download_snapshot("acme/pq", tmp_path, endpoint=fake_hub.endpoint)
    assert snap.files == ["data/test-00000-of-00001.parquet"] and snap.commit == repo.head
    # a dataset is not a model repo: the message says which kind was looked for
    with pytest.raises(SourceError, match="model repo 'acme/pq' was not found"):
        hub.resolve_revision("acme/pq", repo_type="model", endpoint=fake_hub.endpoint)
