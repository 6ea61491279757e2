"""Durable storage of import files in a directory shared by the API and the workers.

A file is written to a temporary name, fsynced, renamed and its directory fsynced before the
create call commits: a 2xx means the bytes are on disk. Size caps are enforced while streaming.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import secrets
from typing import Protocol

from domains.shared.errors import ResourceExhausted


class FileTooLarge(ResourceExhausted):
    """The file passed the configured size cap (the API answers 413)."""

    default_reason = "IMPORT_FILE_TOO_LARGE"


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """A file safely on disk.

    Attributes:
        path: Path relative to the storage directory.
        size: Bytes.
        sha256: Hex digest of the content.
    """

    path: str
    size: int
    sha256: str


class FileWriter:
    """Streams one file into the store; :meth:`commit` makes it durable."""

    def __init__(self, root: str, max_bytes: int) -> None:
        """Opens a temporary file under ``root``.

        Args:
            root: Storage directory.
            max_bytes: Size cap.
        """
        self._root = root
        self._max = max_bytes
        self.rel = f"{secrets.token_hex(16)}.dat"
        self._tmp = os.path.join(root, self.rel + ".part")
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Appends ``data``.

        Args:
            data: Bytes.

        Raises:
            FileTooLarge: Past the cap (the partial file is removed).
        """
        self.size += len(data)
        if self.size > self._max:
            self.abort()
            raise FileTooLarge(
                f"the import file is larger than the {self._max}-byte limit"
                " (CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES); split it or compress it with gzip",
                metadata={"max_bytes": str(self._max)},
            )
        self._hash.update(data)
        self._file.write(data)

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, os.path.join(self._root, self.rel))
        fd = os.open(self._root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def commit(self) -> StoredFile:
        """Flushes, fsyncs and publishes the file under its final name.

        Returns:
            The stored file.
        """
        await asyncio.to_thread(self._sync)
        return StoredFile(path=self.rel, size=self.size, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        """Discards the partial file."""
        if not self._file.closed:
            self._file.close()
        try:
            os.remove(self._tmp)
        except FileNotFoundError:
            pass


class FileStore:
    """Import files in one directory."""

    def __init__(self, root: str, *, max_bytes: int) -> None:
        """Creates the store (and the directory).

        Args:
            root: Directory, shared by the API and the workers.
            max_bytes: Size cap of one file.
        """
        self.root = os.path.abspath(root)
        self.max_bytes = max_bytes
        os.makedirs(self.root, exist_ok=True)

    def writer(self) -> FileWriter:
        """Starts a new file.

        Returns:
            The writer.
        """
        return FileWriter(self.root, self.max_bytes)

    def path(self, rel: str) -> str:
        """Returns the absolute path of a stored file.

        Args:
            rel: Relative path.

        Returns:
            Absolute path.
        """
        return os.path.join(self.root, os.path.basename(rel))

    def delete(self, rel: str | None) -> None:
        """Deletes a stored file and its decompressed copy (missing files are fine).

        Args:
            rel: Relative path.
        """
        if not rel:
            return
        for path in (self.path(rel), self.path(rel) + ".plain"):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


class SourceFetcher(Protocol):
    """Downloads a ``source_uri`` into the store (implemented in ``app/adapters/imports_fetcher.py``)."""

    async def fetch(self, url: str, writer: FileWriter) -> None:
        """Streams ``url`` into ``writer`` (after the SSRF check).

        Args:
            url: http(s) URL.
            writer: Destination.

        Raises:
            UnsafeUrl: If the URL reaches a refused address.
            PermanentError: If the source answers with a client error.
            TransientError: On network trouble or a server error.
            FileTooLarge: Past the size cap.
        """
