"""A change count the processes of one API server share, so a model deleted (or an alias moved) through
any of them is seen by all of them at the next request, not a revalidation period later."""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

_BYTES = 8


class SharedChangeCounter:
    """An unsigned 64-bit count in a memory-mapped file. Reading it is a memory read (no system call),
    cheap enough for every /predict on the event loop; `bump` takes the file's lock for the increment."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _BYTES:
            os.ftruncate(self._fd, _BYTES)  # zeros: no change yet
        self._map = mmap.mmap(self._fd, _BYTES)

    def value(self) -> int:
        return int.from_bytes(self._map[:_BYTES], "little")

    def bump(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            self._map[:_BYTES] = ((self.value() + 1) % 2**64).to_bytes(_BYTES, "little")
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
