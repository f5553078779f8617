"""Every OS error is told with the path and a hint, provoked for real: a 300-character member
name in a real zip, a full file system (a 1 MiB tmpfs), a folder another user may not write.
And the files the project writes for others are readable by them (0644 under umask 022)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from tinymlaas_ci.errors import ArchiveError, FileSystemError, os_error
from tinymlaas_ci.fs import atomic_write_bytes, atomic_write_json
from tinymlaas_ci.sources.archives import extract_archive
from tinymlaas_ci.stages.contract import error_record

ROOT = Path(__file__).resolve().parents[2]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: writing more than that gives a real ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_member_name_too_long_in_a_real_zip(tmp_path):
    name = "train/0/" + "a" * 300 + ".png"
    archive = _zip(tmp_path / "data.zip", {name: b"png"})
    with pytest.raises(ArchiveError) as info:
        extract_archive(archive, tmp_path / "out")
    message = str(info.value)
    assert "file name is too long" in message and "304 bytes" in message
    assert "'data.zip'" in message and "aaaa" in message
    assert "shorter name" in info.value.hint
    assert "[Errno" not in message
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind


def test_an_archive_that_fills_the_disk(tmp_path, full_disk):
    archive = _zip(tmp_path / "big.zip", {"train/0/x.bin": os.urandom(2 * 1024 * 1024)})
    with pytest.raises(ArchiveError) as info:
        extract_archive(archive, full_disk / "out")
    message = str(info.value)
    assert "no space left on the device" in message
    assert str(full_disk / "out") in message and "'big.zip'" in message
    assert "df -h" in info.value.hint
    assert list((full_disk / "out").iterdir()) == []


def test_an_atomic_write_on_a_full_disk_names_the_file(full_disk):
    target = full_disk / "runs" / "result.json"
    with pytest.raises(FileSystemError) as info:
        atomic_write_bytes(target, os.urandom(2 * 1024 * 1024))
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)
    assert "TINYMLAAS_WORK_DIR" in info.value.hint
    assert [p.name for p in target.parent.iterdir()] == []  # the temporary file is gone


def test_a_stage_error_record_of_a_raw_os_error_has_the_path_and_a_hint(full_disk):
    target = full_disk / "model.onnx"
    try:
        with open(target, "wb") as fh:
            fh.write(os.urandom(2 * 1024 * 1024))
    except OSError as exc:
        record = error_record("compile", exc)
    else:  # pragma: no cover
        pytest.fail("the tmpfs did not fill up")
    assert str(target) in record.message and "no space left" in record.message
    assert record.hint and "df -h" in record.hint
    assert record.type == "OSError"


def _as_another_user(target: Path) -> str:
    """Try the write in a forked child that drops to uid/gid 65534; returns what it reported."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, just the write and its message
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                atomic_write_bytes(target, b"x")
                text = "written"
            except OSError as exc:
                text = str(exc)
            os.write(write, text.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        return fh.read()


def test_permission_denied_names_the_path_and_says_what_to_check(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    target = folder / "r.json"
    if os.getuid() == 0:
        # Root may write anywhere; the same write as another user is refused for real.
        tmp_path.chmod(0o755)
        folder.chmod(0o755)
        text = _as_another_user(target)
    else:
        folder.chmod(0o555)
        try:
            atomic_write_bytes(target, b"x")
            text = "written"
        except OSError as exc:
            text = str(exc)
        finally:
            folder.chmod(0o755)
    assert str(folder) in text and "r.json" in text and "permission denied" in text, text
    assert "ls -ld" in text


def test_every_errno_names_the_path_and_gives_a_hint():
    for code in (errno.ENAMETOOLONG, errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EFBIG, errno.EMFILE, errno.EIO):
        err = os_error(OSError(code, os.strerror(code), "/data/x.bin"))
        assert "/data/x.bin" in str(err) and err.hint, code


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_for_others_are_written_0644_under_umask_022(tmp_path):
    from tinymlaas_ci.results.io import write_result
    from tinymlaas_ci.results.models import Result
    from tinymlaas_ci.results.outcomes import Outcome, write_outcomes

    old = os.umask(0o022)
    try:
        result = Result.model_validate(json.loads((ROOT / "runs/digits/results/cnn-none.json").read_text()))
        write_result(tmp_path / "runs/digits/results/cnn-none.json", result)
        write_outcomes(tmp_path / "outcomes/host.json", [Outcome(run="digits/cnn-none", status="succeeded")])
        atomic_write_json(tmp_path / "site/page.json", {"a": 1})
    finally:
        os.umask(old)
    for rel in ("runs/digits/results/cnn-none.json", "outcomes/host.json", "site/page.json"):
        assert _mode(tmp_path / rel) == 0o644, rel


def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.json") == 0o600
