"""Uploaded archives (datasets, batches) spooled to a file of our own before they are unpacked."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import UploadFile

from finetune.errors import TooLarge

CHUNK = 1024 * 1024


def spool_to_disk(upload: UploadFile, directory: Path, max_bytes: int) -> Path:
    """Copies the upload in chunks to a file of our own, refusing past `max_bytes`."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(prefix=".upload-", dir=directory, delete=False)
    written = 0
    with handle:
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                handle.close()
                Path(handle.name).unlink(missing_ok=True)
                raise TooLarge(f"upload larger than {max_bytes / (1024 * 1024):g} MB")
            handle.write(chunk)
    return Path(handle.name)
