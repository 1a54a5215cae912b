"""The direction of imports (DESIGN.md): `ml <- stores <- execution/serving <- service <- app, worker`.

Read from the source with `ast`, imports inside functions included, so a shortcut taken in a
function body is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower ranks are imported by higher ones, never the other way. Rooms of one rank do not import each other.
RANKS = {
    "finetune": 0,  # the package's own (empty) __init__
    "finetune.errors": 1,
    "finetune.ids": 2,
    "finetune.states": 2,
    "finetune.ml": 3,
    "finetune.settings": 4,
    "finetune.stores": 5,
    "finetune.execution": 6,
    "finetune.serving": 6,
    "finetune.schemas": 6,  # the API's response shapes beyond the records, shared by app/ and the client
    "finetune.service": 7,
    "finetune.launcher": 8,
    "finetune.client": 8,  # the Python client of the REST API: records and schemas, never app/
    "finetune.cli": 9,
    "app": 10,
    "worker": 10,
}
# What the ML core must never touch: it runs in a job process and in notebooks alike.
ML_FORBIDDEN = (
    "redis",
    "fsspec",
    "s3fs",
    "celery",
    "fastapi",
    "starlette",
    "uvicorn",
    "subprocess",
    "pydantic_settings",
)


def room_of(module: str) -> str | None:
    """The longest key of RANKS that `module` is or is inside of."""
    matches = [room for room in RANKS if module == room or module.startswith(room + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def source_files() -> list[Path]:
    return sorted(p for package in ("finetune", "app", "worker") for p in (ROOT / package).rglob("*.py"))


def violations(module: str, imports: list[str]) -> list[str]:
    own = room_of(module)
    found = []
    for name in imports:
        target = room_of(name)
        if own is None or target is None or target == own or target == "finetune":
            continue
        if RANKS[target] >= RANKS[own]:
            found.append(f"{module} ({own}) imports {name} ({target})")
    if own == "finetune.ml":
        found += [f"{module} imports {name}" for name in imports if name.split(".")[0] in ML_FORBIDDEN]
    return found


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    assert room_of(module_name(path)) is not None, f"{path} is in no room: add it to RANKS"
    assert violations(module_name(path), imported_modules(path)) == []


def test_the_check_catches_wrong_way_imports(tmp_path):
    """The rule itself: an ml module importing a store or Redis, a store importing serving, and
    serving importing execution (rooms of one rank) are each reported."""
    probe = tmp_path / "probe.py"
    probe.write_text("import redis\n\ndef f():\n    from finetune.stores.models import ModelStore\n")
    assert violations("finetune.ml.probe", imported_modules(probe)) == [
        "finetune.ml.probe (finetune.ml) imports finetune.stores.models (finetune.stores)",
        "finetune.ml.probe (finetune.ml) imports finetune.stores.models.ModelStore (finetune.stores)",
        "finetune.ml.probe imports redis",
    ]
    assert violations("finetune.stores.probe", ["finetune.serving.cache"]) == [
        "finetune.stores.probe (finetune.stores) imports finetune.serving.cache (finetune.serving)"
    ]
    assert violations("finetune.serving.probe", ["finetune.execution.protocol"]) == [
        "finetune.serving.probe (finetune.serving) imports finetune.execution.protocol (finetune.execution)"
    ]
    assert violations("finetune.service", ["finetune.serving.cache", "finetune.ml.spec", "finetune.errors"]) == []
