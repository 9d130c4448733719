"""ZIP archives: nested folders are expanded; hostile archives are refused before anything is read and
nothing is ever written outside the data dir."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from retrieval.errors import CorruptFileError, TooLargeError, UnsafeArchiveError
from retrieval.parse.zip import ArchiveLimits, iter_archive
from retrieval.service import RetrievalService
from tests.retrieval.files import make_zip

LIMITS = ArchiveLimits()


def test_nested_folders_are_expanded_with_their_paths() -> None:
    data = make_zip({"docs/a.md": b"# A\n\nalpha", "docs/deep/b.txt": b"beta", "docs/empty/": b""})
    assert dict(iter_archive(data, "bundle.zip", LIMITS)) == {
        "bundle.zip/docs/a.md": b"# A\n\nalpha",
        "bundle.zip/docs/deep/b.txt": b"beta",
    }


@pytest.mark.parametrize("name", ["../evil.txt", "docs/../../evil.txt", "/etc/evil.txt", "C:/evil.txt", "..\\evil.txt"])
def test_escaping_names_are_refused(name: str) -> None:
    data = make_zip({"ok.txt": b"fine", name: b"pwned"})
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        list(iter_archive(data, "slip.zip", LIMITS))


def test_links_are_refused() -> None:
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        list(iter_archive(make_zip({"a.txt": b"x"}, symlinks={"link": "/etc/passwd"}), "l.zip", LIMITS))


def test_zip_bomb_is_refused_by_ratio_before_expanding() -> None:
    data = make_zip({"bomb.txt": b"\0" * (20 * 1024 * 1024)})
    assert len(data) < 100_000
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        list(iter_archive(data, "bomb.zip", LIMITS))


def test_entry_count_and_total_size_limits() -> None:
    many = make_zip({f"f{i}.txt": b"x" for i in range(20)})
    with pytest.raises(TooLargeError, match="20 entries"):
        list(iter_archive(many, "many.zip", ArchiveLimits(max_entries=10)))
    big = make_zip({"a.txt": b"a" * 6000, "b.txt": b"b" * 6000})
    with pytest.raises(TooLargeError, match="expands to more than"):
        list(iter_archive(big, "big.zip", ArchiveLimits(max_total_bytes=10_000)))


def test_lying_header_is_caught_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "liar.zip"
    path.write_bytes(make_zip({"a.txt": b"y" * 5000}))
    with zipfile.ZipFile(path) as archive:  # shrink the declared size in the central directory
        info = archive.getinfo("a.txt")
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (100).to_bytes(4, "little")
    assert info.file_size == 5000
    with pytest.raises((UnsafeArchiveError, CorruptFileError), match="liar.zip"):
        list(iter_archive(bytes(raw), "liar.zip", LIMITS))


def test_hostile_archives_fail_their_file_and_write_nothing_outside(tmp_path: Path, service: RetrievalService) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "slip.zip").write_bytes(make_zip({"../../escaped.txt": b"pwned", "ok.txt": b"fine"}))
    (inbox / "bomb.zip").write_bytes(make_zip({"bomb.txt": b"\0" * (20 * 1024 * 1024)}))
    (inbox / "good.md").write_bytes(b"# Good\n\nA perfectly normal document about gardening.")
    before = {p for p in tmp_path.rglob("*")}
    status = service.ingest_paths("c", [inbox])
    states = {f.source.rsplit("/", 1)[-1]: (f.state, f.error) for f in status.files}
    assert states["slip.zip"][0] == "failed" and "outside the archive" in states["slip.zip"][1]
    assert states["bomb.zip"][0] == "failed" and "zip bomb" in states["bomb.zip"][1]
    assert states["good.md"] == ("done", None)
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p.is_relative_to(service.data_dir) for p in created)
    assert not any(p.name == "escaped.txt" for p in tmp_path.parent.rglob("escaped.txt"))
    assert [d.source for d in service.list_documents("c")] == [str(inbox / "good.md")]
