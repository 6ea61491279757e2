"""Unit: the vectorized (pyarrow) CSV validator gives exactly the row-by-row validator's results."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domains.imports.model import FieldDef
from tests.support.imports import columnar_matches_row_validator

FIELDS = [
    FieldDef("id", "string", required=True),
    FieldDef("n", "number", required=True),
    FieldDef("i", "integer"),
    FieldDef("b", "boolean"),
    FieldDef("d", "date"),
    FieldDef("t", "timestamp"),
    FieldDef("e", "enum", values=("A", 'B"\\x')),
    FieldDef("s", "string"),
]
COLUMNS = [f.name for f in FIELDS]
TRICKY = {
    "id": ["", "k1", "k\t2", "k\\3", "k\n4", 'K"5', "ü", "1"],
    "n": [
        "",
        "1",
        "-0",
        "1.5",
        "1e16",
        "1e-7",
        "abc",
        "1_0",
        " 2",
        "inf",
        "nan",
        "1e999",
        "2.0",
        "0.1",
        "123456789012345678",
        "+3",
        ".5",
        "5.",
        "\u0661",
        "9007199254740993",
    ],
    "i": [
        "",
        "1",
        "-0",
        "007",
        "+5",
        "1.0",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "1_000",
        " 4",
        "x",
        "١٢",
        "999999999999999999",
    ],
    "b": [
        "",
        "true",
        "TRUE",
        "Yes",
        "n",
        "0",
        "1",
        " t",
        "maybe",
        "True ",
        "\uff34\uff32\uff35\uff25",
    ],
    "d": [
        "",
        "2026-01-31",
        "2026-02-30",
        "0001-01-01",
        "2024-02-29",
        "2023-02-29",
        " 2026-01-31",
        "2026-W01-1",
        "20260131",
        "9999-12-31",
        "1100-01-01",
        "2026-13-01",
    ],
    "t": [
        "",
        "2026-01-31T12:00:00Z",
        "2026-01-31T12:00:00.5+02:00",
        "2026-01-31T12:00:00",
        "2026-01-31 12:00:00Z",
        "2026-02-30T12:00:00Z",
        "2026-01-31T12:00:00.123456-05:30",
        "2026-01-31T23:59:60Z",
        "2026-01-31T12:00:00.1234567Z",
        "1100-01-01T00:30:00+01:00",
        "2026-01-31T12:00:00+0200",
        "9999-12-31T23:00:00-05:00",
        "2026-01-31T12:00:00.000000Z",
    ],
    "e": ["", "A", 'B"\\x', "a", "C"],
    "s": ["", "x", 'a"b', "back\\slash", "tab\there", "nl\nx", "ü", "\x01", "x" * 300, "é" * 70],
}
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _cell(name: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(TRICKY[name]), st.text(max_size=12))


ROW = st.tuples(*(_cell(c) for c in COLUMNS)).map(list)


@FUZZ
@given(
    st.lists(st.one_of(ROW, ROW.map(lambda r: r[:-1]), ROW.map(lambda r: [*r, "x"])), max_size=40)
)
def test_columnar_validation_equals_row_by_row(rows):
    numbered = [(2 + 3 * i, cells) for i, cells in enumerate(rows)]
    columnar_matches_row_validator(FIELDS, "id", COLUMNS, numbered)


@FUZZ
@given(st.lists(ROW, min_size=1, max_size=20))
def test_byte_limits_are_row_errors_alike(rows):
    numbered = [(2 + i, cells) for i, cells in enumerate(rows)]
    columnar_matches_row_validator(
        FIELDS, "id", COLUMNS, numbered, max_cell_bytes=40, max_row_bytes=120
    )


def test_every_tricky_value_in_every_position():
    rows = []
    width = max(len(v) for v in TRICKY.values())
    for j in range(width):
        rows.append((j + 2, [TRICKY[c][j % len(TRICKY[c])] for c in COLUMNS]))
        rows.append((j + 100, ["k", "1", *(TRICKY[c][j % len(TRICKY[c])] for c in COLUMNS[2:])]))
    got = columnar_matches_row_validator(FIELDS, "id", COLUMNS, rows)
    assert got.accepted and got.rejected
    got = columnar_matches_row_validator(
        FIELDS, "id", COLUMNS, rows, max_cell_bytes=100, max_row_bytes=200
    )
    assert any("CONVEYOR_IMPORTS__MAX_CELL_BYTES" in e[2] for e in got.errors)


def test_slices_by_rows_and_by_characters_give_the_same_result(monkeypatch):
    from domains.imports import columnar

    rows = [(j + 2, [f"k{j}", str(j), *([""] * 5), "x" * (j % 7)]) for j in range(25)]
    whole = columnar_matches_row_validator(FIELDS, "id", COLUMNS, rows)
    monkeypatch.setattr(columnar, "SLICE_ROWS", 4)
    by_rows = columnar_matches_row_validator(FIELDS, "id", COLUMNS, rows)
    monkeypatch.setattr(columnar, "SLICE_ROWS", 1000)
    monkeypatch.setattr(columnar, "SLICE_CHARS", 10)
    by_chars = columnar_matches_row_validator(FIELDS, "id", COLUMNS, rows)
    assert whole.staged_copy == by_rows.staged_copy == by_chars.staged_copy
    assert whole.accepted == 25


def _both_readers(data: bytes, first_line: int = 2) -> tuple[Any, Any, bool]:
    """Validates ``data`` via pyarrow's reader (if it takes it) and via ``csv.reader``."""
    from domains.imports import columnar

    validator = columnar.ColumnarValidator(FIELDS, "id", COLUMNS)
    text = data.decode("utf-8", errors="replace")
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    before = 0
    for cells in reader:
        line = first_line + before
        before = reader.line_num
        if cells and not (len(cells) == 1 and not cells[0].strip()):
            rows.append((line, cells))
    by_rows = validator.validate(rows, chunk_no=0)
    arrays = columnar.read_one_row_per_line(data, COLUMNS)
    if arrays is None:
        return by_rows, by_rows, False
    return validator.validate_arrays(arrays, first_line), by_rows, True


def _same(got: Any, want: Any) -> None:
    assert (got.accepted, got.rejected) == (want.accepted, want.rejected)
    assert sorted(got.errors) == sorted(want.errors)
    assert bytes(got.staged_copy) == bytes(want.staged_copy)


@FUZZ
@given(st.lists(st.one_of(ROW, ROW.map(lambda r: r[:-1])), min_size=1, max_size=30))
def test_pyarrow_reader_gives_what_csv_reader_gives(rows):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    got, want, _ = _both_readers(out.getvalue().encode())
    _same(got, want)


@pytest.mark.parametrize(
    ("data", "taken"),
    [
        (b'k1,1,2,true,2026-01-31,,A,x\nk2,2.5,,,,,,"a, b"\n', True),
        (b'k1,1,,,,,,"q ""x"" y"\r\nk2,2,,,,,,z\r\n', True),
        (b'k1,1,,,,,,a"b"c\nk2,2,,,,,,"ab"c\n', None),  # odd quoting: checked against csv
        (b'k1,1,,,,,,"two\nlines"\nk2,2,,,,,,z\n', False),
        (b"k1,1,,,,,,x\n\nk2,2,,,,,,z\n", False),
        (b"k1,1,,,,,,x\rk2,2,,,,,,z\n", False),
        (b"k1,1,,,,,,x\nk2,2\n", False),
        (b"k1,1,,,,,,\xff\n", False),
    ],
)
def test_pyarrow_reader_is_used_only_when_it_is_exact(data, taken):
    got, want, used = _both_readers(data)
    _same(got, want)
    if taken is not None:
        assert used is taken


@FUZZ
@given(st.binary(max_size=60).map(lambda b: bytes(b'ab"\n'[x % 4] for x in b)))
def test_quoted_lines_are_the_lines_holding_a_quote(data):
    from domains.imports import columnar

    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    assert columnar._quoted_lines(data) == [i for i, line in enumerate(lines) if b'"' in line]


CLEAN = [
    ["k1", "12.5", "7", "true", "2024-02-29", "2026-01-31T23:59:59.5+15:59", "A", "x"],
    ["k2", "0", "-3", "no", "1999-12-31", "2026-06-01T00:00:00Z", "A", ""],
    ["k3", "", "", "", "", "", "", "y"],
    ["k4", "-123456789012345.123456789012345", "007", "FALSE", "2023-01-01", "", "A", "z"],
]
STRAY = {  # one value per column that leaves the common case (it takes the converter's path)
    "n": "1e3",
    "i": "+5",
    "d": "2023-02-29",
    "t": "2026-01-31T10:00:00+16:00",
}


@pytest.mark.parametrize("stray", [None, *STRAY])
def test_clean_columns_and_one_stray_value_give_the_row_by_row_result(stray):
    # Clean columns take the vectorized shortcuts (a number column of input shape, dates
    # that are all on the calendar, every row valid); a stray value sends its column down
    # the full checks. Both must equal the row-by-row validator.
    rows = [(2 + i, list(cells)) for i, cells in enumerate(CLEAN)]
    if stray is not None:
        rows[0][1][COLUMNS.index(stray)] = STRAY[stray]
    got = columnar_matches_row_validator(FIELDS, "id", COLUMNS, rows)
    assert got.accepted + got.rejected == len(rows)
