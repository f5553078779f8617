"""Safe extraction: a corpus of hostile archives built here, each refused with its own reason,
and the destination left empty; valid archives (with a wrapper folder) extracted."""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.sources.builders import zip_bytes
from tinymlaas_ci.errors import ArchiveError
from tinymlaas_ci.sources.archives import archive_format, extract_archive

BOMB = 8 * 1024 * 1024  # zeros: deflate/gzip squeeze them ~1000:1


def _zip(tmp: Path, name: str, build) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        build(zf)
    path = tmp / name
    path.write_bytes(buf.getvalue())
    return path


def _tar(tmp: Path, name: str, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    path = tmp / name
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _ti(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def _zip_symlink(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("data/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "/etc/passwd")


def _zip_fifo(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("data/pipe")
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    zf.writestr(info, b"")


def _lying_zip(tmp: Path) -> Path:
    """One deflated member of 2 MiB whose local and central headers both claim 100 bytes."""
    data = bytearray(zip_bytes({"train/0/a.npy": b"\x00" * (2 * 1024 * 1024)}))
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 100)
    struct.pack_into("<I", data, central + 24, 100)
    path = tmp / "liar.zip"
    path.write_bytes(bytes(data))
    return path


HOSTILE = {
    "zip-traversal": (
        lambda t: _zip(t, "a.zip", lambda z: z.writestr("../evil.txt", b"x")),
        {},
        r"member '\.\./evil\.txt': escapes the destination with '\.\.'",
    ),
    "zip-deep-traversal": (
        lambda t: _zip(t, "a.zip", lambda z: z.writestr("train/../../evil.txt", b"x")),
        {},
        r"path traversal",
    ),
    "zip-absolute": (
        lambda t: _zip(t, "a.zip", lambda z: z.writestr("/tmp/evil.txt", b"x")),
        {},
        r"member '/tmp/evil\.txt': has an absolute path",
    ),
    "zip-drive": (
        lambda t: _zip(t, "a.zip", lambda z: z.writestr("C:\\evil.txt", b"x")),
        {},
        r"has an absolute path",
    ),
    "zip-symlink": (
        lambda t: _zip(t, "a.zip", _zip_symlink),
        {},
        r"member 'data/link': is a symbolic link",
    ),
    "zip-fifo": (
        lambda t: _zip(t, "a.zip", _zip_fifo),
        {},
        r"member 'data/pipe': is a device file, FIFO",
    ),
    "zip-too-many": (
        lambda t: _zip(t, "a.zip", lambda z: [z.writestr(f"f{i}.txt", b"x") for i in range(11)]),
        {"max_members": 10},
        r"more than 10 members",
    ),
    "zip-bomb": (
        lambda t: _zip(t, "a.zip", lambda z: z.writestr("zeros.bin", b"\x00" * BOMB)),
        {},
        r"member 'zeros\.bin': declares 8388608 bytes from \d+ compressed \(ratio \d+:1 exceeds 200:1",
    ),
    "zip-too-big": (
        lambda t: _zip(t, "a.zip", lambda z: z.writestr("a.bin", bytes(range(256)) * 64)),
        {"max_bytes": 10_000},
        r"declares more than 10000 bytes uncompressed",
    ),
    "zip-lying-header": (
        _lying_zip,
        {},
        r"member 'train/0/a\.npy': inflates beyond the 100 bytes its header declares",
    ),
    "tar-traversal": (
        lambda t: _tar(t, "a.tar.gz", [(_ti("ok.txt"), b"ok"), (_ti("../evil.txt"), b"x")]),
        {},
        r"archive 'a\.tar\.gz', member '\.\./evil\.txt': escapes the destination",
    ),
    "tar-absolute": (
        lambda t: _tar(t, "a.tgz", [(_ti("/etc/cron.d/evil"), b"x")]),
        {},
        r"member '/etc/cron\.d/evil': has an absolute path",
    ),
    "tar-symlink": (
        lambda t: _tar(t, "a.tar", [(_ti("train/l", tarfile.SYMTYPE, linkname="/etc/passwd"), None)], "w"),
        {},
        r"member 'train/l': is a symbolic link \(to '/etc/passwd'\)",
    ),
    "tar-hardlink": (
        lambda t: _tar(
            t,
            "a.tar.gz",
            [(_ti("a.txt"), b"a"), (_ti("b.txt", tarfile.LNKTYPE, linkname="a.txt"), None)],
        ),
        {},
        r"member 'b\.txt': is a hard link",
    ),
    "tar-device": (
        lambda t: _tar(t, "a.tar.gz", [(_ti("dev/sda", tarfile.CHRTYPE, devmajor=8, devminor=0), None)]),
        {},
        r"member 'dev/sda': is a device file",
    ),
    "tar-fifo": (
        lambda t: _tar(t, "a.tar.gz", [(_ti("pipe", tarfile.FIFOTYPE), None)]),
        {},
        r"member 'pipe': is a FIFO",
    ),
    "tar-too-many": (
        lambda t: _tar(t, "a.tar.gz", [(_ti(f"f{i}"), b"x") for i in range(11)]),
        {"max_members": 10},
        r"member 'f10': more than 10 members",
    ),
    "tar-bomb": (
        lambda t: _tar(t, "a.tar.gz", [(_ti("zeros.bin"), b"\x00" * BOMB)]),
        {},
        r"ratio \d+:1 exceeds 200:1; a decompression bomb",
    ),
    "tar-too-big": (
        lambda t: _tar(t, "a.tar", [(_ti("a"), b"a" * 6000), (_ti("b"), b"b" * 6000)], "w"),
        {"max_bytes": 10_000},
        r"member 'b': declares more than 10000 bytes",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_leaves_nothing(case, tmp_path):
    build, limits, message = HOSTILE[case]
    src = tmp_path / "src"
    src.mkdir()
    archive = build(src)
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match=message) as info:
        extract_archive(archive, dest, **limits)
    assert archive.name in str(info.value)
    assert info.value.hint
    assert list(dest.iterdir()) == []
    # nothing was written next to the destination either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


def test_streamed_bytes_are_counted_even_when_headers_are_within_limits(tmp_path):
    # Declared sizes pass (ratio floor not reached), but actual bytes cross max_bytes while streaming.
    archive = _lying_zip(tmp_path)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="header lies|expands to more than"):
        extract_archive(archive, dest, max_bytes=1000)
    assert list(dest.iterdir()) == []


def test_not_an_archive_and_corrupt_archive(tmp_path):
    with pytest.raises(ArchiveError, match="not a supported archive"):
        extract_archive(tmp_path / "data.rar", tmp_path / "d")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(ArchiveError, match="'bad.zip': is not a readable zip file"):
        extract_archive(bad, tmp_path / "d2")
    assert list((tmp_path / "d2").iterdir()) == []


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "tgz", "tar"])
def test_valid_archive_with_wrapper_folder_extracts(fmt, tmp_path):
    files = {
        "digits/train/0/a.png": b"A" * 10,
        "digits/test/1/b.png": b"B" * 20,
        "digits/README.md": b"hi",
    }
    if fmt == "zip":
        archive = tmp_path / "ds.zip"
        archive.write_bytes(zip_bytes(files))
    else:
        members = [(_ti("digits", tarfile.DIRTYPE), None)] + [(_ti(n), d) for n, d in files.items()]
        archive = _tar(tmp_path, f"ds.{fmt}", members, "w" if fmt == "tar" else "w:gz")
    assert archive_format(archive) == ("tar.gz" if fmt == "tgz" else fmt)
    logs: list[str] = []
    out = extract_archive(archive, tmp_path / "dest", log=logs.append)
    assert out.files == 3 and out.bytes == 32
    for name, data in files.items():
        assert (tmp_path / "dest" / name).read_bytes() == data
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["digits"]  # no temp folder left
    assert logs and "extracted 3 files" in logs[0]


def test_small_compressible_archive_is_not_a_bomb(tmp_path):
    # 100 KiB of zeros compresses ~1000:1 but is far below the ratio floor: legitimate.
    archive = tmp_path / "z.zip"
    archive.write_bytes(zip_bytes({"train/0/zeros.npy": b"\x00" * 100_000}))
    assert extract_archive(archive, tmp_path / "d").bytes == 100_000


def test_refuses_to_overwrite_existing_files(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"x.txt": b"new"}))
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "x.txt").write_bytes(b"old")
    with pytest.raises(ArchiveError, match="would overwrite"):
        extract_archive(archive, dest)
    assert (dest / "x.txt").read_bytes() == b"old"
    assert [p.name for p in dest.iterdir()] == ["x.txt"]
