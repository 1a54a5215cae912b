import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune.errors import BadArchive, TooLarge
from finetune.settings import Settings
from finetune.stores import archive as archive_module
from finetune.stores.archive import ArchiveLimits, detect_format, unpack_archive
from tests.helpers import make_image_bytes

RED_PNG = make_image_bytes("red", 8)
BLUE_PNG = make_image_bytes("blue", 8)
ROOMY = ArchiveLimits(max_bytes=50_000_000, max_files=1000, max_ratio=200.0)
TWO_CLASSES = {"cats/a.png": RED_PNG, "cats/b.png": RED_PNG, "dogs/c.png": BLUE_PNG}
FORMATS = ["zip", "tar", "tar.gz"]


# --- building archives ------------------------------------------------------------------------


def write_zip(path: Path, entries: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return path


def zip_with_infos(path: Path, infos: list[tuple[zipfile.ZipInfo, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as archive:
            for info, content in infos:
                archive.writestr(info, content)
    return path


def zip_info(name: str, file_type: int, permissions: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (file_type | permissions) << 16
    return info


def tar_file_info(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def tar_special_info(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], *, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return path


def write_archive(path: Path, archive_format: str, entries: dict[str, bytes]) -> Path:
    if archive_format == "zip":
        return write_zip(path, entries)
    members = [tar_file_info(name, content) for name, content in entries.items()]
    return write_tar(path, members, gz=archive_format == "tar.gz")


# --- the scene every test unpacks into ----------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with a digest of its content (or its kind)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = "symlink"
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


class Scene:
    """An uploads folder and a data folder holding another dataset and a file, next to `dest`."""

    def __init__(self, root: Path):
        self.root = root
        self.uploads = root / "uploads"
        self.data_dir = root / "data"
        self.dest = self.data_dir / "new-dataset"
        self.uploads.mkdir()
        (self.data_dir / "other-dataset" / "cats").mkdir(parents=True)
        (self.data_dir / "other-dataset" / "cats" / "keep.png").write_bytes(RED_PNG)
        (self.data_dir / "sibling.txt").write_text("untouched")

    def archive(self, name: str) -> Path:
        return self.uploads / name

    def unpack(self, archive_path: Path, limits: ArchiveLimits = ROOMY, layout: str = "classes") -> None:
        self.before = snapshot(self.root)
        unpack_archive(archive_path, self.dest, limits=limits, layout=layout)

    def unpacked(self) -> dict[str, bytes]:
        return {
            str(path.relative_to(self.dest)): path.read_bytes()
            for path in sorted(self.dest.rglob("*"))
            if path.is_file()
        }

    def assert_only_dest_added(self) -> None:
        after = snapshot(self.root)
        prefix = str(self.dest.relative_to(self.root))
        added = {path for path in after.keys() - self.before.keys() if path != prefix}
        assert all(path.startswith(prefix + os.sep) for path in added), added
        assert {path: after[path] for path in self.before} == self.before

    def assert_refused_cleanly(self) -> None:
        assert not os.path.lexists(self.dest)
        assert sorted(os.listdir(self.data_dir)) == ["other-dataset", "sibling.txt"]
        assert (self.data_dir / "sibling.txt").read_text() == "untouched"
        assert snapshot(self.root) == self.before


@pytest.fixture
def scene(tmp_path) -> Scene:
    return Scene(tmp_path)


def refuse(scene: Scene, archive_path: Path, error=BadArchive, match: str | None = None, limits=ROOMY):
    with pytest.raises(error, match=match) as caught:
        scene.unpack(archive_path, limits)
    scene.assert_refused_cleanly()
    return caught.value


# --- limits ----------------------------------------------------------------------------------


def test_limits_come_from_settings():
    limits = ArchiveLimits.from_settings(Settings(archive_max_bytes=123, archive_max_files=4, archive_max_ratio=5.5))
    assert limits == ArchiveLimits(max_bytes=123, max_files=4, max_ratio=5.5)


# --- happy paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("archive_format", FORMATS)
@pytest.mark.parametrize("wrapper", ["", "my-dataset/"])
def test_unpacks_class_folders(scene, archive_format, wrapper):
    entries = {wrapper + name: content for name, content in TWO_CLASSES.items()}
    path = write_archive(scene.archive("upload.bin"), archive_format, entries)
    scene.unpack(path)
    assert scene.unpacked() == TWO_CLASSES
    scene.assert_only_dest_added()
    assert not [name for name in os.listdir(scene.data_dir) if "unpacking" in name]


@pytest.mark.parametrize(
    "archive_format, misleading_name",
    [("tar.gz", "upload.zip"), ("zip", "upload.tar.gz"), ("tar", "upload.zip")],
)
def test_format_comes_from_magic_bytes_not_the_name(scene, archive_format, misleading_name):
    path = write_archive(scene.archive(misleading_name), archive_format, TWO_CLASSES)
    assert detect_format(path) == archive_format
    scene.unpack(path)
    assert scene.unpacked() == TWO_CLASSES


def test_tar_made_from_dot_with_directory_entries(scene):
    members = [tar_special_info(".", tarfile.DIRTYPE), tar_special_info("./cats", tarfile.DIRTYPE)]
    members += [tar_file_info("./" + name, content) for name, content in TWO_CLASSES.items()]
    scene.unpack(write_tar(scene.archive("dot.tar"), members))
    assert scene.unpacked() == TWO_CLASSES


def test_stored_zip_with_directory_entries_and_backslashes(scene):
    path = write_zip(
        scene.archive("windows.zip"),
        {"cats/": b"", "cats\\a.png": RED_PNG, "dogs\\c.png": BLUE_PNG},
        compression=zipfile.ZIP_STORED,
    )
    scene.unpack(path)
    assert scene.unpacked() == {"cats/a.png": RED_PNG, "dogs/c.png": BLUE_PNG}


def test_unicode_names(scene):
    entries = {"chats/été.png": RED_PNG, "狗/🐶.png": BLUE_PNG}
    scene.unpack(write_zip(scene.archive("unicode.zip"), entries))
    assert scene.unpacked() == entries


def test_hidden_and_system_files_are_ignored(scene):
    entries = {
        **TWO_CLASSES,
        "__MACOSX/cats/._a.png": b"resource fork",
        "__MACOSX/._cats": b"resource fork",
        "cats/.DS_Store": b"finder",
        "cats/._a.png": b"apple double",
        ".hidden/x.png": RED_PNG,
        "dogs/Thumbs.db": b"windows",
        "dogs/DESKTOP.INI": b"windows",
        "dogs/.git/objects/ab": b"git",
    }
    scene.unpack(write_zip(scene.archive("mac.zip"), entries))
    assert scene.unpacked() == TWO_CLASSES


def test_macos_zip_with_wrapper_and_macosx_twin_is_stripped(scene):
    entries = {"set/" + name: content for name, content in TWO_CLASSES.items()}
    entries.update({"__MACOSX/set/cats/._a.png": b"fork", "set/.DS_Store": b"finder"})
    scene.unpack(write_zip(scene.archive("mac.zip"), entries))
    assert scene.unpacked() == TWO_CLASSES


def test_nested_archives_are_skipped_by_name_and_by_magic(scene):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as nested:
        nested.writestr("cats/x.png", RED_PNG)
    entries = {
        **TWO_CLASSES,
        "cats/inner.zip": inner.getvalue(),
        "cats/more.tar.gz": b"whatever",
        "cats/backup.7z": b"7z",
        "dogs/disguised.png": inner.getvalue(),
        "dogs/gzipped.jpg": gzip.compress(b"data"),
    }
    scene.unpack(write_zip(scene.archive("nested.zip"), entries))
    assert scene.unpacked() == TWO_CLASSES


def test_non_images_outside_class_folders_are_dropped_and_inside_kept(scene):
    entries = {
        **TWO_CLASSES,
        "README.md": b"read me",
        "cats/notes.txt": b"kept for the scanner",
        "cats/extra/labels.csv": b"x",
    }
    scene.unpack(write_zip(scene.archive("readme.zip"), entries))
    assert scene.unpacked() == {**TWO_CLASSES, "cats/notes.txt": b"kept for the scanner"}


def test_a_wrapper_with_a_readme_beside_the_class_folders_is_still_stripped(scene):
    entries = {"set/" + name: content for name, content in TWO_CLASSES.items()}
    entries["set/README.txt"] = b"about"
    scene.unpack(write_zip(scene.archive("wrapped.zip"), entries))
    assert scene.unpacked() == TWO_CLASSES


def test_a_single_class_folder_is_not_taken_for_a_wrapper(scene):
    entries = {"cats/a.png": RED_PNG, "cats/b.png": RED_PNG, "cats/raw/notes.txt": b"x"}
    scene.unpack(write_zip(scene.archive("one.zip"), entries))
    assert scene.unpacked() == {"cats/a.png": RED_PNG, "cats/b.png": RED_PNG}


def test_missing_parent_directory_is_created(tmp_path):
    path = write_zip(tmp_path / "upload.zip", TWO_CLASSES)
    dest = tmp_path / "deep" / "data" / "ds"
    unpack_archive(path, dest, limits=ROOMY)
    assert sorted(p.name for p in dest.iterdir()) == ["cats", "dogs"]


def test_exactly_max_files_is_allowed(scene):
    limits = ArchiveLimits(max_bytes=10_000_000, max_files=3, max_ratio=200)
    scene.unpack(write_zip(scene.archive("three.zip"), TWO_CLASSES), limits)
    assert len(scene.unpacked()) == 3


@pytest.mark.parametrize("existing", ["dir", "file", "symlink"])
def test_existing_destination_is_refused_and_left_alone(scene, existing):
    path = write_zip(scene.archive("upload.zip"), TWO_CLASSES)
    if existing == "dir":
        scene.dest.mkdir()
        (scene.dest / "mine.txt").write_text("mine")
    elif existing == "file":
        scene.dest.write_text("mine")
    else:
        scene.dest.symlink_to(scene.data_dir / "other-dataset")
    before = snapshot(scene.root)
    with pytest.raises(FileExistsError):
        unpack_archive(path, scene.dest, limits=ROOMY)
    assert snapshot(scene.root) == before


# --- refused: unsafe entries -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../evil.png", "cats/../../evil.png", "cats/../../../tmp/evil.png", "..\\evil.png", "cats/..", ".."],
)
@pytest.mark.parametrize("archive_format", FORMATS)
def test_parent_references_are_refused(scene, archive_format, name):
    path = write_archive(scene.archive("evil.bin"), archive_format, {**TWO_CLASSES, name: RED_PNG})
    error = refuse(scene, path, match=r"outside the archive")
    assert error.status_code == 400
    assert not (scene.root / "evil.png").exists()
    assert not (scene.data_dir / "evil.png").exists()


@pytest.mark.parametrize(
    "name", ["/etc/evil.png", "/cats/a.png", "\\evil.png", "C:\\evil.png", "c:/evil.png", "C:evil.png"]
)
@pytest.mark.parametrize("archive_format", FORMATS)
def test_absolute_paths_and_drive_letters_are_refused(scene, archive_format, name):
    if archive_format == "zip":
        path = zip_with_infos(scene.archive("abs.zip"), [(zipfile.ZipInfo(name), RED_PNG)])
    else:
        members = [tar_file_info(name, RED_PNG)]
        path = write_tar(scene.archive("abs.tar"), members, gz=archive_format == "tar.gz")
    refuse(scene, path, match="absolute path")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../sibling.txt", "a.png"])
def test_tar_symlinks_are_refused(scene, target):
    members = [tar_file_info(name, content) for name, content in TWO_CLASSES.items()]
    members.append(tar_special_info("cats/link.png", tarfile.SYMTYPE, target))
    refuse(scene, write_tar(scene.archive("link.tar"), members), match="symbolic link")


def test_tar_symlink_followed_by_a_write_through_it_is_refused(scene):
    members = [
        tar_special_info("cats", tarfile.SYMTYPE, str(scene.data_dir)),
        tar_file_info("cats/escaped.png", RED_PNG),
        tar_file_info("dogs/c.png", BLUE_PNG),
    ]
    refuse(scene, write_tar(scene.archive("link.tar.gz"), members, gz=True), match="symbolic link")
    assert not (scene.data_dir / "escaped.png").exists()


def test_tar_hard_links_are_refused(scene):
    members = [tar_file_info(name, content) for name, content in TWO_CLASSES.items()]
    members.append(tar_special_info("dogs/hard.png", tarfile.LNKTYPE, "cats/a.png"))
    refuse(scene, write_tar(scene.archive("hard.tar"), members), match="hard link")


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_tar_devices_and_fifos_are_refused(scene, kind):
    members = [tar_file_info(name, content) for name, content in TWO_CLASSES.items()]
    members.append(tar_special_info("cats/device.png", kind))
    refuse(scene, write_tar(scene.archive("dev.tar"), members), match="special file")


def test_zip_symlink_is_refused(scene):
    infos = [(zipfile.ZipInfo(name), content) for name, content in TWO_CLASSES.items()]
    infos.append((zip_info("cats/link.png", stat.S_IFLNK, 0o777), b"../../sibling.txt"))
    refuse(scene, zip_with_infos(scene.archive("link.zip"), infos), match="symbolic link")


@pytest.mark.parametrize("file_type", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_zip_special_files_are_refused(scene, file_type):
    infos = [(zipfile.ZipInfo(name), content) for name, content in TWO_CLASSES.items()]
    infos.append((zip_info("cats/fifo.png", file_type), b""))
    refuse(scene, zip_with_infos(scene.archive("fifo.zip"), infos), match="special file")


def test_hidden_entries_still_may_not_escape_or_link(scene):
    infos = [(zipfile.ZipInfo(name), content) for name, content in TWO_CLASSES.items()]
    infos.append((zipfile.ZipInfo("__MACOSX/../../evil"), b"x"))
    refuse(scene, zip_with_infos(scene.archive("sneaky.zip"), infos), match="outside")


def mark_encrypted(path: Path, name: bytes) -> None:
    """Set the 'encrypted' flag of `name` in both its zip headers: zipfile cannot write encrypted entries."""
    data = bytearray(path.read_bytes())
    for signature, flag_at, length_at, name_at in [(b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)]:
        start = data.find(signature)
        while start != -1:
            length = int.from_bytes(data[start + length_at : start + length_at + 2], "little")
            if data[start + name_at : start + name_at + length] == name:
                data[start + flag_at] |= 0x1
            start = data.find(signature, start + 1)
    path.write_bytes(bytes(data))


def test_encrypted_zip_entry_is_refused(scene):
    path = write_zip(scene.archive("secret.zip"), {**TWO_CLASSES, "cats/secret.png": RED_PNG})
    mark_encrypted(path, b"cats/secret.png")
    assert zipfile.ZipFile(path).getinfo("cats/secret.png").flag_bits & 0x1
    refuse(scene, path, match="encrypted")


def test_duplicate_entries_are_refused(scene):
    infos = [(zipfile.ZipInfo(name), content) for name, content in TWO_CLASSES.items()]
    infos.append((zipfile.ZipInfo("cats/a.png"), BLUE_PNG))
    refuse(scene, zip_with_infos(scene.archive("dup.zip"), infos), match="more than once")


def test_nul_character_in_a_tar_name_is_refused(scene):
    members = [tar_file_info(name, content) for name, content in TWO_CLASSES.items()]
    members.append(tar_file_info("cats/" + "x" * 120 + "\x00.png", RED_PNG))
    refuse(scene, write_tar(scene.archive("nul.tar"), members), match="NUL")


def test_name_component_over_255_bytes_is_refused(scene):
    path = write_zip(scene.archive("long.zip"), {**TWO_CLASSES, "cats/" + "é" * 200 + ".png": RED_PNG})
    refuse(scene, path, match="longer than 255 bytes")


# --- refused: not an archive, empty, corrupt --------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"this is a text file, not a zip\n" * 40,
        b"",
        b"PK",
        b"\x89PNG\r\n\x1a\n" + bytes(600),
        os.urandom(2048),
    ],
    ids=["text", "zero-bytes", "two-bytes", "png", "random"],
)
def test_not_an_archive_despite_a_zip_name(scene, content):
    path = scene.archive("upload.zip")
    path.write_bytes(content)
    refuse(scene, path, match=r"not a \.zip, \.tar or \.tar\.gz archive")


def test_gzip_that_does_not_hold_a_tar_is_refused(scene):
    path = scene.archive("upload.tar.gz")
    path.write_bytes(gzip.compress(b"plain text, no tar inside" * 100))
    refuse(scene, path, match="does not hold a tar")


@pytest.mark.parametrize("archive_format", FORMATS)
def test_empty_archive_is_refused(scene, archive_format):
    path = write_archive(scene.archive("empty.bin"), archive_format, {})
    refuse(scene, path, match="archive is empty")


def test_archive_of_only_ignored_and_dropped_entries_is_empty(scene):
    entries = {
        "__MACOSX/._x": b"x",
        ".DS_Store": b"x",
        "README.md": b"x",
        "cats/": b"",
        "dogs/Thumbs.db": b"x",
    }
    refuse(scene, write_zip(scene.archive("nothing.zip"), entries), match="archive is empty")


def test_archive_of_only_nested_archives_is_empty(scene):
    entries = {"cats/a.zip": b"x", "dogs/b.png": gzip.compress(b"not an image")}
    refuse(scene, write_zip(scene.archive("nested.zip"), entries), match="archive is empty")


@pytest.mark.parametrize("archive_format", FORMATS)
def test_truncated_archive_is_refused(scene, archive_format):
    big = {f"cats/{n}.bin": os.urandom(20_000) for n in range(4)}
    path = write_archive(scene.archive("cut.bin"), archive_format, big)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refuse(scene, path, match="corrupt|empty")


def test_zip_with_a_damaged_member_is_refused(scene):
    path = write_zip(scene.archive("damaged.zip"), {**TWO_CLASSES, "dogs/noise.bin": os.urandom(5000)})
    data = bytearray(path.read_bytes())
    offset = data.index(b"dogs/noise.bin") + 40
    data[offset : offset + 200] = bytes(200)
    path.write_bytes(bytes(data))
    refuse(scene, path, match="corrupt")


# --- refused: layout ------------------------------------------------------------------------


@pytest.mark.parametrize("archive_format", FORMATS)
def test_images_at_the_top_level_are_refused(scene, archive_format):
    path = write_archive(scene.archive("flat.bin"), archive_format, {"a.png": RED_PNG, "b.jpg": BLUE_PNG})
    refuse(scene, path, match=r"'a.png' is at the top level.*<class>/<image>")


def test_top_level_images_beside_class_folders_are_refused(scene):
    path = write_zip(scene.archive("mixed.zip"), {**TWO_CLASSES, "stray.png": RED_PNG})
    refuse(scene, path, match="top level")


def test_top_level_images_inside_a_wrapper_are_refused(scene):
    entries = {"set/a.png": RED_PNG, "set/cats/b.png": RED_PNG}
    refuse(scene, write_zip(scene.archive("wrapped.zip"), entries), match="nested too deep")


@pytest.mark.parametrize(
    "entries",
    [
        {"cats/a.png": RED_PNG, "dogs/2019/c.png": BLUE_PNG},
        {"train/cats/a.png": RED_PNG, "val/cats/b.png": RED_PNG},
        {"set/train/cats/a.png": RED_PNG, "set/val/dogs/b.png": BLUE_PNG},
    ],
    ids=["sub-folder", "train-val", "wrapped-train-val"],
)
def test_images_nested_deeper_than_class_folders_are_refused(scene, entries):
    refuse(scene, write_zip(scene.archive("deep.zip"), entries), match="nested too deep")


def test_a_file_that_is_also_the_wrapping_folder_is_refused(scene):
    entries = {"set": b"a file", "set/cats/a.png": RED_PNG}
    refuse(scene, write_zip(scene.archive("clash.zip"), entries), match="both a file and a folder")


# --- refused: too large ----------------------------------------------------------------------


@pytest.mark.parametrize("archive_format", ["zip", "tar.gz"])
def test_compression_bomb_over_the_ratio_is_too_large(scene, archive_format):
    entries = {**TWO_CLASSES, "cats/zeros.bin": bytes(5_000_000)}
    path = write_archive(scene.archive("bomb.bin"), archive_format, entries)
    error = refuse(scene, path, TooLarge, match="times its packed size")
    assert error.status_code == 413


@pytest.mark.parametrize("archive_format", FORMATS)
def test_more_bytes_than_max_bytes_is_too_large(scene, archive_format):
    limits = ArchiveLimits(max_bytes=30_000, max_files=1000, max_ratio=1e9)
    entries = {**TWO_CLASSES, "cats/noise.bin": os.urandom(40_000)}
    path = write_archive(scene.archive("big.bin"), archive_format, entries)
    refuse(scene, path, TooLarge, match="30000 bytes", limits=limits)


def test_ignored_entries_count_towards_the_decompression_limits(scene):
    entries = {**TWO_CLASSES, "__MACOSX/zeros": bytes(5_000_000)}
    refuse(scene, write_archive(scene.archive("bomb.tgz"), "tar.gz", entries), TooLarge)


@pytest.mark.parametrize("archive_format", FORMATS)
def test_more_files_than_max_files_is_too_large(scene, archive_format):
    limits = ArchiveLimits(max_bytes=10_000_000, max_files=2, max_ratio=200)
    path = write_archive(scene.archive("many.bin"), archive_format, TWO_CLASSES)
    refuse(scene, path, TooLarge, match="more than the limit of 2", limits=limits)


def test_a_flood_of_ignored_entries_is_too_large(scene):
    limits = ArchiveLimits(max_bytes=10_000_000, max_files=2, max_ratio=200)
    entries = {**{f"__MACOSX/._{n}": b"" for n in range(1100)}, "cats/a.png": RED_PNG}
    refuse(scene, write_zip(scene.archive("flood.zip"), entries), TooLarge, match="entries", limits=limits)


def test_bytes_written_are_counted_even_when_headers_lie(scene, monkeypatch):
    path = write_zip(scene.archive("liar.zip"), {**TWO_CLASSES, "cats/zeros.bin": bytes(5_000_000)})
    honest_entries = archive_module._ZipReader.entries

    def entries_claiming_nothing(self):
        for entry in honest_entries(self):
            yield archive_module._Entry(entry.name, entry.kind, 0, entry.handle)

    monkeypatch.setattr(archive_module._ZipReader, "entries", entries_claiming_nothing)
    refuse(scene, path, TooLarge, match="unpacks to more than")


def test_tar_header_claiming_a_huge_pax_record_is_refused_without_reading_it(scene):
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 200 * 1024 * 1024
    header = pax.tobuf(format=tarfile.USTAR_FORMAT)
    path = scene.archive("pax.tar.gz")
    path.write_bytes(gzip.compress(header + b"10 path=x\n" + bytes(502)))
    refuse(scene, path, TooLarge, match="too large to read")


# --- property: whatever the names, nothing lands outside dest ------------------------------------


NAME_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
WELL_FORMED_NAMES = st.builds(
    "{}/{}".format,
    st.sampled_from(["cats", "dogs", "chats été"]),
    st.one_of(st.sampled_from(["a.png", "b.jpg", "notes.txt"]), NAME_TEXT.map(lambda text: text + ".png")),
)
NAME_PARTS = st.one_of(
    st.sampled_from(["..", ".", "", "cats", "dogs", "a.png", "b.jpg", "C:", "\\..", "é🐱.png"]),
    st.sampled_from(["__MACOSX", ".DS_Store", "x.zip", "n" * 300]),
    NAME_TEXT,
)
ODD_NAMES = st.builds(
    lambda leading, parts: leading + "/".join(parts),
    st.sampled_from(["", "", "", "/", "./", "../"]),
    st.lists(NAME_PARTS, min_size=1, max_size=4),
)
ENTRY_NAMES = st.one_of(WELL_FORMED_NAMES, WELL_FORMED_NAMES.map("set/{}".format), ODD_NAMES)
ENTRIES = st.lists(
    st.tuples(
        ENTRY_NAMES,
        st.sampled_from(["file"] * 8 + ["dir", "symlink", "hardlink"]),
        st.one_of(st.binary(max_size=300), st.sampled_from([RED_PNG, bytes(3000)])),
    ),
    min_size=0,
    max_size=8,
)


def build_zip(path: Path, entries) -> None:
    infos = []
    for name, kind, content in entries:
        if kind == "dir":
            infos.append((zipfile.ZipInfo(name.rstrip("/") + "/"), b""))
        elif kind in ("symlink", "hardlink"):
            infos.append((zip_info(name, stat.S_IFLNK, 0o777), b"../../escape"))
        else:
            infos.append((zipfile.ZipInfo(name), content))
    zip_with_infos(path, infos)


def build_tar(path: Path, entries, gz: bool) -> None:
    members = []
    for name, kind, content in entries:
        if kind == "file":
            members.append(tar_file_info(name, content))
        else:
            tar_type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            members.append(tar_special_info(name, tar_type, "../../escape"))
    write_tar(path, members, gz=gz)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=ENTRIES,
    archive_format=st.sampled_from(FORMATS),
    max_files=st.sampled_from([100] * 3 + [1, 2]),
    max_bytes=st.sampled_from([100_000] * 3 + [2_000]),
    max_ratio=st.sampled_from([200.0] * 3 + [2.0]),
)
def test_any_archive_unpacks_inside_dest_or_is_refused_cleanly(
    entries, archive_format, max_files, max_bytes, max_ratio
):
    with tempfile.TemporaryDirectory() as temporary:
        scene = Scene(Path(temporary))
        path = scene.archive("upload.bin")
        if archive_format == "zip":
            build_zip(path, entries)
        else:
            build_tar(path, entries, gz=archive_format == "tar.gz")
        limits = ArchiveLimits(max_bytes=max_bytes, max_files=max_files, max_ratio=max_ratio)
        try:
            scene.unpack(path, limits)
        except (BadArchive, TooLarge):
            scene.assert_refused_cleanly()
            return
        scene.assert_only_dest_added()
        real_dest = os.path.realpath(scene.dest)
        for directory, dirs, files in os.walk(scene.dest):
            for name in dirs + files:
                written = Path(directory, name)
                assert not written.is_symlink()
                assert os.path.realpath(written).startswith(real_dest + os.sep)
                assert len(written.relative_to(scene.dest).parts) <= 2


# --- layout="any": a batch's images at their own paths (issue 16) ------------------------------------


def test_any_layout_keeps_every_file_at_its_path(tmp_path):
    entries = {
        "top.png": RED_PNG,
        "trip/day1/deep/blue.png": BLUE_PNG,
        "trip/notes.txt": b"kept: a batch labels (or reports) every file",
        "trip/.hidden.png": RED_PNG,
        "__MACOSX/trip/._blue.png": b"",
    }
    dest = tmp_path / "inputs"
    unpack_archive(write_zip(tmp_path / "a.zip", entries), dest, limits=ROOMY, layout="any")
    found = sorted(str(path.relative_to(dest)) for path in dest.rglob("*") if path.is_file())
    assert found == ["top.png", "trip/day1/deep/blue.png", "trip/notes.txt"]
    assert (dest / "trip/day1/deep/blue.png").read_bytes() == BLUE_PNG


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ({"a/../../evil.png": RED_PNG}, r"outside the archive"),
        ({"/abs.png": RED_PNG}, "absolute path"),
        ({"a.png": RED_PNG, "a.png/b.png": RED_PNG}, "both a file and a folder"),
    ],
)
def test_any_layout_refuses_what_a_dataset_upload_refuses(scene, entries, match):
    path = write_zip(scene.archive("bad.zip"), entries)
    with pytest.raises(BadArchive, match=match):
        scene.unpack(path, layout="any")
    scene.assert_refused_cleanly()


def test_any_layout_refuses_links(scene):
    infos = [(zipfile.ZipInfo("x/a.png"), RED_PNG), (zip_info("x/link.png", stat.S_IFLNK, 0o777), b"/etc/passwd")]
    with pytest.raises(BadArchive, match="symbolic link"):
        scene.unpack(zip_with_infos(scene.archive("link.zip"), infos), layout="any")
    scene.assert_refused_cleanly()


def test_any_layout_caps_the_file_count(scene):
    entries = {f"x/{n}.png": RED_PNG for n in range(5)}
    small = ArchiveLimits(max_bytes=50_000_000, max_files=3, max_ratio=200.0)
    with pytest.raises(TooLarge):
        scene.unpack(write_zip(scene.archive("many.zip"), entries), small, layout="any")
    scene.assert_refused_cleanly()
