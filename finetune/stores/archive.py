"""Safe unpacking of uploaded dataset archives (.zip, .tar, .tar.gz).

What `unpack_archive` guarantees and decides:

- The format comes from the magic bytes, never from the file name.
- The whole upload is refused (BadArchive) for an entry with an absolute
  path, a drive letter, a `..` component, a NUL character or a name
  component over 255 bytes, a symbolic or hard link, a device, fifo or other
  special file, an encrypted zip entry, a duplicate entry, or a corrupt
  archive. Hidden entries get the same checks before they are ignored.
- Size caps raise TooLarge: more files than `max_files`, more bytes than
  `max_bytes`, or more than `max_ratio` times the archive's own size. They
  are checked against the sizes the headers declare, ignored entries
  included, to refuse a bomb before decompressing it; and again against the
  bytes actually written. Entries of any kind are capped at
  2 * max_files + 1024, and the tar stream is read through a bounded reader,
  so a lying header cannot make tarfile buffer or decompress without limit.
- Ignored without a word: directory entries, anything under `__MACOSX/`,
  any path component starting with `.` (`.DS_Store`, `._photo.jpg`, `.git/`),
  `Thumbs.db` and `desktop.ini`.
- Nested archives are SKIPPED, neither unpacked nor refused: an entry named
  .zip/.tar/.gz/.tgz/.bz2/.xz/.7z/.rar/... or whose first bytes are an
  archive's magic is left out, so one stray archive does not fail the upload.
- Layout is `<class>/<image>`. A single top folder is stripped as a wrapper
  (`dataset/cats/1.jpg`) when something lies two levels below it and no
  image sits directly in it. After that, an image (by extension) at the top
  level or deeper than `<class>/<image>` refuses the upload, naming it.
  Deeper folders are refused rather than flattened because the usual cause
  is a `train/<class>/...` + `val/<class>/...` split, which flattening would
  silently turn into the classes "train" and "val". Non-image files outside
  `<class>/` are dropped; those inside a class folder are kept, for the
  dataset scanner to report.
- `layout="any"` (a batch of images to label, not a dataset) keeps every file at its own path, at any
  depth, with no wrapper stripped and nothing refused for its place; every other rule above holds.
- Unpacking goes to a fresh hidden directory next to `dest_dir` (whose
  parent is created if missing), renamed into place only when everything
  succeeded; on any failure it is removed, so a refused upload leaves
  nothing behind. Nothing is written anywhere else.
"""

from __future__ import annotations

import gzip
import lzma
import math
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from finetune.errors import BadArchive, TooLarge
from finetune.ml.images import IMAGE_EXTENSIONS

ArchiveFormat = Literal["zip", "tar", "tar.gz"]
EntryKind = Literal["file", "dir", "symlink", "hardlink", "special"]
Layout = Literal["classes", "any"]

NESTED_ARCHIVE_SUFFIXES = (
    ".zip",
    ".tar",
    ".gz",
    ".tgz",
    ".bz2",
    ".tbz",
    ".tbz2",
    ".xz",
    ".txz",
    ".zst",
    ".7z",
    ".rar",
)
IGNORED_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini"})

_NESTED_ARCHIVE_MAGIC = (
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
)
_TAR_BLOCK = 512
_TAR_MAGIC_OFFSET = 257
_CHUNK = 1 << 20
_MAX_SINGLE_READ = 64 << 20
_TAR_OVERHEAD_ALLOWANCE = 1 << 20
_MAX_NAME_COMPONENT_BYTES = 255
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")
_CORRUPT_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    NotImplementedError,
    UnicodeError,
    OSError,
)


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int
    max_files: int
    max_ratio: float

    @classmethod
    def from_settings(cls, settings: Any) -> ArchiveLimits:
        return cls(
            max_bytes=settings.archive_max_bytes,
            max_files=settings.archive_max_files,
            max_ratio=settings.archive_max_ratio,
        )


def unpack_archive(
    archive_path: str | Path, dest_dir: str | Path, *, limits: ArchiveLimits, layout: Layout = "classes"
) -> None:
    """Unpack a dataset archive into `dest_dir` (which must not exist) as `<class>/<image>` files
    (`layout="any"`: every file at its own path).

    The module docstring lists what is refused, skipped and ignored.
    """
    archive_path, dest = Path(archive_path), Path(dest_dir)
    if os.path.lexists(dest):
        raise FileExistsError(f"{dest} already exists")
    archive_format = detect_format(archive_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name[:100]}.", suffix=".unpacking", dir=dest.parent))
    try:
        _unpack_into(archive_path, archive_format, staging, limits, layout)
        _move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def detect_format(archive_path: str | Path) -> ArchiveFormat:
    """The archive's format, from its leading bytes."""
    with open(archive_path, "rb") as stream:
        head = stream.read(_TAR_BLOCK)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        if _is_tar_block(_gunzip_head(archive_path)):
            return "tar.gz"
        raise BadArchive("a gzip file that does not hold a tar archive: not a .zip, .tar or .tar.gz archive")
    if _is_tar_block(head):
        return "tar"
    raise BadArchive("not a .zip, .tar or .tar.gz archive")


# --- formats ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: EntryKind
    size: int
    handle: Any


def _is_tar_block(block: bytes) -> bool:
    """A ustar header, or the all-zero block an empty tar starts with."""
    if len(block) < _TAR_BLOCK:
        return False
    return block[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar" or block == bytes(_TAR_BLOCK)


def _gunzip_head(archive_path: Path) -> bytes:
    with _reading_archive(), gzip.open(archive_path, "rb") as stream:
        return stream.read(_TAR_BLOCK)


class _ZipReader:
    def __init__(self, path: Path):
        self._zip = zipfile.ZipFile(path)

    def close(self) -> None:
        self._zip.close()

    def entries(self) -> Iterator[_Entry]:
        for info in self._zip.infolist():
            yield _Entry(info.filename, _zip_entry_kind(info), info.file_size, info)

    def open(self, info: zipfile.ZipInfo) -> BinaryIO:
        if info.flag_bits & 0x1:
            raise BadArchive(f"entry {_show(info.filename)} is encrypted")
        return self._zip.open(info)


def _zip_entry_kind(info: zipfile.ZipInfo) -> EntryKind:
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if info.filename.endswith("/") or file_type == stat.S_IFDIR:
        return "dir"
    if file_type == stat.S_IFLNK:
        return "symlink"
    if file_type in (0, stat.S_IFREG):
        return "file"
    return "special"


class _TarReader:
    def __init__(self, path: Path, *, compressed: bool, max_stream_bytes: float):
        self._raw = open(path, "rb")
        try:
            inner = gzip.GzipFile(fileobj=self._raw, mode="rb") if compressed else self._raw
            stream = _BoundedReader(inner, max_stream_bytes)
            self._tar = tarfile.open(fileobj=stream, mode="r:")
        except BaseException:
            self._raw.close()
            raise

    def close(self) -> None:
        self._tar.close()
        self._raw.close()

    def entries(self) -> Iterator[_Entry]:
        for member in self._tar:
            yield _Entry(member.name, _tar_entry_kind(member), member.size, member)

    def open(self, member: tarfile.TarInfo) -> BinaryIO:
        return self._tar.extractfile(member)


def _tar_entry_kind(member: tarfile.TarInfo) -> EntryKind:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isreg():
        return "file"
    return "special"


class _BoundedReader:
    """A seekable read-only view that refuses to go past `limit` bytes or to read huge blocks at once.

    tarfile reads pax and GNU long-name headers into memory whole and seeks
    over data by decompressing it; this keeps a lying header from costing
    unbounded memory or time.
    """

    def __init__(self, stream: BinaryIO, limit: float):
        self._stream = stream
        self._limit = limit

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_SINGLE_READ:
            raise TooLarge("archive holds a header or block too large to read")
        data = self._stream.read(size)
        self._refuse_beyond(self._stream.tell())
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise BadArchive("unexpected seek in archive")
        self._refuse_beyond(offset)
        return self._stream.seek(offset)

    def tell(self) -> int:
        return self._stream.tell()

    def _refuse_beyond(self, position: int) -> None:
        if position > self._limit:
            raise TooLarge(f"archive's tar stream runs past {int(self._limit)} bytes (a compression bomb?)")


@contextmanager
def _open_reader(path: Path, archive_format: ArchiveFormat, limits: ArchiveLimits, packed_size: int):
    with _reading_archive():
        if archive_format == "zip":
            reader = _ZipReader(path)
        else:
            compressed = archive_format == "tar.gz"
            max_stream = _max_tar_stream_bytes(limits, packed_size) if compressed else math.inf
            reader = _TarReader(path, compressed=compressed, max_stream_bytes=max_stream)
    try:
        yield reader
    finally:
        reader.close()


def _max_tar_stream_bytes(limits: ArchiveLimits, packed_size: int) -> float:
    """The ratio cap, plus room for tar's own headers and padding, which compress to almost nothing."""
    return limits.max_ratio * packed_size + _TAR_OVERHEAD_ALLOWANCE


@contextmanager
def _reading_archive():
    """Turn the many ways an archive library reports damaged input into BadArchive.

    Only wraps reads of the archive: a failure to write the unpacked files
    (disk full, permissions) is not the upload's fault and propagates.
    """
    try:
        yield
    except _CORRUPT_ARCHIVE_ERRORS as error:
        raise BadArchive(f"corrupt archive: {error}") from error


# --- budget ---------------------------------------------------------------------------------


class _Budget:
    def __init__(self, limits: ArchiveLimits, packed_size: int):
        self._limits = limits
        self._packed_size = max(packed_size, 1)
        self._max_entries = 2 * limits.max_files + 1024
        self._entries = 0
        self._declared = 0
        self._written = 0

    def declare(self, entry: _Entry) -> None:
        self._entries += 1
        if self._entries > self._max_entries:
            raise TooLarge(f"archive holds more than {self._max_entries} entries")
        if entry.kind == "file":
            self._declared += max(entry.size, 0)
            self._check_bytes(self._declared, "declares")

    def check_file_count(self, count: int) -> None:
        if count > self._limits.max_files:
            raise TooLarge(f"archive holds {count} files, more than the limit of {self._limits.max_files}")

    def write(self, size: int) -> None:
        self._written += size
        self._check_bytes(self._written, "unpacks to")

    def _check_bytes(self, total: int, verb: str) -> None:
        if total > self._limits.max_bytes:
            raise TooLarge(f"archive {verb} more than the limit of {self._limits.max_bytes} bytes")
        if total > self._limits.max_ratio * self._packed_size:
            raise TooLarge(
                f"archive {verb} more than {self._limits.max_ratio:g} times its packed size "
                f"of {self._packed_size} bytes (a compression bomb?)"
            )


# --- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    parts: tuple[str, ...]
    entry: _Entry


def _plan(entries: Iterator[_Entry], budget: _Budget, layout: Layout = "classes") -> list[_Planned]:
    kept: list[tuple[tuple[str, ...], _Entry]] = []
    for entry in entries:
        budget.declare(entry)
        parts = _safe_parts(entry.name)
        _refuse_unsafe_kind(entry)
        if entry.kind == "dir":
            continue
        if not parts:
            raise BadArchive(f"entry {_show(entry.name)} has an empty name")
        if _is_ignored(parts) or _has_archive_suffix(parts[-1]):
            continue
        kept.append((parts, entry))
    planned = _apply_layout(_strip_wrapping_folder(kept)) if layout == "classes" else _keep_paths(kept)
    if not planned:
        where = "in <class>/<image> folders" if layout == "classes" else "to read"
        raise BadArchive(f"archive is empty: it holds no files {where}")
    budget.check_file_count(len(planned))
    return planned


def _safe_parts(name: str) -> tuple[str, ...]:
    if name.startswith(("/", "\\")) or _DRIVE_LETTER.match(name):
        raise BadArchive(f"entry {_show(name)} has an absolute path")
    if "\x00" in name:
        raise BadArchive(f"entry {_show(name)} has a NUL character in its name")
    parts = tuple(part for part in _SEPARATORS.split(name) if part not in ("", "."))
    if ".." in parts:
        raise BadArchive(f"entry {_show(name)} points outside the archive (..)")
    for part in parts:
        if _encoded_length(part, name) > _MAX_NAME_COMPONENT_BYTES:
            raise BadArchive(f"entry {_show(name)} has a name longer than {_MAX_NAME_COMPONENT_BYTES} bytes")
    return parts


def _encoded_length(part: str, name: str) -> int:
    try:
        return len(os.fsencode(part))
    except UnicodeError as error:
        raise BadArchive(f"entry {_show(name)} has a name that cannot be written") from error


def _refuse_unsafe_kind(entry: _Entry) -> None:
    reasons = {
        "symlink": "is a symbolic link",
        "hardlink": "is a hard link",
        "special": "is a device, fifo or other special file",
    }
    if entry.kind in reasons:
        raise BadArchive(f"entry {_show(entry.name)} {reasons[entry.kind]}")


def _is_ignored(parts: tuple[str, ...]) -> bool:
    if parts[-1].lower() in IGNORED_FILE_NAMES:
        return True
    return any(part == "__MACOSX" or part.startswith(".") for part in parts)


def _has_archive_suffix(file_name: str) -> bool:
    return file_name.lower().endswith(NESTED_ARCHIVE_SUFFIXES)


def _is_image_name(file_name: str) -> bool:
    return os.path.splitext(file_name)[1].lower() in IMAGE_EXTENSIONS


def _strip_wrapping_folder(
    kept: list[tuple[tuple[str, ...], _Entry]],
) -> list[tuple[tuple[str, ...], _Entry]]:
    """Drop a single top folder that wraps the class folders (`dataset/<class>/<image>`).

    It only counts as a wrapper when something lies two levels below it and
    no image sits directly inside it; otherwise it is a class folder.
    """
    top_folders = {parts[0] for parts, _ in kept}
    has_deep_entry = any(len(parts) >= 3 for parts, _ in kept)
    has_image_in_top_folder = any(len(parts) == 2 and _is_image_name(parts[1]) for parts, _ in kept)
    if len(top_folders) != 1 or not has_deep_entry or has_image_in_top_folder:
        return kept
    for parts, entry in kept:
        if len(parts) == 1:
            raise BadArchive(f"entry {_show(entry.name)} is both a file and a folder")
    return [(parts[1:], entry) for parts, entry in kept]


def _apply_layout(kept: list[tuple[tuple[str, ...], _Entry]]) -> list[_Planned]:
    planned: list[_Planned] = []
    seen: set[tuple[str, ...]] = set()
    for parts, entry in kept:
        if len(parts) != 2:
            _refuse_misplaced_image(parts, entry)
            continue
        _refuse_duplicate(parts, entry, seen)
        planned.append(_Planned(parts, entry))
    return planned


def _keep_paths(kept: list[tuple[tuple[str, ...], _Entry]]) -> list[_Planned]:
    """Every file at its own path (`layout="any"`); a path that is both a file and a folder is refused."""
    planned: list[_Planned] = []
    seen: set[tuple[str, ...]] = set()
    folders = {parts[:depth] for parts, _ in kept for depth in range(1, len(parts))}
    for parts, entry in kept:
        if parts in folders:
            raise BadArchive(f"entry {_show(entry.name)} is both a file and a folder")
        _refuse_duplicate(parts, entry, seen)
        planned.append(_Planned(parts, entry))
    return planned


def _refuse_duplicate(parts: tuple[str, ...], entry: _Entry, seen: set[tuple[str, ...]]) -> None:
    if parts in seen:
        raise BadArchive(f"entry {_show(entry.name)} appears more than once")
    seen.add(parts)


def _refuse_misplaced_image(parts: tuple[str, ...], entry: _Entry) -> None:
    if not _is_image_name(parts[-1]):
        return
    if len(parts) == 1:
        raise BadArchive(
            f"image {_show(entry.name)} is at the top level: put each class's images "
            "in a folder named after the class (<class>/<image>)"
        )
    raise BadArchive(
        f"image {_show(entry.name)} is nested too deep: expected <class>/<image>, "
        "one folder per class with the images directly inside"
    )


# --- extract --------------------------------------------------------------------------------


def _unpack_into(
    archive_path: Path, archive_format: ArchiveFormat, staging: Path, limits: ArchiveLimits, layout: Layout
) -> None:
    packed_size = archive_path.stat().st_size
    budget = _Budget(limits, packed_size)
    with _open_reader(archive_path, archive_format, limits, packed_size) as reader:
        with _reading_archive():
            planned = _plan(reader.entries(), budget, layout)
        written = sum(_extract_one(reader, item, staging, budget) for item in planned)
    if written == 0:
        raise BadArchive("archive is empty: it holds nothing but nested archives")


def _extract_one(reader: _ZipReader | _TarReader, item: _Planned, staging: Path, budget: _Budget) -> int:
    """Copy one entry into `staging/<its path>`; 0 when it turns out to be a nested archive."""
    with _reading_archive():
        source = reader.open(item.entry.handle)
    with source:
        chunk = _read_chunk(source)
        if _has_archive_magic(chunk):
            return 0
        target_path = staging.joinpath(*item.parts)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        with open(target_path, "xb") as target:
            while chunk:
                budget.write(len(chunk))
                target.write(chunk)
                chunk = _read_chunk(source)
    return 1


def _read_chunk(source: BinaryIO) -> bytes:
    with _reading_archive():
        return source.read(_CHUNK)


def _has_archive_magic(head: bytes) -> bool:
    if head.startswith(_NESTED_ARCHIVE_MAGIC):
        return True
    return len(head) >= _TAR_BLOCK and head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar"


def _move_into_place(staging: Path, dest: Path) -> None:
    os.chmod(staging, 0o755)
    if os.path.lexists(dest):
        raise FileExistsError(f"{dest} appeared while unpacking")
    os.rename(staging, dest)


def _show(name: str, limit: int = 120) -> str:
    shown = name if len(name) <= limit else name[: limit - 3] + "..."
    return repr(shown)
