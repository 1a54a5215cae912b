"""Dataset versions: which of a parent's files a new version keeps, and under which path.

A version never edits its parent: it is a new dataset whose files are the parent's (linked, not
copied; see DatasetStore.create_version) with some moved to another class folder, some removed, or
new ones added from an archive. Paths are the dataset's own (`<class>/<file>`, or
`<split>/<class>/<file>` for given splits), as `GET /datasets/{id}/files/{path}` takes them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from finetune.errors import BadDataset
from finetune.stores.records import DatasetChange

_MAX_NAME_BYTES = 255
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_SHOWN = 10  # faults named in one refusal


@dataclass(frozen=True)
class Move:
    path: str
    to: str  # a class name: the file goes to that class folder (of the same split)


@dataclass
class VersionEdits:
    moves: list[Move] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VersionPlan:
    """{the version's path: the parent's path} of every file the version keeps, and the change."""

    kept: dict[str, str]
    change: DatasetChange


def plan_edits(parent_files: set[str], edits: VersionEdits) -> VersionPlan:
    """The parent's files with `edits` applied; BadDataset naming every path or class at fault."""
    faults: list[str] = []
    listed: set[str] = set()
    for path in [move.path for move in edits.moves] + edits.removals:
        fault = _path_fault(path, parent_files) or ("listed more than once" if path in listed else None)
        listed.add(path)
        if fault:
            faults.append(f"{path!r}: {fault}")
    for move in edits.moves:
        fault = _class_fault(move.to)
        if fault:
            faults.append(f"{move.path!r} -> {move.to!r}: {fault}")
    _refuse(faults)
    kept = {path: path for path in sorted(parent_files - set(edits.removals))}
    for move in edits.moves:
        parts = PurePosixPath(move.path).parts
        if parts[-2] == move.to:
            faults.append(f"{move.path!r}: already in class {move.to!r}")
            continue
        target = PurePosixPath(*parts[:-2], move.to, parts[-1]).as_posix()
        del kept[move.path]
        if target in kept:
            faults.append(f"{move.path!r} -> {move.to!r}: {target!r} exists already")
        kept[target] = move.path
    _refuse(faults)
    return VersionPlan(kept, DatasetChange(moved=len(edits.moves), removed=len(edits.removals)))


def plan_additions(parent_files: set[str], added: set[str]) -> VersionPlan:
    """The parent's files and `added` beside them; BadDataset naming added paths the parent has."""
    _refuse([f"{path!r}: the dataset has that file already" for path in sorted(added & parent_files)])
    return VersionPlan({path: path for path in sorted(parent_files)}, DatasetChange(added=len(added)))


def _path_fault(path: str, parent_files: set[str]) -> str | None:
    if not isinstance(path, str) or not path:
        return "empty"
    if path.startswith(("/", "\\")) or _DRIVE_LETTER.match(path):
        return "an absolute path"
    if "\\" in path or ".." in path.split("/") or "\x00" in path:
        return "not a plain relative path (no '..', no backslashes)"
    if path not in parent_files:
        return "no such file in the dataset"
    return None


def _class_fault(name: str) -> str | None:
    if not isinstance(name, str) or not name or name in (".", ".."):
        return "not a class name"
    if "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
        return "a class name is one folder name, not starting with '.'"
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        return f"a class name longer than {_MAX_NAME_BYTES} bytes"
    return None


def _refuse(faults: list[str]) -> None:
    if not faults:
        return
    more = f" (and {len(faults) - _SHOWN} more)" if len(faults) > _SHOWN else ""
    raise BadDataset(f"cannot make the version: {'; '.join(faults[:_SHOWN])}{more}")
