"""Streaming request bodies of ``POST /v1/datasets/{id}/imports``: multipart/form-data parsed as
it arrives (the file part goes straight to disk, never to memory or a temp spool), or a raw
body (``text/csv``, ``application/x-ndjson``, ``application/gzip``...).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

from domains.shared.errors import InvalidArgument

MAX_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 4096
_PARAM = re.compile(r';\s*([a-zA-Z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_MULTIPART")


def boundary_of(content_type: str) -> bytes:
    """Returns the multipart boundary of a ``Content-Type`` header.

    Args:
        content_type: The header.

    Returns:
        The boundary.

    Raises:
        InvalidArgument: If there is none.
    """
    for match in _PARAM.finditer(content_type):
        if match.group(1).lower() == "boundary":
            value = match.group(2) if match.group(2) is not None else match.group(3)
            if value and len(value) <= 200:
                return value.encode("latin-1")
    raise _bad("multipart/form-data needs a boundary parameter in Content-Type")


def _disposition(headers: bytes) -> tuple[str, str | None]:
    text = headers.decode("utf-8", errors="replace")
    for line in text.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            params = {
                m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                for m in _PARAM.finditer(";" + value.partition(";")[2])
            }
            return params.get("name") or "", params.get("filename")
    raise _bad("a multipart part has no Content-Disposition header")


class _Buffer:
    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self.data = b""
        self.eof = False

    async def more(self) -> bool:
        if self.eof:
            return False
        try:
            block = await self._stream.__anext__()
        except StopAsyncIteration:
            self.eof = True
            return False
        self.data += block
        return True


async def read_multipart(
    stream: AsyncIterator[bytes],
    boundary: bytes,
    on_file: Callable[[bytes], None],
    *,
    file_field: str = "file",
    on_filename: Callable[[str], None] | None = None,
) -> tuple[dict[str, str], bool]:
    """Parses a multipart/form-data body as it streams in.

    Args:
        stream: The body.
        boundary: Its boundary.
        on_file: Receives the bytes of the ``file_field`` part, in order.
        file_field: Name of the file part.
        on_filename: Receives the file part's ``filename``, when it has one (for display).

    Returns:
        ``(other fields, whether the file part was present)``.

    Raises:
        InvalidArgument: If the body is not well-formed multipart, has a second file part, or
            a text field longer than 4 KiB.
    """
    buf = _Buffer(stream)
    opening = b"--" + boundary
    separator = b"\r\n--" + boundary
    # Preamble: up to the first boundary line.
    while (index := buf.data.find(opening)) < 0:
        if len(buf.data) > MAX_HEADER_BYTES or not await buf.more():
            raise _bad("the body is not multipart/form-data with the declared boundary")
    buf.data = buf.data[index + len(opening) :]
    fields: dict[str, str] = {}
    got_file = False
    while True:
        while len(buf.data) < 2 and await buf.more():
            pass
        if buf.data.startswith(b"--"):
            return fields, got_file
        if not buf.data.startswith(b"\r\n"):
            raise _bad("malformed multipart boundary line")
        buf.data = buf.data[2:]
        while (end := buf.data.find(b"\r\n\r\n")) < 0:
            if len(buf.data) > MAX_HEADER_BYTES or not await buf.more():
                raise _bad("a multipart part's headers are too long or cut off")
        name, filename = _disposition(buf.data[:end])
        buf.data = buf.data[end + 4 :]
        is_file = name == file_field
        if is_file and got_file:
            raise _bad(f"send one {file_field!r} part only")
        got_file = got_file or is_file
        if is_file and filename and on_filename is not None:
            on_filename(filename)
        value = b""
        while True:
            index = buf.data.find(separator)
            if index >= 0:
                chunk, buf.data = buf.data[:index], buf.data[index + len(separator) :]
            else:
                keep = len(separator) - 1
                chunk = buf.data[: max(0, len(buf.data) - keep)]
                buf.data = buf.data[len(chunk) :]
            if chunk:
                if is_file:
                    on_file(chunk)
                else:
                    value += chunk
                    if len(value) > MAX_FIELD_BYTES:
                        raise _bad(
                            f"multipart field {name!r} is longer than {MAX_FIELD_BYTES} bytes"
                        )
            if index >= 0:
                break
            if not await buf.more():
                raise _bad("the multipart body ends before its closing boundary")
        if not is_file:
            fields[name] = value.decode("utf-8", errors="replace")
        del filename
