"""Streaming CSV/JSONL parsing and row validation (pure: standard library only).

An import file is read three times, never held in memory whole:

1. :func:`prepare_plain` decompresses a gzip file next to it (chunks need byte offsets);
2. :func:`plan_chunks` reads it line by line once: checks the encoding (UTF-8) and the
   header, counts rows and cuts the file into byte ranges of ``chunk_rows`` rows each. CSV
   records may span lines inside quotes: a record ends at a newline outside quotes (the
   parity of ``"`` characters, which RFC 4180 doubles inside quoted fields);
3. each chunk task reads its byte range with :func:`iter_chunk_rows` and validates rows with a
   :class:`RowValidator`.

File-level problems (not text, wrong encoding, no header, columns that don't match the
schema, no rows) raise :class:`ImportFileError` with a message saying what to fix; row-level
problems become :class:`RowError` values and never fail the import.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import dataclasses
import datetime as dt
import gzip
import io
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from domains.imports.model import FieldDef
from domains.shared.errors import PermanentError

FORMATS = ("csv", "jsonl")
MAX_RAW_VALUE = 1000
"""Longest raw value kept in a row error (longer ones are cut)."""
MAX_LINE_BYTES = 10 * 1024 * 1024
"""Longest physical line (or quoted CSV record) accepted; longer ones fail the file."""
MAX_CELL_BYTES = 64 * 1024
"""Default largest cell (CSV) or value (JSONL), in UTF-8 bytes; larger ones are row errors."""
MAX_ROW_BYTES = 1024 * 1024
"""Default largest row (cells and separators, or the JSONL line), in bytes; larger: row error."""
ENCODING_ERRORS = ("fail", "replace", "reject_row")
"""What a byte that is not UTF-8 does: fail the import, become U+FFFD, or reject its row."""
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = codecs.BOM_UTF8
_INT = re.compile(r"[+-]?\d+")
_INT_LIMIT = 2**63
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})

csv.field_size_limit(MAX_LINE_BYTES)
# One encoder for every row: json.dumps with non-default options builds a new one per call.
encode_json = json.JSONEncoder(
    ensure_ascii=False, check_circular=False, separators=(",", ":")
).encode
"""Encodes one value or record as compact JSON (non-ASCII kept)."""
_ENCODE = encode_json


class ImportFileError(PermanentError):
    """The file as a whole cannot be imported (the import fails with this message).

    Raised for: a file that is not UTF-8 text (binary, another encoding), a CSV without a
    header or whose header does not match the dataset's fields, a JSONL file whose first
    record is not a JSON object, a corrupt gzip stream, no data rows, or a line longer than
    :data:`MAX_LINE_BYTES`.
    """

    default_reason = "INVALID_IMPORT_FILE"


@dataclasses.dataclass(frozen=True)
class RowError:
    """Why one row was rejected.

    Attributes:
        line: Physical line number where the row starts (1-based; the CSV header is line 1).
        field: Offending field ("" when the row as a whole is wrong).
        reason: What is wrong and what is expected.
        raw_value: The value as found (cut to :data:`MAX_RAW_VALUE` characters).
    """

    line: int
    field: str
    reason: str
    raw_value: str


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """A byte range of the plain file holding ``rows`` rows.

    Attributes:
        chunk_no: 0-based position.
        start_offset: First byte.
        end_offset: Byte after the last.
        first_line: Physical line number of the first byte.
        rows: Data rows in the range.
    """

    chunk_no: int
    start_offset: int
    end_offset: int
    first_line: int
    rows: int


@dataclasses.dataclass
class FilePlan:
    """What the split pass learned about a file.

    Attributes:
        format: ``csv`` or ``jsonl``.
        columns: CSV header columns (empty for JSONL).
        rows_total: Data rows.
        chunks: Byte ranges of ``chunk_rows`` rows.
    """

    format: str
    columns: list[str]
    rows_total: int
    chunks: list[ChunkPlan]


def cut(value: str) -> str:
    """Cuts a raw value to :data:`MAX_RAW_VALUE` characters for a row error.

    Args:
        value: The raw value.

    Returns:
        It, or its start followed by an ellipsis.
    """
    return value if len(value) <= MAX_RAW_VALUE else value[:MAX_RAW_VALUE] + "…"


_cut = cut


def utf8_size(text: str) -> int:
    """Returns the UTF-8 size of ``text`` (cheaply when it is plainly small).

    Args:
        text: Any text.

    Returns:
        Bytes.
    """
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cell_limit_reason(raw: str, limit: int) -> str:
    """Row-error reason of a cell over the per-cell byte limit.

    Args:
        raw: The cell.
        limit: The limit in bytes.

    Returns:
        The reason, naming the setting.
    """
    return (
        f"value is {utf8_size(raw)} bytes; at most {limit} bytes are allowed per value"
        " (CONVEYOR_IMPORTS__MAX_CELL_BYTES)"
    )


def row_limit_reason(size: int, limit: int) -> str:
    """Row-error reason of a row over the per-row byte limit.

    Args:
        size: The row's size in bytes.
        limit: The limit in bytes.

    Returns:
        The reason, naming the setting.
    """
    return (
        f"row is {size} bytes; at most {limit} bytes are allowed per row"
        " (CONVEYOR_IMPORTS__MAX_ROW_BYTES)"
    )


def is_gzip(path: str) -> bool:
    """Whether the file starts with the gzip magic number.

    Args:
        path: File path.

    Returns:
        True for gzip.
    """
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def prepare_plain(path: str, *, max_bytes: int) -> str:
    """Returns a path to the uncompressed content of ``path`` (decompressing gzip next to it).

    Args:
        path: Stored file.
        max_bytes: Largest decompressed size accepted.

    Returns:
        ``path`` itself, or ``path + ".plain"`` for a gzip file.

    Raises:
        ImportFileError: If the gzip stream is corrupt or decompresses past ``max_bytes``.
    """
    if not is_gzip(path):
        return path
    plain = path + ".plain"
    tmp = plain + ".tmp"
    written = 0
    try:
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(1024 * 1024):
                written += len(block)
                if written > max_bytes:
                    raise ImportFileError(
                        f"the gzip file decompresses to more than {max_bytes} bytes, the size"
                        " limit; split it into smaller files"
                    )
                dst.write(block)
    except (OSError, EOFError, zlib.error) as exc:
        _remove(tmp)
        raise ImportFileError(
            f"the file looks gzip-compressed but cannot be decompressed ({exc}); upload an"
            " intact .gz file or the plain CSV/JSONL"
        ) from None
    except ImportFileError:
        _remove(tmp)
        raise
    os.replace(tmp, plain)
    return plain


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def detect_format(path: str, declared: str | None) -> str:
    """Returns ``csv`` or ``jsonl``: the declared format, else a guess from the first character.

    Args:
        path: Plain file.
        declared: ``csv``, ``jsonl`` or ``None``/``auto``.

    Returns:
        The format.
    """
    if declared in FORMATS:
        return str(declared)
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(_BOM).lstrip()
    return "jsonl" if head[:1] in (b"{", b"[") else "csv"


def _decode(line: bytes, number: int, encoding_errors: str = "fail") -> str:
    if encoding_errors != "fail":
        return line.decode("utf-8", errors="replace")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"line {number} is not valid UTF-8 (byte {exc.start + 1}): the file must be UTF-8"
            " encoded CSV or JSONL text; re-save it as UTF-8, or import it with"
            " encoding_errors=replace (bad bytes become U+FFFD) or encoding_errors=reject_row"
            " (rows with bad bytes are listed in the errors)"
        ) from None


def invalid_utf8_lines(path: str, start: int, end: int, first_line: int) -> dict[int, int]:
    """Finds the physical lines of a byte range that are not valid UTF-8.

    Args:
        path: Plain file.
        start: First byte.
        end: Byte after the last.
        first_line: Line number of ``start``.

    Returns:
        ``{line number: 1-based position of the first bad byte in it}`` (empty if all valid).
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        data.decode("utf-8")
        return {}
    except UnicodeDecodeError:
        pass
    bad: dict[int, int] = {}
    for i, line in enumerate(data.split(b"\n")):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad[first_line + i] = exc.start + 1
    return bad


def reject_invalid_utf8(
    rows: Sequence[tuple[int, Any]], bad: Mapping[int, int], fmt: str
) -> tuple[list[tuple[int, Any]], list[RowError]]:
    """Splits out the rows holding a line that is not UTF-8 (``encoding_errors=reject_row``).

    A CSV row spans the physical lines from its first line to the next row's first line.

    Args:
        rows: ``(line, cells or text)`` of a chunk, in order.
        bad: Bad lines, from :func:`invalid_utf8_lines`.
        fmt: ``csv`` or ``jsonl``.

    Returns:
        ``(kept rows, one error per rejected row)``.
    """
    starts = [line for line, _ in rows]
    hit: dict[int, int] = {}
    for line in sorted(bad):
        index = bisect.bisect_right(starts, line) - 1
        if index >= 0 and index not in hit:
            hit[index] = line
    kept = [row for i, row in enumerate(rows) if i not in hit]
    errors = []
    for index, line in sorted(hit.items()):
        first, raw = rows[index]
        text = ",".join(raw) if fmt == "csv" else str(raw)
        errors.append(
            RowError(
                first,
                "",
                f"line {line} is not valid UTF-8 (byte {bad[line]}); re-save the file as UTF-8"
                " (encoding_errors=reject_row left this row out)",
                _cut(text),
            )
        )
    return kept, errors


def _check_text(line: bytes, number: int) -> None:
    if number == 1 and line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ImportFileError(
            "the file is UTF-16 encoded: CSV and JSONL imports must be UTF-8; re-save it as UTF-8"
        )
    if b"\x00" in line:
        raise ImportFileError(
            f"line {number} contains NUL bytes: this is not a CSV or JSONL text file"
        )
    if len(line) > MAX_LINE_BYTES:
        raise ImportFileError(
            f"line {number} is longer than {MAX_LINE_BYTES} bytes; is the file really"
            " CSV/JSONL (or is a quote left open)?"
        )


def check_header(columns: Sequence[str], fields: Sequence[FieldDef]) -> None:
    """Checks a CSV header against the dataset's fields.

    Args:
        columns: Header cells.
        fields: Declared fields.

    Raises:
        ImportFileError: On an empty, duplicate or undeclared column, or a missing required one.
    """
    declared = {f.name for f in fields}
    names = ", ".join(f.name for f in fields)
    if not columns or all(not c.strip() for c in columns):
        raise ImportFileError(f"the CSV has no header: line 1 must name the columns ({names})")
    seen: set[str] = set()
    unknown = []
    for column in columns:
        if column in seen:
            raise ImportFileError(f"the CSV header names column {column!r} twice")
        seen.add(column)
        if column not in declared:
            unknown.append(column)
    if unknown:
        raise ImportFileError(
            f"the CSV header has columns the dataset does not declare: {', '.join(map(repr, unknown[:10]))};"
            f" line 1 must be a header naming dataset fields ({names})"
        )
    missing = [f.name for f in fields if f.required and f.name not in seen]
    if missing:
        raise ImportFileError(
            f"the CSV header lacks required columns {', '.join(missing)}; add them to line 1"
        )


def plan_chunks(
    path: str,
    fmt: str,
    fields: Sequence[FieldDef],
    chunk_rows: int,
    *,
    on_progress: Callable[[int], None] | None = None,
    encoding_errors: str = "fail",
) -> FilePlan:
    """Reads the plain file once: validates encoding and header, cuts it into chunks.

    Args:
        path: Plain (uncompressed) file.
        fmt: ``csv`` or ``jsonl``.
        fields: Declared fields.
        chunk_rows: Rows per chunk.
        on_progress: Called with the rows counted so far, every ``chunk_rows`` rows.
        encoding_errors: ``fail`` (a byte that is not UTF-8 fails the file), ``replace`` or
            ``reject_row`` (the chunks handle it); the CSV header must be UTF-8 in any case.

    Returns:
        The plan.

    Raises:
        ImportFileError: If the file cannot be imported at all.
    """
    chunks: list[ChunkPlan] = []
    columns: list[str] = []
    rows_total = 0
    with open(path, "rb") as f:
        number = 0
        offset = 0
        if fmt == "csv":
            header_raw = b""
            while True:
                line = f.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                number += 1
                offset += len(line)
                if number == 1:
                    line = line.removeprefix(_BOM)
                _check_text(line, number)
                header_raw += line
                if header_raw.count(b'"') % 2 == 0:
                    if header_raw.strip():
                        break
                    header_raw = b""
            header_text = _decode(header_raw, number)
            parsed = next(csv.reader(io.StringIO(header_text, newline="")), [])
            columns = [c.strip() for c in parsed]
            check_header(columns, fields)
        if fmt == "csv":
            fast = _plan_csv_body(f, offset, number, chunk_rows, encoding_errors, on_progress)
            if fast is not None:
                chunks, rows_total = fast
                if rows_total == 0:
                    raise ImportFileError("the file has no data rows; add rows after the header")
                return FilePlan(format=fmt, columns=columns, rows_total=rows_total, chunks=chunks)
            # Something to report exactly (bad bytes, NUL, an endless quoted field...): the
            # line-by-line pass below finds it and says where.
            f.seek(offset)
        chunk_start, chunk_first_line, chunk_count = offset, number + 1, 0
        in_quotes = False
        record_bytes = 0
        first_record = True
        for line in f:
            number += 1
            size = len(line)
            offset += size
            if number == 1:
                line = line.removeprefix(_BOM)
            _check_text(line, number)
            text = _decode(line, number, encoding_errors)
            if fmt == "csv":
                if line.count(b'"') % 2:
                    in_quotes = not in_quotes
                record_bytes += size
                if in_quotes:
                    if record_bytes > MAX_LINE_BYTES:
                        raise ImportFileError(
                            f"a quoted CSV field opened before line {number} is never closed;"
                            ' close it with " (a literal quote inside a field is written "")'
                        )
                    continue
                record_bytes = 0
            if not text.strip():
                if chunk_count == 0:
                    chunk_start, chunk_first_line = offset, number + 1
                continue
            if fmt == "jsonl" and first_record:
                try:
                    value = json.loads(text)
                except ValueError:
                    value = None
                except RecursionError:
                    raise ImportFileError(
                        f"line {number} is nested too deeply (JSON arrays/objects inside each"
                        " other beyond what the parser can follow); flatten the record"
                    ) from None
                if not isinstance(value, dict):
                    raise ImportFileError(
                        f"line {number} is not a JSON object: a JSONL file holds one JSON"
                        ' object per line ({"field": value, ...}); for CSV, send format=csv'
                    )
            first_record = False
            chunk_count += 1
            rows_total += 1
            if chunk_count >= chunk_rows:
                chunks.append(
                    ChunkPlan(len(chunks), chunk_start, offset, chunk_first_line, chunk_count)
                )
                chunk_start, chunk_first_line, chunk_count = offset, number + 1, 0
                if on_progress is not None:
                    on_progress(rows_total)
        if fmt == "csv" and in_quotes:
            raise ImportFileError(
                'the file ends inside a quoted CSV field; close it with " (a literal quote is'
                ' written "")'
            )
        if chunk_count:
            chunks.append(
                ChunkPlan(len(chunks), chunk_start, offset, chunk_first_line, chunk_count)
            )
    if rows_total == 0:
        raise ImportFileError("the file has no data rows; add rows after the header")
    return FilePlan(format=fmt, columns=columns, rows_total=rows_total, chunks=chunks)


_BLOCK_BYTES = 8 * 1024 * 1024


def _plan_csv_body(
    f: Any,
    offset: int,
    number: int,
    chunk_rows: int,
    encoding_errors: str,
    on_progress: Callable[[int], None] | None,
) -> tuple[list[ChunkPlan], int] | None:
    """Cuts the CSV body (after the header) into chunks, a block of bytes at a time.

    The same cuts as the line-by-line pass of :func:`plan_chunks` (rows end at a newline
    outside quotes, blank lines are skipped, physical line numbers), but the per-line work is a
    quote count and a strip of bytes: NUL bytes, UTF-8 and line lengths are checked per block
    of about :data:`_BLOCK_BYTES` (whole lines). Anything such a check finds, or a quoted
    field longer than a line may be, returns ``None``: the caller then runs the line-by-line
    pass, which reports it exactly.

    Args:
        f: The file, positioned after the header.
        offset: Byte offset of that position.
        number: Line number of the header's last line.
        chunk_rows: Rows per chunk.
        encoding_errors: As for :func:`plan_chunks`.
        on_progress: As for :func:`plan_chunks`.

    Returns:
        ``(chunks, rows_total)``, or ``None`` to fall back.
    """
    chunks: list[ChunkPlan] = []
    rows_total = 0
    chunk_start, chunk_first_line, chunk_count = offset, number + 1, 0
    in_quotes = False
    record_bytes = 0
    while True:
        block = f.read(_BLOCK_BYTES)
        if not block:
            break
        if not block.endswith(b"\n"):
            block += f.readline(MAX_LINE_BYTES + 1)
        if b"\x00" in block:
            return None
        if encoding_errors == "fail":
            try:
                block.decode("utf-8")
            except UnicodeDecodeError:
                return None
        lines = block.split(b"\n")
        last = lines.pop()  # b"" after a final newline, else the file's unterminated last line
        # The line-by-line pass refuses a line (newline included) over MAX_LINE_BYTES (no
        # line of a block shorter than that can be: no need to measure each).
        if len(block) >= MAX_LINE_BYTES and (
            max(map(len, lines), default=0) >= MAX_LINE_BYTES or len(last) > MAX_LINE_BYTES
        ):
            return None
        base = offset
        terminated = len(lines)
        if last:
            lines.append(last)
        if not in_quotes and one_record_per_line(block, lines):
            # Every line is a row: cut at the k-th newline without looking at each line.
            rows = len(lines)
            pos = first = 0
            while rows:
                need = chunk_rows - chunk_count
                if rows < need:
                    chunk_count += rows
                    rows_total += rows
                    number += rows
                    break
                taken = first + need
                newlines = min(taken, terminated) - first
                end = pos + sum(map(len, lines[first:taken])) + newlines
                first = taken
                number += need
                rows_total += need
                chunk_count += need
                chunks.append(
                    ChunkPlan(len(chunks), chunk_start, base + end, chunk_first_line, chunk_count)
                )
                chunk_start, chunk_first_line, chunk_count = base + end, number + 1, 0
                if on_progress is not None:
                    on_progress(rows_total)
                pos = end
                rows -= need
            offset = base + len(block)
            continue
        for index, line in enumerate(lines):
            number += 1
            size = len(line) + (1 if index < terminated else 0)
            offset += size
            if b'"' in line and line.count(b'"') % 2:
                in_quotes = not in_quotes
            record_bytes += size
            if in_quotes:
                if record_bytes > MAX_LINE_BYTES:
                    return None
                continue
            record_bytes = 0
            stripped = line.strip()
            if not stripped or (stripped[0] >= 0x80 and not _has_text(line)):
                if chunk_count == 0:
                    chunk_start, chunk_first_line = offset, number + 1
                continue
            chunk_count += 1
            rows_total += 1
            if chunk_count >= chunk_rows:
                chunks.append(
                    ChunkPlan(len(chunks), chunk_start, offset, chunk_first_line, chunk_count)
                )
                chunk_start, chunk_first_line, chunk_count = offset, number + 1, 0
                if on_progress is not None:
                    on_progress(rows_total)
    if in_quotes:
        return None
    if chunk_count:
        chunks.append(ChunkPlan(len(chunks), chunk_start, offset, chunk_first_line, chunk_count))
    return chunks, rows_total


def one_record_per_line(block: bytes, lines: Sequence[bytes]) -> bool:
    """Whether each line of a block (starting outside quotes) is one non-blank CSV row.

    True when no newline is inside a quoted field (each pair of quotes closes on its line)
    and no line can be blank to ``str.strip``: the smallest line starts above the space (no
    empty line, none starting with whitespace or a control character) and the largest below
    0x80 (none starting with a non-ASCII character, some of which are whitespace). False
    means "look line by line".

    Args:
        block: Whole lines of the file.
        lines: ``block`` split at its newlines (without the empty piece after the last).
    """
    if lines and (min(lines)[:1] <= b" " or max(lines)[:1] >= b"\x80"):
        return False
    opening = block.find(b'"')
    while opening != -1:
        closing = block.find(b'"', opening + 1)
        if closing == -1 or block.find(b"\n", opening, closing) != -1:
            return False
        opening = block.find(b'"', closing + 1)
    return True


def _has_text(line: bytes) -> bool:
    """Whether a line is more than (Unicode) whitespace, as ``str.strip`` sees it."""
    return bool(line.decode("utf-8", errors="replace").strip())


def read_range(path: str, start: int, end: int) -> bytes:
    """Reads the bytes ``[start, end)`` of a file (a chunk).

    Args:
        path: Plain file.
        start: First byte.
        end: Byte after the last.

    Returns:
        The bytes.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data: bytes = f.read(end - start)
    return data


def iter_chunk_rows(
    path: str, fmt: str, start: int, end: int, first_line: int
) -> Iterator[tuple[int, Any]]:
    """Yields the rows of one chunk: ``(line, cells)`` for CSV, ``(line, text)`` for JSONL.

    Args:
        path: Plain file.
        fmt: ``csv`` or ``jsonl``.
        start: First byte.
        end: Byte after the last.
        first_line: Line number of ``start``.

    Yields:
        ``(line number, list of cells)`` or ``(line number, JSON text)``; blank lines skipped.
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    del data
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=False)
        before = 0
        for cells in reader:
            line = first_line + before
            before = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            yield line, cells
        return
    for i, raw in enumerate(text.split("\n")):
        if raw.strip():
            yield first_line + i, raw.removesuffix("\r")


Converter = Callable[[Any], Any]


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _string(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    raise ValueError("expected a string")


def _integer(value: Any) -> Any:
    if isinstance(value, str) and "_" not in value:
        # Fast path: int() is strict enough once digit separators are ruled out.
        try:
            number = int(value)
        except ValueError:
            raise ValueError("expected an integer like 42") from None
        if not -_INT_LIMIT <= number < _INT_LIMIT:
            raise ValueError("integer out of the 64-bit range")
        return number
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise ValueError("expected an integer like 42")
    if not -_INT_LIMIT <= number < _INT_LIMIT:
        raise ValueError("integer out of the 64-bit range")
    return number


def _number(value: Any) -> Any:
    if isinstance(value, str) and "_" not in value:
        try:
            number = float(value)
        except ValueError:
            raise ValueError("expected a number like 12.5") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError("expected a number like 12.5") from None
    else:
        raise ValueError("expected a number like 12.5")
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError("expected a boolean: true/false, yes/no or 1/0")


def _date(value: Any) -> Any:
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return dt.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise ValueError("expected a date like 2026-01-31")


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                raise ValueError("timestamp needs an offset, like 2026-01-31T12:00:00Z")
            try:
                return parsed.astimezone(dt.UTC).isoformat()
            except OverflowError:
                # 9999-12-31T23:00:00-05:00 is past year 9999 in UTC.
                raise ValueError("timestamp out of range (years 1 to 9999 in UTC)") from None
    raise ValueError("expected an RFC 3339 timestamp like 2026-01-31T12:00:00Z")


def _enum(values: Sequence[str]) -> Converter:
    allowed = frozenset(values)
    shown = ", ".join(values[:20]) + (", ..." if len(values) > 20 else "")

    def convert(value: Any) -> Any:
        if isinstance(value, str) and value in allowed:
            return value
        raise ValueError(f"expected one of {shown}")

    return convert


def converter(field: FieldDef) -> Converter:
    """Returns the function turning a raw value into the stored JSON value of ``field``.

    Args:
        field: The field.

    Returns:
        ``convert(raw) -> value``; raises ``ValueError`` saying what is expected.
    """
    simple: dict[str, Converter] = {
        "string": _string,
        "integer": _integer,
        "number": _number,
        "boolean": _boolean,
        "date": _date,
        "timestamp": _timestamp,
    }
    return _enum(field.values) if field.type == "enum" else simple[field.type]


def _identity(value: Any) -> Any:
    return value


def _float(value: Any) -> Any:
    return None if value is None else float(value)


def _date_value(value: Any) -> Any:
    return None if value is None else dt.date.fromisoformat(value)


def _timestamp_value(value: Any) -> Any:
    return None if value is None else dt.datetime.fromisoformat(value)


def column_value_of(field: FieldDef) -> Converter:
    """Returns the function turning a converted value into its typed column's Python value.

    Args:
        field: The field.

    Returns:
        ``to_column(value)``: a float for numbers, a ``date``/aware ``datetime`` for dates and
        timestamps (the converters give ISO text), the value itself otherwise; ``None`` stays.
    """
    special: dict[str, Converter] = {
        "number": _float,
        "date": _date_value,
        "timestamp": _timestamp_value,
    }
    return special.get(field.type, _identity)


def key_text(value: Any) -> str:
    """Returns the text form of a key value (the records table's ``key``).

    Args:
        value: Converted key value.

    Returns:
        Its text.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


class RowValidator:
    """Validates rows against a dataset's fields; returns staged values or row errors."""

    def __init__(
        self,
        fields: Sequence[FieldDef],
        key_field: str,
        columns: Sequence[str] = (),
        *,
        max_cell_bytes: int = MAX_CELL_BYTES,
        max_row_bytes: int = MAX_ROW_BYTES,
    ) -> None:
        """Compiles the validator.

        Args:
            fields: Declared fields.
            key_field: Upsert key field.
            columns: CSV header columns (in file order); empty for JSONL.
            max_cell_bytes: Largest value (UTF-8 bytes); a larger one is a row error.
            max_row_bytes: Largest row (CSV: cells and separators; JSONL: the line).
        """
        self.max_cell_bytes = max_cell_bytes
        self.max_row_bytes = max_row_bytes
        self._fields = list(fields)
        self._by_name: Mapping[str, FieldDef] = {f.name: f for f in fields}
        self._convert = {f.name: converter(f) for f in fields}
        self._key = key_field
        self._columns = list(columns)
        present = set(columns)
        self._missing_required = [f.name for f in fields if f.required and f.name not in present]
        # CSV cells are already strings: string fields need no conversion (None).
        self._plan = [
            (
                c,
                None if self._by_name[c].type == "string" else self._convert[c],
                self._by_name[c].required,
            )
            for c in columns
        ]

    def csv_row(self, line: int, cells: Sequence[str]) -> tuple[str, str] | list[RowError]:
        """Validates one CSV row.

        Args:
            line: Its line number.
            cells: Its cells.

        Returns:
            ``(key text, JSON text of the record)`` or the row's errors.
        """
        result = self.csv_record(line, cells)
        return result if isinstance(result, list) else (result[0], _ENCODE(result[1]))

    def json_row(self, line: int, text: str) -> tuple[str, str] | list[RowError]:
        """Validates one JSONL row.

        Args:
            line: Its line number.
            text: The line.

        Returns:
            ``(key text, JSON text of the record)`` or the row's errors.
        """
        result = self.json_record(line, text)
        return result if isinstance(result, list) else (result[0], _ENCODE(result[1]))

    def csv_record(
        self, line: int, cells: Sequence[str]
    ) -> tuple[str, dict[str, Any]] | list[RowError]:
        """Validates one CSV row into its converted values.

        Args:
            line: Its line number.
            cells: Its cells.

        Returns:
            ``(key text, {field: converted value})`` or the row's errors. Empty cells are
            missing values (left out).
        """
        if len(cells) != len(self._plan):
            return [
                RowError(
                    line,
                    "",
                    f"expected {len(self._plan)} columns as in the header, got {len(cells)}",
                    _cut(",".join(cells)),
                )
            ]
        # Characters <= bytes <= 4 * characters: only measure bytes when it could matter.
        chars = sum(map(len, cells)) + len(cells) - 1
        if chars * 4 > self.max_row_bytes:
            size = sum(map(utf8_size, cells)) + len(cells) - 1
            if size > self.max_row_bytes:
                text = ",".join(cells)
                return [RowError(line, "", row_limit_reason(size, self.max_row_bytes), _cut(text))]
        record: dict[str, Any] = {}
        errors: list[RowError] | None = None
        for (name, convert, required), raw in zip(self._plan, cells, strict=True):
            if raw == "":
                if required:
                    errors = errors or []
                    errors.append(RowError(line, name, "required value is missing", ""))
                continue
            if len(raw) * 4 > self.max_cell_bytes and utf8_size(raw) > self.max_cell_bytes:
                errors = errors or []
                errors.append(
                    RowError(line, name, cell_limit_reason(raw, self.max_cell_bytes), _cut(raw))
                )
                continue
            if convert is None:
                record[name] = raw
                continue
            try:
                record[name] = convert(raw)
            except ValueError as exc:
                errors = errors or []
                errors.append(RowError(line, name, str(exc), _cut(raw)))
        if errors:
            return errors
        return key_text(record[self._key]), record

    def json_record(self, line: int, text: str) -> tuple[str, dict[str, Any]] | list[RowError]:
        """Validates one JSONL row into its converted values.

        Args:
            line: Its line number.
            text: The line.

        Returns:
            ``(key text, {field: converted value})`` or the row's errors. ``null`` is a
            missing value (left out); undeclared keys are errors.
        """
        if len(text) * 4 > self.max_row_bytes:
            size = utf8_size(text)
            if size > self.max_row_bytes:
                return [RowError(line, "", row_limit_reason(size, self.max_row_bytes), _cut(text))]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return [RowError(line, "", f"not valid JSON: {exc.msg}", _cut(text))]
        except ValueError as exc:
            return [RowError(line, "", f"not valid JSON: {exc}", _cut(text))]
        except RecursionError:
            # Input, not a bug: a row like [[[[...]]]] 100,000 levels deep. Rejected, not retried.
            return [RowError(line, "", "input nested too deeply to parse", _cut(text))]
        if not isinstance(value, dict):
            return [RowError(line, "", "expected a JSON object", _cut(text))]
        record: dict[str, Any] = {}
        errors: list[RowError] = []
        for name, raw in value.items():
            field = self._by_name.get(str(name))
            if field is None:
                errors.append(
                    RowError(
                        line, str(name), "field is not declared in the dataset", _cut(_as_text(raw))
                    )
                )
                continue
            if raw is None or raw == "":
                continue
            if not isinstance(raw, (str, int, float, bool)) or isinstance(raw, str):
                shown = _as_text(raw)
                if len(shown) * 4 > self.max_cell_bytes and utf8_size(shown) > self.max_cell_bytes:
                    errors.append(
                        RowError(
                            line,
                            field.name,
                            cell_limit_reason(shown, self.max_cell_bytes),
                            _cut(shown),
                        )
                    )
                    continue
            try:
                record[field.name] = self._convert[field.name](raw)
            except ValueError as exc:
                errors.append(RowError(line, field.name, str(exc), _cut(_as_text(raw))))
        for field in self._fields:
            if (
                field.required
                and field.name not in record
                and not any(e.field == field.name for e in errors)
            ):
                errors.append(RowError(line, field.name, "required value is missing", ""))
        if errors:
            return errors
        return key_text(record[self._key]), record

    def record(self, fmt: str, line: int, raw: Any) -> tuple[str, dict[str, Any]] | list[RowError]:
        """Validates one row of ``fmt`` into its converted values (missing ones left out).

        Args:
            fmt: ``csv`` or ``jsonl``.
            line: Line number.
            raw: Cells (CSV) or line text (JSONL).

        Returns:
            ``(key, {field: converted value})`` or errors.
        """
        return self.csv_record(line, raw) if fmt == "csv" else self.json_record(line, raw)

    def row(self, fmt: str, line: int, raw: Any) -> tuple[str, str] | list[RowError]:
        """Validates one row of ``fmt``.

        Args:
            fmt: ``csv`` or ``jsonl``.
            line: Line number.
            raw: Cells (CSV) or line text (JSONL).

        Returns:
            ``(key, JSON)`` or errors.
        """
        return self.csv_row(line, raw) if fmt == "csv" else self.json_row(line, raw)
