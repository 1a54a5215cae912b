"""Identifiers and timestamps, defined once: every store names its records with these."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from finetune.errors import NotFound

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# An alias: a stable name for a model (`production`, `default`).
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
ALIAS_NAME = re.compile(ALIAS_PATTERN)


def new_id() -> str:
    """A new record id: 16 hex digits (64 random bits)."""
    return uuid.uuid4().hex[:16]


def now_iso() -> str:
    """The current time in UTC, ISO 8601, as every record's `*_at` fields hold it."""
    return datetime.now(UTC).isoformat()


def check_id(value: str, *, kind: str) -> str:
    """Ids become folder names and Redis keys: refuse anything that could leave the store (as not found)."""
    if not SAFE_ID.match(value) or ".." in value:
        raise NotFound(f"{kind} {value!r} not found")
    return value
