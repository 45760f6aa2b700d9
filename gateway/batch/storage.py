"""Where the bytes of files live: one small interface, local disk behind it for now (object
storage is a later implementation of the same four methods). Records about files (owner, name,
purpose) live in Redis (gateway/batch/store.py); here only the content, by file id."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from gateway.settings import GatewaySettings

_READ_CHUNK = 64 * 1024


class FileStorage(Protocol):
    def save(self, name: str, chunks: Iterable[bytes]) -> int:
        """Store ``chunks`` as ``name`` all at once (a reader never sees half a file); returns
        the size. Saving the same name again replaces it, so a repeated save is harmless."""

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive; None: to the end). FileNotFoundError if absent."""

    def stream(self, name: str) -> Iterator[bytes]:
        """The whole content in pieces, for sending it without holding it."""

    def delete(self, name: str) -> None:
        """Remove ``name``; removing one that is not there is not an error."""


class LocalFileStorage:
    """Files in one directory, written to a temporary name and renamed into place."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        # Names are ids the platform made, never a caller's file name; still, never a path.
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a storage name: {name!r}")
        return self.directory / name

    def save(self, name: str, chunks: Iterable[bytes]) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._path(name)
        size = 0
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.")
        try:
            with os.fdopen(descriptor, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return size

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        with open(self._path(name), "rb") as source:
            source.seek(start)
            return source.read() if end is None else source.read(max(0, end - start))

    def stream(self, name: str) -> Iterator[bytes]:
        with open(self._path(name), "rb") as source:
            while chunk := source.read(_READ_CHUNK):
                yield chunk

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


def storage_for(settings: GatewaySettings) -> FileStorage:
    return LocalFileStorage(settings.files_dir)
