"""ZIP archives, checked before anything is read: entries stay inside the archive's folder (no absolute
names, no `..`), no links, and the entry count, the total expanded size and each entry's compression
ratio are limited. Entries are read into memory with a hard byte cap (headers can lie) and never written
to the filesystem."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from retrieval.errors import CorruptFileError, TooLargeError, UnsafeArchiveError


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 10_000
    max_total_bytes: int = 512 * 1024 * 1024
    max_entry_bytes: int = 64 * 1024 * 1024
    max_ratio: float = 200.0  # expanded / compressed size of one entry


def _safe_name(raw: str, archive: str) -> str:
    name = raw.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: entry {raw!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: entry {raw!r} points outside the archive ('..')")
    return str(path)


def checked_entries(archive: zipfile.ZipFile, name: str, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, str]]:
    """The file entries of `archive` with their safe names, or UnsafeArchiveError / TooLargeError /
    CorruptFileError if any entry breaks a rule (also used for DOCX, which is a zip)."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise TooLargeError(f"{name}: {len(infos)} entries, more than the limit of {limits.max_entries}")
    entries: list[tuple[zipfile.ZipInfo, str]] = []
    total = 0
    for info in infos:
        safe = _safe_name(info.filename, name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{name}: entry {info.filename!r} is a symbolic link")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise CorruptFileError(f"{name}: entry {info.filename!r} is encrypted")
        if info.file_size > limits.max_ratio * max(info.compress_size, 1) and info.file_size > 1024 * 1024:
            raise UnsafeArchiveError(
                f"{name}: entry {info.filename!r} expands {info.file_size} bytes from "
                f"{info.compress_size} (a zip bomb?)"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise TooLargeError(f"{name}: expands to more than {limits.max_total_bytes} bytes")
        entries.append((info, safe))
    return entries


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, name: str) -> bytes:
    out = bytearray()
    with archive.open(info) as stream:
        while piece := stream.read(1024 * 1024):
            out += piece
            if len(out) > cap:
                raise UnsafeArchiveError(f"{name}: entry {info.filename!r} expands past its stated size")
    return bytes(out)


def iter_archive(data: bytes, name: str, limits: ArchiveLimits) -> Iterator[tuple[str, bytes]]:
    """Yield (`name/entry/path`, bytes) for each file entry after checking the whole archive first.

    Raises UnsafeArchiveError, TooLargeError or CorruptFileError before yielding anything when an entry
    breaks a rule; an entry that expands past its declared size stops the iteration with the same error.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CorruptFileError(f"{name}: not a readable zip archive ({exc})") from exc
    with archive:
        entries = checked_entries(archive, name, limits)
        budget = limits.max_total_bytes
        for info, safe in entries:
            cap = min(info.file_size, limits.max_entry_bytes, budget)
            if info.file_size > limits.max_entry_bytes:
                raise TooLargeError(f"{name}: entry {info.filename!r} is larger than {limits.max_entry_bytes} bytes")
            try:
                content = _read_capped(archive, info, cap, name)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise CorruptFileError(f"{name}: entry {info.filename!r} cannot be read ({exc})") from exc
            budget -= len(content)
            yield f"{name}/{safe}", content
