"""Local paths and object-store URLs (`s3://bucket/prefix`) behind one small interface, via fsspec."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec


@dataclass
class Location:
    """A folder that is either on the local disk or in an object store."""

    url: str

    def __post_init__(self):
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **_storage_options(self.url))
        self.is_local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol
        if self.is_local:
            self.root = str(Path(self.root).resolve())

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def url_of(self, *parts: str) -> str:
        """`path(*parts)` as a URL another Location opens: a local path, or with its protocol (`s3://...`)."""
        path = self.path(*parts)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def local_path(self, *parts: str) -> Path:
        return Path(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        with self.fs.open(self.path(*parts), "r") as handle:
            return handle.read()

    def write_text_atomic(self, text: str, *parts: str) -> None:
        """Locally: temporary name then rename. Object stores write a whole object at once."""
        target = self.path(*parts)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            temporary = f"{target}.tmp-{os.getpid()}-{threading.get_ident()}"
            Path(temporary).write_text(text)
            os.replace(temporary, target)
        else:
            self.fs.pipe_file(target, text.encode())

    def remove(self, *parts: str) -> None:
        """Delete one file; a missing one is not an error."""
        try:
            self.fs.rm_file(self.path(*parts))
        except FileNotFoundError:
            pass

    def children(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.root, detail=False))

    def staging_parent(self, cache_dir: Path) -> Path:
        """Where folders are assembled: inside the store locally (so a rename publishes them), else the cache."""
        return Path(self.root) if self.is_local else Path(cache_dir)

    @contextmanager
    def publishing(self, name: str, *, cache_dir: Path, record_file: str) -> Iterator[Path]:
        """A fresh local folder to fill. On a clean exit it becomes the folder `name` here: locally by
        one rename, in an object store by uploading everything with `record_file` last, so a reader
        that lists by the record never sees half a folder. On any error nothing is published, and
        the local folder is removed either way."""
        parent = self.staging_parent(cache_dir)
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent))
        try:
            yield staging
            if self.is_local:
                os.replace(staging, self.local_path(name))
                return
            target = self.path(name)
            for entry in sorted(staging.iterdir()):
                if entry.name == record_file:
                    continue
                if entry.is_dir():
                    self.fs.put(str(entry), f"{target}/", recursive=True)
                else:
                    self.fs.put_file(str(entry), f"{target}/{entry.name}")
            self.fs.put_file(str(staging / record_file), f"{target}/{record_file}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove_folder(self, name: str, *, record_file: str, doomed_name: str) -> None:
        """Locally: renamed out of sight (to `doomed_name`), then removed. In an object store: the
        record first, so the folder stops being listed before its other files go."""
        if self.is_local:
            doomed = self.local_path(doomed_name)
            os.replace(self.local_path(name), doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            self.fs.rm_file(self.path(name, record_file))
            self.fs.rm(self.path(name), recursive=True)

    def remove_stale_staging(self, cache_dir: Path, *, older_than_s: float) -> list[str]:
        """Staging folders left by a process that died while assembling one (`.tmp-*`, once untouched
        for `older_than_s`) and local deletions cut short (`.deleting-*`)."""
        return remove_stale_temporaries(
            self.staging_parent(cache_dir),
            prefixes=(".tmp-",),
            older_than_s=older_than_s,
            always=(".deleting-",) if self.is_local else (),
        )


def is_remote(url: str | Path) -> bool:
    """Whether `url` names an object store (`s3://...`) rather than a local path."""
    return "://" in str(url)


def _storage_options(url: str) -> dict:
    """Object-store listings are not cached: other processes (the workers) add models and datasets.
    The endpoint (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, e.g. MinIO) is botocore's own setting."""
    if url.startswith("s3://"):
        return {"use_listings_cache": False, "skip_instance_cache": True}
    return {}


def newest_change(path: Path, *, since: float) -> float:
    """The latest mtime of `path` and everything under it, stopping early at one newer than `since`."""
    newest = path.lstat().st_mtime
    if newest > since or not path.is_dir() or path.is_symlink():
        return newest
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
            except FileNotFoundError:
                continue
            if newest > since:
                return newest
    return newest


def remove_stale_temporaries(
    directory: str | Path, *, prefixes: tuple[str, ...], older_than_s: float, always: tuple[str, ...] = ()
) -> list[str]:
    """Remove what a process killed mid-write left in `directory`: entries named with one of `prefixes`
    in which nothing changed for `older_than_s` (work still in flight elsewhere keeps changing, so it is
    left alone), and entries named with one of `always` (already doomed). Returns the names removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for entry in directory.iterdir():
        name = entry.name
        try:
            stale = name.startswith(prefixes) and newest_change(entry, since=cutoff) <= cutoff
            if not (stale or name.startswith(always)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed
