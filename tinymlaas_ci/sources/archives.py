"""Safe extraction of user archives (``.zip``, ``.tar.gz``/``.tgz``, ``.tar``).

An uploaded archive is untrusted input. Extraction refuses, with an :class:`ArchiveError`
naming the archive and the member:

* paths that escape the destination (``..``), absolute paths, drive letters, NUL bytes;
* symlinks, hard links, device files, FIFOs and any other non-regular member;
* more than ``max_members`` members, more than ``max_bytes`` uncompressed, or an overall
  compression ratio above ``max_ratio`` (once at least ``ratio_floor`` bytes are involved, so
  tiny archives of compressible data are not refused).

Sizes are checked twice: the declared sizes up front, and the bytes actually written while
streaming, because a zip header can lie. Members are written into a fresh temporary folder
inside the destination and moved into place only when the whole archive was accepted, so a
refused archive leaves nothing behind.
"""

from __future__ import annotations

import copy
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tinymlaas_ci.errors import ArchiveError, TinymlError, os_error

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_RATIO_FLOOR",
    "Extracted",
    "archive_format",
    "extract_archive",
    "is_archive",
]

DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_RATIO = 200.0
DEFAULT_RATIO_FLOOR = 1024**2
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Extracted:
    """What :func:`extract_archive` wrote."""

    path: Path
    """The destination folder."""
    format: str
    """``zip``, ``tar.gz`` or ``tar``."""
    files: int
    """Regular files written."""
    bytes: int
    """Bytes written."""
    names: tuple[str, ...]
    """Relative paths of the files written, in archive order."""


def archive_format(path: str | os.PathLike) -> str | None:
    """``zip``, ``tar.gz`` or ``tar`` from the file name, else ``None``."""
    name = Path(path).name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    return None


def is_archive(path: str | os.PathLike) -> bool:
    """True when the file name says it is an archive we can extract."""
    return archive_format(path) is not None


@dataclass
class _Limits:
    archive: Path
    max_members: int
    max_bytes: int
    max_ratio: float
    ratio_floor: int
    checked_dirs: set[Path] = field(default_factory=set)

    @property
    def archive_size(self) -> int:
        return max(self.archive.stat().st_size, 1)

    def refuse(self, member: str | None, why: str, hint: str | None = None) -> ArchiveError:
        where = f"archive {self.archive.name!r}"
        if member is not None:
            where += f", member {member!r}"
        return ArchiveError(
            f"{where}: {why}",
            source=str(self.archive),
            hint=hint or "rebuild the archive with plain files and folders only",
        )

    def check_count(self, count: int, member: str) -> None:
        if count > self.max_members:
            raise self.refuse(
                member,
                f"more than {self.max_members} members",
                "split the dataset or raise the member limit",
            )

    def check_total(self, total: int, member: str, *, declared: bool) -> None:
        what = "declares" if declared else "expands to"
        if total > self.max_bytes:
            raise self.refuse(
                member,
                f"{what} more than {self.max_bytes} bytes uncompressed (size limit)",
                "keep datasets under the size limit or raise it",
            )
        ratio = total / self.archive_size
        if total >= self.ratio_floor and ratio > self.max_ratio:
            raise self.refuse(
                member,
                f"{what} {total} bytes from {self.archive_size} compressed "
                f"(ratio {ratio:.0f}:1 exceeds {self.max_ratio:.0f}:1; a decompression bomb?)",
                "store already-compressed data (PNG/JPEG) or raise the ratio limit",
            )


def _safe_name(limits: _Limits, name: str) -> PurePosixPath | None:
    """The member's relative path, or None for the archive's root entry; refuses unsafe names."""
    if "\x00" in name:
        raise limits.refuse(name, "has a NUL byte in its name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) >= 2 and unified[1] == ":" and unified[0].isalpha()):
        raise limits.refuse(name, "has an absolute path", "store paths relative to the archive root")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise limits.refuse(
            name,
            "escapes the destination with '..' (path traversal)",
            "store paths relative to the archive root without '..'",
        )
    if not parts:
        return None
    return PurePosixPath(*parts)


def _write_member(
    limits: _Limits,
    root: Path,
    rel: PurePosixPath,
    src: BinaryIO,
    member: str,
    declared: int,
    lying_ok: bool,
    total: int,
) -> int:
    """Stream one member into ``root/rel``; returns the bytes written. Counts real bytes."""
    target = root.joinpath(*rel.parts)
    try:
        return _stream_member(limits, root, target, src, member, declared, lying_ok, total)
    except OSError as exc:
        if isinstance(exc, TinymlError):
            raise
        told = os_error(exc, path=target, doing=f"extracting member {member!r} of archive {limits.archive.name!r}")
        raise ArchiveError(told.message, source=str(limits.archive), hint=told.hint) from exc


def _stream_member(
    limits: _Limits,
    root: Path,
    target: Path,
    src: BinaryIO,
    member: str,
    declared: int,
    lying_ok: bool,
    total: int,
) -> int:
    # Parents are created by us only and never through a symlink: the folder is fresh and no
    # link members are accepted, so a resolved parent must still lie under root.
    if target.parent not in limits.checked_dirs:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root.resolve()):
            raise limits.refuse(member, "would be written outside the destination")
        limits.checked_dirs.add(target.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError:
        raise limits.refuse(member, "appears twice in the archive (or clashes with a folder)") from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            block = src.read(_CHUNK)
            if not block:
                break
            written += len(block)
            if not lying_ok and written > declared:
                raise limits.refuse(
                    member,
                    f"inflates beyond the {declared} bytes its header declares (the header lies)",
                    "the archive is corrupt or hostile; rebuild it",
                )
            limits.check_total(total + written, member, declared=False)
            out.write(block)
    return written


def _zip_members(limits: _Limits, zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every zip entry before anything is written."""
    infos = zf.infolist()
    limits.check_count(len(infos), infos[limits.max_members].filename if len(infos) > limits.max_members else "")
    accepted: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    declared = 0
    for info in infos:
        rel = _safe_name(limits, info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode) if mode else 0
        if kind == stat.S_IFLNK:
            raise limits.refuse(info.filename, "is a symbolic link; links are not extracted")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise limits.refuse(info.filename, "is a device file, FIFO or socket; only regular files are extracted")
        if info.flag_bits & 0x1:
            raise limits.refuse(info.filename, "is encrypted", "store the dataset without a password")
        if info.is_dir() or kind == stat.S_IFDIR or rel is None:
            continue
        declared += info.file_size
        limits.check_total(declared, info.filename, declared=True)
        accepted.append((info, rel))
    return accepted


def _extract_zip(limits: _Limits, root: Path) -> tuple[int, int, list[str]]:
    total = 0
    names: list[str] = []
    try:
        with zipfile.ZipFile(limits.archive) as zf:
            for info, rel in _zip_members(limits, zf):
                # zipfile stops at the declared size and then fails the CRC check. Let it read
                # on to the real end of the stream (bounded by our own byte count) so that a
                # lying header is named as such.
                probe = copy.copy(info)
                probe.file_size = 1 << 62  # no cap from the header; _write_member counts
                with zf.open(probe) as src:
                    total += _write_member(limits, root, rel, src, info.filename, info.file_size, False, total)
                names.append(rel.as_posix())
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise limits.refuse(None, f"is not a readable zip file ({exc})", "re-create the archive") from exc
    return len(names), total, names


# tarfile's own "data" extraction filter (Python 3.12, and 3.11.4+ / 3.10.12+ backports): it
# knows every way a member can point outside the destination. Our checks run first, so the
# messages stay ours; the filter is a second opinion from the standard library.
_DATA_FILTER = getattr(tarfile, "data_filter", None)


def _tar_check(limits: _Limits, member: tarfile.TarInfo, root: Path) -> PurePosixPath | None:
    rel = _safe_name(limits, member.name)
    if member.issym():
        raise limits.refuse(member.name, f"is a symbolic link (to {member.linkname!r}); links are not extracted")
    if member.islnk():
        raise limits.refuse(member.name, f"is a hard link (to {member.linkname!r}); links are not extracted")
    if member.ischr() or member.isblk():
        raise limits.refuse(member.name, "is a device file; only regular files are extracted")
    if member.isfifo():
        raise limits.refuse(member.name, "is a FIFO; only regular files are extracted")
    if not (member.isreg() or member.isdir()):
        raise limits.refuse(
            member.name,
            f"has an unsupported type ({member.type!r}); only regular files are extracted",
        )
    if _DATA_FILTER is not None:
        try:
            _DATA_FILTER(member, str(root))
        except tarfile.FilterError as exc:
            raise limits.refuse(member.name, f"is refused by tarfile's data filter: {exc}") from exc
    return rel


def _tar_iter(limits: _Limits) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    try:
        with tarfile.open(limits.archive, "r:*") as tf:
            for member in tf:
                yield tf, member
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise limits.refuse(None, f"is not a readable tar file ({exc})", "re-create the archive") from exc


def _extract_tar(limits: _Limits, root: Path) -> tuple[int, int, list[str]]:
    # Pass 1: headers only. Bounded: it stops at the member or declared-size limit.
    declared = 0
    for count, (_, member) in enumerate(_tar_iter(limits), start=1):
        limits.check_count(count, member.name)
        rel = _tar_check(limits, member, root)
        if member.isreg() and rel is not None:
            declared += member.size
            limits.check_total(declared, member.name, declared=True)
    # Pass 2: write, counting the real bytes.
    total = 0
    names: list[str] = []
    for tf, member in _tar_iter(limits):
        rel = _tar_check(limits, member, root)
        if not member.isreg() or rel is None:
            continue
        src = tf.extractfile(member)
        if src is None:  # pragma: no cover - isreg() members always have data
            continue
        with src:
            total += _write_member(limits, root, rel, src, member.name, member.size, False, total)
        names.append(rel.as_posix())
    return len(names), total, names


def extract_archive(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    ratio_floor: int = DEFAULT_RATIO_FLOOR,
    log: Callable[[str], None] | None = None,
) -> Extracted:
    """Extract ``archive`` into the folder ``dest`` (created if missing), refusing anything unsafe.

    Everything is written to a fresh temporary folder inside ``dest`` first and moved into
    place only when the whole archive was accepted; on any refusal nothing is left behind.
    Raises :class:`ArchiveError` naming the archive and the member and saying why.
    """
    archive = Path(archive)
    fmt = archive_format(archive)
    if fmt is None:
        raise ArchiveError(
            f"{archive.name!r} is not a supported archive",
            source=str(archive),
            hint="use .zip, .tar.gz, .tgz or .tar",
        )
    if not archive.is_file():
        raise ArchiveError(f"archive {str(archive)!r} does not exist", source=str(archive))
    limits = _Limits(archive, max_members, max_bytes, max_ratio, ratio_floor)
    dest = Path(dest)
    try:
        return _extract_into(archive, fmt, limits, dest, log)
    except OSError as exc:
        if isinstance(exc, TinymlError):
            raise
        told = os_error(exc, path=dest, doing=f"extracting archive {archive.name!r}")
        raise ArchiveError(told.message, source=str(archive), hint=told.hint) from exc


def _extract_into(archive: Path, fmt: str, limits: _Limits, dest: Path, log: Callable[[str], None] | None) -> Extracted:
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        files, total, names = (_extract_zip if fmt == "zip" else _extract_tar)(limits, tmp)
        for entry in sorted(tmp.iterdir()):
            final = dest / entry.name
            if final.exists() or final.is_symlink():
                raise limits.refuse(
                    entry.name,
                    f"would overwrite {final.name!r} already in the destination",
                    "extract into an empty folder",
                )
        for entry in sorted(tmp.iterdir()):
            os.rename(entry, dest / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log is not None:
        log(f"extracted {files} files ({total} bytes) from {archive.name}")
    return Extracted(path=dest, format=fmt, files=files, bytes=total, names=tuple(names))
