r"""Vectorized validation of CSV chunks (pyarrow): the same results as :class:`RowValidator`.

Why pyarrow (not polars): its compute kernels (regex masks, casts, string joins) do all the
per-cell work in C++ without numpy, its wheel is one dependency with no runtime of its own, and
``binary_join_element_wise`` builds each typed COPY line without a Python loop. Valid rows are
COPYed as typed values (no JSON on the hot path) into the import's staging table, which has the
records table's columns.

Exactness comes first: a value takes the vectorized path only when it has a canonical shape on
which pyarrow and the Python converters provably agree (``-?\d{1,18}`` for integers, an
unpadded ``YYYY-MM-DD`` that survives a round trip for dates, ...). Every other value (and every
error) goes through the Python converter of :mod:`domains.imports.parsing`, so reasons and
stored values are exactly the row-by-row ones; the vectorized path only makes the common case
cheap. Rows are still cut by :func:`parsing.iter_chunk_rows` (``csv.reader``), so quoted
multi-line cells keep their physical line numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pa_csv

from domains.imports import parsing
from domains.imports.model import FieldDef

_INTEGER = r"^-?[0-9]{1,18}$"
_NUMBER = r"^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?$"
# Years 1100-9899 only: converting to UTC can never leave Python's 1..9999 range, and pyarrow
# and Python print them alike (4 digits).
_YEAR = r"(1[1-9]|[2-8][0-9]|9[0-8])[0-9]{2}"
_DATE = rf"^{_YEAR}-[0-9]{{2}}-[0-9]{{2}}$"
_DATE_TIME = (
    rf"^{_YEAR}-[0-9]{{2}}-[0-9]{{2}}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{{1,6}})?"
)
_TIMESTAMP = _DATE_TIME + r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
# Values a typed column reads as the very value Python's converter gives, text as it is (see
# _fast's typed_input): PostgreSQL's float8 input and Python's float() both round correctly,
# and these short decimals can neither overflow nor underflow; "-0" is left out (Python stores
# it as 0). PostgreSQL refuses time zone offsets of 16 hours or more, which Python takes.
_NUMBER_INPUT = r"^(-?[1-9][0-9]{0,14}|0)(\.[0-9]{1,15})?$"
_TIMESTAMP_INPUT = r"(Z|[+-](0[0-9]|1[0-5]):[0-5][0-9])$"
# The timestamp shape with an offset PostgreSQL takes: both checks in one pass over a column.
_TIMESTAMP_TYPED = _DATE_TIME + _TIMESTAMP_INPUT
_NEEDS_COPY_ESCAPE = r"[\\\t\n\r]"
_COPY_ESCAPE_BYTES = (b"\\", b"\t", b"\n", b"\r")
_MAX_EXACT_INT = float(2**53)
SLICE_ROWS = 10_000
"""Rows validated together (bounds the memory of the intermediate arrays)."""
SLICE_CHARS = 16 * 1024 * 1024
"""Characters of cells validated together, at most (a slice of very wide rows is shorter)."""

# The default pool (mimalloc) keeps freed pages: after a few chunks a worker held ~100 MB
# more than with the C allocator, which hands large blocks back. Same speed here.
pa.set_memory_pool(pa.system_memory_pool())


@dataclasses.dataclass
class ChunkResult:
    """A validated chunk.

    Attributes:
        accepted: Valid rows.
        rejected: Invalid rows.
        staged_copy: COPY text-format payload of the valid rows for the import's typed
            staging table (columns ``line, $key`` and then the CSV's columns in file
            order, each value in its column type's input form, NULL for a missing one),
            bytes-like (a pyarrow buffer; ``b""`` if none).
        errors: ``(line, field, reason, raw_value)`` of each problem.
        keys_sorted: The payload's rows are in bytewise key order and no key is there twice
            (the merge can read them as they are, without sorting or de-duplicating).
    """

    accepted: int
    rejected: int
    staged_copy: Any
    errors: list[tuple[int, str, str, str]]
    keys_sorted: bool = False


@dataclasses.dataclass
class _Slice:
    """A validated slice: counts, errors and its valid rows, not joined yet."""

    accepted: int
    rejected: int
    errors: list[tuple[int, str, str, str]]
    keys: Any = None  # key text of each valid row (unescaped: what the $key column holds)
    lines: Any = None  # the valid rows' COPY lines, each ending with its newline


@dataclasses.dataclass
class _Column:
    value: Any  # text form (strings unquoted; a typed column's input), null if missing/invalid
    bad: Any  # bool array: the cell makes its row invalid


def _bool(values: Iterable[bool]) -> Any:
    return pa.array(list(values), type=pa.bool_())


def _fast(field: FieldDef, arr: Any, *, typed_input: bool = False) -> tuple[Any, Any, Any]:
    """Returns ``(fast mask, value text, json text or None)`` for values of canonical shape.

    Args:
        field: The field.
        arr: Its cells (strings).
        typed_input: The value text only feeds the field's typed column (it is not the key):
            where PostgreSQL reads the same value from the cell's own text as from the
            converter's canonical form, the cell is passed as it is, which saves the
            formatting casts (numbers, integers, timestamps).

    Returns:
        The mask of the values taking the fast path, their text and their JSON text.
    """
    n = len(arr)
    if field.type == "string":
        return _bool([True] * n), arr, None
    if field.type == "enum":
        return pc.is_in(arr, value_set=pa.array(list(field.values), pa.string())), arr, None
    if field.type == "boolean":
        lower = pc.ascii_lower(arr)
        yes = pc.is_in(lower, value_set=pa.array(sorted(parsing.TRUE_WORDS)))
        no = pc.is_in(lower, value_set=pa.array(sorted(parsing.FALSE_WORDS)))
        value = pc.if_else(yes, "true", pc.if_else(no, "false", pa.scalar(None, pa.string())))
        return pc.or_(yes, no), value, value
    if field.type == "integer":
        mask = pc.match_substring_regex(arr, _INTEGER)
        if typed_input:  # bigint input reads "007" and "-0" as 7 and 0, like int()
            return mask, arr, None
        ints = pc.cast(pc.if_else(mask, arr, "0"), pa.int64())
        value = pc.cast(ints, pa.string())
        return mask, value, value
    if field.type == "number":
        if typed_input:
            # The common case first: when every value has the typed-input shape (or is an
            # empty cell, never fast), this one regex is the answer the checks below give.
            typed = pc.match_substring_regex(arr, _NUMBER_INPUT)
            if pc.all(pc.or_(typed, pc.equal(arr, ""))).as_py():
                return typed, arr, None
        mask = pc.match_substring_regex(arr, _NUMBER)
        floats = pc.cast(pc.if_else(mask, arr, "0"), pa.float64())
        mask = pc.and_(mask, pc.is_finite(floats))
        if (
            typed_input
            and pc.all(
                pc.or_(pc.invert(mask), pc.match_substring_regex(arr, _NUMBER_INPUT))
            ).as_py()
        ):
            return mask, arr, None
        integral = pc.and_(
            pc.equal(floats, pc.trunc(floats)), pc.less(pc.abs(floats), _MAX_EXACT_INT)
        )
        as_int = pc.cast(pc.cast(pc.if_else(integral, floats, 0.0), pa.int64()), pa.string())
        # Non-integral floats print as their shortest round-trip digits, like Python's repr;
        # exponents may be written differently (1e-7 / 1e-07), which jsonb stores as one number.
        value = pc.if_else(integral, as_int, pc.cast(floats, pa.string()))
        return mask, value, value
    if field.type == "date":
        mask = pc.match_substring_regex(arr, _DATE)
        mask = pc.and_(mask, _round_trips(arr, mask))
        return mask, arr, None
    if field.type == "timestamp":
        # timestamptz input reads the same instant as Python's conversion to UTC; a value
        # with an offset it refuses takes the converter's path (UTC) instead.
        mask = pc.match_substring_regex(arr, _TIMESTAMP_TYPED if typed_input else _TIMESTAMP)
        mask = pc.and_(mask, _round_trips(pc.utf8_slice_codeunits(arr, 0, 10), mask))
        if not pc.any(mask).as_py():
            return mask, pa.nulls(n, pa.string()), None
        if typed_input:
            return mask, arr, None
        safe = pc.if_else(mask, arr, "2000-01-01T00:00:00Z")
        try:
            stamps = pc.cast(safe, pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid:  # pragma: no cover - the regex and date check rule this out
            return _bool([False] * n), pa.nulls(n, pa.string()), None
        # "YYYY-MM-DD HH:MM:SS.ffffff" -> Python's isoformat(): T, no zero fraction, +00:00.
        text = pc.cast(pc.cast(stamps, pa.timestamp("us")), pa.string())
        base = pc.replace_substring(pc.utf8_slice_codeunits(text, 0, 19), " ", "T")
        fraction = pc.utf8_slice_codeunits(text, 19, 26)
        fraction = pc.if_else(pc.equal(fraction, ".000000"), "", fraction)
        return mask, pc.binary_join_element_wise(base, fraction, "+00:00", ""), None
    raise ValueError(f"unknown field type {field.type}")  # pragma: no cover


def _round_trips(dates: Any, mask: Any) -> Any:
    """Whether each ``YYYY-MM-DD`` under ``mask`` is a real calendar date (printing it back
    gives it); the answer for the others is not defined (callers AND it with ``mask``).
    """
    safe = pc.if_else(mask, dates, "2000-01-01")
    try:
        # The common case, every date real: one cast, which refuses the array if any date is
        # not on the calendar (02-30, 13-01, 1900-02-29), 5x cheaper than the round trip.
        pc.cast(safe, pa.date32())
    except pa.ArrowInvalid:
        pass
    else:
        return mask
    # strptime rolls 02-30 over to 03-02: printing the date back tells.
    parsed = pc.strptime(safe, format="%Y-%m-%d", unit="s", error_is_null=True)
    printed = pc.cast(pc.cast(parsed, pa.date32()), pa.string())
    return pc.fill_null(pc.equal(printed, safe), False)


class ColumnarValidator:
    """Validates a CSV chunk column by column; same outcome as :class:`RowValidator`."""

    def __init__(
        self,
        fields: Sequence[FieldDef],
        key_field: str,
        columns: Sequence[str],
        *,
        max_cell_bytes: int = parsing.MAX_CELL_BYTES,
        max_row_bytes: int = parsing.MAX_ROW_BYTES,
    ) -> None:
        """Compiles the validator.

        Args:
            fields: Declared fields.
            key_field: Upsert key field.
            columns: CSV header columns (file order).
            max_cell_bytes: Largest cell (bytes); larger ones are row errors.
            max_row_bytes: Largest row (bytes of its cells and separators).
        """
        by_name = {f.name: f for f in fields}
        self._fields = [by_name[c] for c in columns]
        self._key = key_field
        self._row = parsing.RowValidator(
            fields,
            key_field,
            columns,
            max_cell_bytes=max_cell_bytes,
            max_row_bytes=max_row_bytes,
        )
        self._converters = {f.name: parsing.converter(f) for f in fields}
        self._max_cell = max_cell_bytes
        self._max_row = max_row_bytes

    def validate(self, rows: Iterable[tuple[int, list[str]]], *, chunk_no: int) -> ChunkResult:
        """Validates the rows of one chunk, :data:`SLICE_ROWS` rows at a time.

        Args:
            rows: ``(line, cells)`` from :func:`parsing.iter_chunk_rows` (read lazily).
            chunk_no: The chunk (kept for callers; the payload no longer carries it).

        Returns:
            Counts, the COPY payload of the valid rows and the row errors.
        """
        parts: list[_Slice] = []
        # Slices bound the memory of the intermediate arrays (the peak is what counts for the
        # worker's RSS) and keep every string array far below pyarrow's 2 GiB offset limit.
        for batch in _slices(rows):
            parts.append(self._validate_slice(batch, chunk_no))
            del batch
        return _assemble(parts)

    def _validate_slice(self, rows: list[tuple[int, list[str]]], chunk_no: int) -> _Slice:
        width = len(self._fields)
        errors: list[tuple[int, str, str, str]] = []
        lines: list[int] = []
        good: list[list[str]] = []
        shape_errors = 0
        for line, cells in rows:
            if len(cells) == width:
                lines.append(line)
                good.append(cells)
            else:
                shape_errors += 1
                errors.extend(_tuples(self._row.csv_row(line, cells)))
        if not good:
            return _Slice(0, shape_errors, errors)
        raw_columns = list(zip(*good, strict=True))
        del good
        arrays = [pa.array(col, type=pa.string()) for col in raw_columns]
        return self._validate_arrays(lines, arrays, raw_columns, shape_errors, errors)

    def validate_arrays(self, columns: Sequence[Any], first_line: int) -> ChunkResult:
        """Validates a chunk already parsed into string columns, one row per physical line.

        Args:
            columns: One string array per CSV column (file order), from
                :func:`read_one_row_per_line`.
            first_line: Line number of the first row (row ``i`` is on ``first_line + i``).

        Returns:
            As :meth:`validate`.
        """
        parts: list[_Slice] = []
        total = len(columns[0]) if columns else 0
        for offset in range(0, total, SLICE_ROWS):
            arrays = [c.slice(offset, SLICE_ROWS) for c in columns]
            lines = list(range(first_line + offset, first_line + offset + len(arrays[0])))
            raw = [_Cells(a) for a in arrays]
            parts.append(self._validate_arrays(lines, arrays, raw, 0, []))
        return _assemble(parts)

    def _validate_arrays(
        self,
        lines: list[int],
        arrays: list[Any],
        raw_columns: Sequence[Sequence[str]],
        shape_errors: int,
        errors: list[tuple[int, str, str, str]],
    ) -> _Slice:
        width = len(self._fields)
        sizes = [pc.binary_length(a) for a in arrays]
        row_size = sizes[0]
        for size in sizes[1:]:
            row_size = pc.add(row_size, size)
        row_size = pc.add(row_size, width - 1)
        row_too_big = pc.greater(row_size, self._max_row)
        big_rows = set(pc.indices_nonzero(row_too_big).to_pylist())
        for i in sorted(big_rows):
            cells = [c[i] for c in raw_columns]
            errors.extend(_tuples(self._row.csv_row(lines[i], cells)))

        key_value = None
        values = []
        bad_any = row_too_big
        for field, arr, size, raw in zip(self._fields, arrays, sizes, raw_columns, strict=True):
            column = self._column(field, arr, size, raw, lines, big_rows, errors)
            bad_any = pc.or_(bad_any, column.bad)
            values.append(column.value)
            if field.name == self._key:
                key_value = column.value
        assert key_value is not None
        ok = pc.invert(bad_any)
        accepted = pc.sum(ok).as_py() or 0
        rejected = len(lines) - accepted + shape_errors
        if not accepted:
            return _Slice(0, rejected, errors)
        # Every row valid (the usual case): nothing to filter out.
        every = accepted == len(lines)
        line_text = pc.cast(pa.array(lines, pa.int64()), pa.string())
        line_text = line_text if every else pc.filter(line_text, ok)
        keys = key_value if every else pc.filter(key_value, ok)
        # Typed COPY text: each value in its column type's input form, NULL as \N.
        cells = [_copy_escape(keys)]
        for field, value in zip(self._fields, values, strict=True):
            kept = value if every else pc.filter(value, ok)
            if field.type in ("string", "enum"):
                kept = _copy_escape(kept)
            cells.append(pc.fill_null(kept, "\\N"))
        # Each line ends with its newline: the chunk's payload is then the lines' data buffer.
        cells[-1] = pc.binary_join_element_wise(cells[-1], pa.scalar("\n"), "")
        payload = pc.binary_join_element_wise(line_text, *cells, "\t")
        return _Slice(accepted, rejected, errors, keys=keys, lines=payload)

    def _column(
        self,
        field: FieldDef,
        arr: Any,
        size: Any,
        raw: Sequence[str],
        lines: list[int],
        big_rows: set[int],
        errors: list[tuple[int, str, str, str]],
    ) -> _Column:
        n = len(arr)
        missing = pc.equal(size, 0)
        too_big = pc.greater(size, self._max_cell)
        fast, value, _ = _fast(field, arr, typed_input=field.name != self._key)
        fast = pc.and_(pc.and_(fast, pc.invert(missing)), pc.invert(too_big))
        slow = pc.and_(pc.invert(pc.or_(fast, missing)), pc.invert(too_big))
        bad = pc.and_(missing, pa.scalar(field.required))
        value = pc.if_else(fast, value, pa.scalar(None, pa.string()))
        slow_idx = pc.indices_nonzero(slow).to_pylist()
        if slow_idx:
            convert = self._converters[field.name]
            values: list[str | None] = [None] * n
            bad_flags = [False] * n
            for i in slow_idx:
                try:
                    converted = convert(raw[i])
                except ValueError as exc:
                    bad_flags[i] = True
                    if i not in big_rows:
                        errors.append((lines[i], field.name, str(exc), parsing.cut(raw[i])))
                    continue
                # The text form is also the column type's input form (see key_text).
                values[i] = parsing.key_text(converted)
            value = pc.if_else(slow, pa.array(values, pa.string()), value)
            bad = pc.or_(bad, _bool(bad_flags))
        if pc.any(too_big).as_py():
            for i in pc.indices_nonzero(too_big).to_pylist():
                if i not in big_rows:
                    errors.append(
                        (
                            lines[i],
                            field.name,
                            parsing.cell_limit_reason(raw[i], self._max_cell),
                            parsing.cut(raw[i]),
                        )
                    )
            bad = pc.or_(bad, too_big)
        if field.required and pc.any(missing).as_py():
            for i in pc.indices_nonzero(missing).to_pylist():
                if i not in big_rows:
                    errors.append((lines[i], field.name, "required value is missing", ""))
        return _Column(value=value, bad=bad)


class _Cells(Sequence[str]):
    """The Python strings of a string array, made only for the cells looked at (errors)."""

    def __init__(self, array: Any) -> None:
        self._array = array

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):  # pragma: no cover - not used by the validator
            return self._array[index].to_pylist()
        return self._array[index].as_py()


def read_one_row_per_line(data: bytes, columns: Sequence[str]) -> list[Any] | None:
    """Parses a CSV chunk with pyarrow's reader when each physical line is one row.

    Exactness first: ``None`` (parse it with ``csv.reader`` instead) unless every line holds
    one row (no newline inside quotes, no blank line, no lone carriage return), pyarrow
    accepts it with the header's column count on every line, and each line holding a quote
    gives exactly the cells ``csv.reader`` gives (those lines are checked against it).

    Args:
        data: The chunk's bytes (whole lines).
        columns: The CSV header's columns.

    Returns:
        One string array per column (empty cells are empty strings), or ``None``.
    """
    # (Most files have no carriage return at all: one memchr instead of two counts.)
    if not data or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return None
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    if not parsing.one_record_per_line(data, lines):
        return None
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(column_names=list(columns), use_threads=False),
            parse_options=pa_csv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, ValueError):
        return None
    if table.num_rows != len(lines):
        return None
    arrays = [table.column(i).combine_chunks() for i in range(table.num_columns)]
    quoted = _quoted_lines(data)
    if quoted:
        text = b"\n".join(lines[i] for i in quoted).decode("utf-8")
        expected = list(csv.reader(io.StringIO(text, newline=""), strict=False))
        if len(expected) != len(quoted):
            return None
        picked = pa.array(quoted, pa.int64())
        got = list(zip(*(a.take(picked).to_pylist() for a in arrays), strict=True))
        if [tuple(cells) for cells in expected] != got:
            return None
    return arrays


def _quoted_lines(data: bytes) -> list[int]:
    """Indexes of the lines of ``data`` (split at its newlines) that hold a quote.

    It jumps from quote to quote (a few C calls per quoted line, none for the others): a
    membership test per line cost 0.3-0.5 us each, 3-5 ms per 10,000 lines here.
    """
    found: list[int] = []
    line = start = 0
    quote = data.find(b'"')
    while quote != -1:
        line += data.count(b"\n", start, quote)
        found.append(line)
        end = data.find(b"\n", quote)
        if end == -1:
            break
        line, start = line + 1, end + 1
        quote = data.find(b'"', start)
    return found


def _assemble(parts: Sequence[_Slice]) -> ChunkResult:
    """Joins a chunk's validated slices into one COPY payload, in key order when that is cheap.

    The valid rows are put in bytewise key order (a stable sort of the keys, a few ms for
    50,000 rows) when no key occurs twice: the merge then inserts them as they are, in the one
    order every merge uses, without sorting them in PostgreSQL. A chunk holding a key twice
    stays in file order for the merge's ``DISTINCT ON`` (the later line wins).

    Args:
        parts: The slices, in file order.

    Returns:
        The chunk's result.
    """
    accepted = sum(p.accepted for p in parts)
    rejected = sum(p.rejected for p in parts)
    errors = [e for p in parts for e in p.errors]
    kept = [p for p in parts if p.accepted]
    if not kept:
        return ChunkResult(accepted, rejected, b"", errors)
    # large_string: a chunk's payload may pass the 2 GiB offsets of one string array.
    keys = pa.concat_arrays([p.keys.cast(pa.large_string()) for p in kept])
    lines = pa.concat_arrays([p.lines.cast(pa.large_string()) for p in kept])
    keys_sorted = _strictly_increasing(keys)
    if not keys_sorted:
        order = pc.sort_indices(keys)
        if _strictly_increasing(keys.take(order)):
            lines, keys_sorted = lines.take(order), True
    del keys
    # The lines are contiguous in their data buffer: that slice is the payload (no copy).
    _, offset_buffer, data = lines.buffers()
    offsets = pa.Array.from_buffers(
        pa.int64(), len(lines) + 1, [None, offset_buffer], offset=lines.offset
    )
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    payload = data.slice(start, end - start)
    return ChunkResult(accepted, rejected, payload, errors, keys_sorted=keys_sorted)


def _strictly_increasing(keys: Any) -> bool:
    """Whether each key is bytewise greater than the one before (so none occurs twice)."""
    if len(keys) < 2:
        return True
    later = pc.greater(keys.slice(1), keys.slice(0, len(keys) - 1))
    return bool(pc.all(later).as_py())


def _slices(rows: Iterable[tuple[int, list[str]]]) -> Iterator[list[tuple[int, list[str]]]]:
    """Cuts rows into lists of at most :data:`SLICE_ROWS` rows or :data:`SLICE_CHARS` chars."""
    batch: list[tuple[int, list[str]]] = []
    chars = 0
    for row in rows:
        batch.append(row)
        chars += sum(map(len, row[1]))
        if len(batch) >= SLICE_ROWS or chars >= SLICE_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _copy_escape(values: Any) -> Any:
    """Escapes text for PostgreSQL's COPY text format (backslash, tab, newline, CR)."""
    if not _may_need_copy_escape(values):
        return values
    if not pc.any(pc.match_substring_regex(values, _NEEDS_COPY_ESCAPE)).as_py():
        return values
    values = pc.replace_substring(values, "\\", "\\\\")
    values = pc.replace_substring(values, "\t", "\\t")
    values = pc.replace_substring(values, "\n", "\\n")
    return pc.replace_substring(values, "\r", "\\r")


def _may_need_copy_escape(values: Any) -> bool:
    """Whether any of the COPY escape bytes occurs in the array's character data.

    One ``memchr`` per byte over the value buffer, against a regex per value: most columns
    hold none of them. The buffer may hold bytes outside the array (a slice, or values a
    filter dropped): then the exact per-value check decides.
    """
    if values.type != pa.string():
        return True  # another layout: the exact check decides
    data = values.buffers()[2]
    if data is None:  # no character data at all (empty strings or nulls)
        return False
    raw = data.to_pybytes()
    return any(byte in raw for byte in _COPY_ESCAPE_BYTES)


def _tuples(result: Any) -> list[tuple[int, str, str, str]]:
    if isinstance(result, tuple):  # pragma: no cover - only called for rows known bad
        return []
    return [(e.line, e.field, e.reason, e.raw_value) for e in result]
