"""Unit: the streaming CSV/JSONL splitter, chunk reader and row validator (no I/O but files)."""

from __future__ import annotations

import csv
import gzip
import io
from typing import Any

import pytest

from domains.imports import parsing
from domains.imports.model import FieldDef, breaking_changes

FIELDS = [
    FieldDef("id", "string", required=True),
    FieldDef("n", "integer"),
    FieldDef("x", "number"),
    FieldDef("b", "boolean"),
    FieldDef("d", "date"),
    FieldDef("t", "timestamp"),
    FieldDef("e", "enum", values=("A", "B")),
    FieldDef("s", "string"),
]


def write(tmp_path: Any, data: bytes, name: str = "f.csv") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def all_rows(path: str, plan: parsing.FilePlan) -> list[tuple[int, Any]]:
    rows: list[tuple[int, Any]] = []
    for chunk in plan.chunks:
        rows += list(
            parsing.iter_chunk_rows(
                path, plan.format, chunk.start_offset, chunk.end_offset, chunk.first_line
            )
        )
    return rows


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100])
def test_chunks_cover_every_row_once_with_physical_line_numbers(tmp_path, chunk_rows):
    text = (
        "\ufeffid,s\r\n"
        "a,plain\r\n"
        '"b","two\r\nlines"\r\n'
        "\r\n"
        'c,"quote "" inside"\r\n'
        'd,"x\n\ny"\n'
        "e,last"
    )
    path = write(tmp_path, text.encode())
    plan = parsing.plan_chunks(path, "csv", FIELDS, chunk_rows)
    assert plan.columns == ["id", "s"]
    assert plan.rows_total == 5
    assert sum(c.rows for c in plan.chunks) == 5
    rows = all_rows(path, plan)
    assert [(line, cells[0]) for line, cells in rows] == [
        (2, "a"),
        (3, "b"),
        (6, "c"),
        (7, "d"),
        (10, "e"),
    ]
    assert rows[1][1] == ["b", "two\r\nlines"]
    assert rows[2][1] == ["c", 'quote " inside']


def test_generated_file_round_trips_through_chunks(tmp_path):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "s"])
    expected = []
    for i in range(1000):
        value = f"v{i}" + ("\nwith newline" if i % 7 == 0 else "") + (',"q"' if i % 5 == 0 else "")
        writer.writerow([f"k{i}", value])
        expected.append([f"k{i}", value])
    path = write(tmp_path, out.getvalue().encode())
    plan = parsing.plan_chunks(path, "csv", FIELDS, 37)
    assert [cells for _, cells in all_rows(path, plan)] == expected


def test_jsonl_and_gzip(tmp_path):
    data = b'{"id": "a"}\n\n{"id": "b"}\r\n{"id": "c"}'
    path = write(tmp_path, gzip.compress(data), "f.jsonl.gz")
    plain = parsing.prepare_plain(path, max_bytes=1000)
    assert plain.endswith(".plain")
    assert parsing.detect_format(plain, "auto") == "jsonl"
    plan = parsing.plan_chunks(plain, "jsonl", FIELDS, 2)
    assert [line for line, _ in all_rows(plain, plan)] == [1, 3, 4]
    with pytest.raises(parsing.ImportFileError, match="more than 10 bytes"):
        parsing.prepare_plain(path, max_bytes=10)
    broken = write(tmp_path, gzip.compress(data)[:-12], "broken.gz")
    with pytest.raises(parsing.ImportFileError, match="cannot be decompressed"):
        parsing.prepare_plain(broken, max_bytes=1000)


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"id,s\na,\xff\n", "csv", "line 2 is not valid UTF-8"),
        (b"id,s\x00\n", "csv", "NUL bytes"),
        (b"", "csv", "no header"),
        (b"id,id\na,b\n", "csv", "twice"),
        (b'id,s\na,"open\n', "csv", "ends inside a quoted"),
        (b"[1, 2]\n", "jsonl", "not a JSON object"),
        (b"id,s\n\n\n", "csv", "no data rows"),
    ],
)
def test_file_errors_say_what_to_fix(tmp_path, data, fmt, message):
    path = write(tmp_path, data)
    with pytest.raises(parsing.ImportFileError, match=message):
        parsing.plan_chunks(path, fmt, FIELDS, 10)


@pytest.mark.parametrize(
    ("column", "raw", "stored"),
    [
        ("n", "-42", -42),
        ("x", "1e3", 1000),
        ("x", "2.5", 2.5),
        ("b", "Yes", True),
        ("b", "0", False),
        ("d", "2026-02-28", "2026-02-28"),
        ("t", "2026-02-28T10:00:00+02:00", "2026-02-28T08:00:00+00:00"),
        ("e", "B", "B"),
    ],
)
def test_values_are_converted_to_their_declared_type(column, raw, stored):
    validator = parsing.RowValidator(FIELDS, "id", ["id", column])
    key, data = validator.csv_row(2, ["k", raw])  # type: ignore[misc]
    assert key == "k"
    import json

    assert json.loads(data) == {"id": "k", column: stored}


@pytest.mark.parametrize(
    ("column", "raw", "reason"),
    [
        ("n", "1.5", "expected an integer"),
        ("n", "99999999999999999999", "64-bit"),
        ("x", "nan", "finite"),
        ("b", "maybe", "expected a boolean"),
        ("d", "31/01/2026", "expected a date"),
        ("t", "2026-01-01T00:00:00", "needs an offset"),
        ("e", "C", "expected one of A, B"),
    ],
)
def test_invalid_values_become_row_errors(column, raw, reason):
    validator = parsing.RowValidator(FIELDS, "id", ["id", column])
    errors = validator.csv_row(5, ["k", raw])
    assert isinstance(errors, list)
    assert (errors[0].line, errors[0].field, errors[0].raw_value) == (5, column, raw)
    assert reason in errors[0].reason


def test_row_shape_and_required_errors():
    validator = parsing.RowValidator(FIELDS, "id", ["id", "n"])
    assert validator.csv_row(3, ["a"])[0].reason == "expected 2 columns as in the header, got 1"  # type: ignore[index]
    assert validator.csv_row(4, ["", "1"])[0].field == "id"  # type: ignore[index]
    json_validator = parsing.RowValidator(FIELDS, "id")
    errors = json_validator.json_row(7, '{"n": 1, "zzz": 2}')
    assert isinstance(errors, list)
    assert {(e.field, e.reason) for e in errors} == {
        ("zzz", "field is not declared in the dataset"),
        ("id", "required value is missing"),
    }
    assert json_validator.json_row(8, '{"id": 5}') == ("5", '{"id":"5"}')


def test_breaking_changes_lists_each_problem():
    old = [FieldDef("id", "string", True), FieldDef("e", "enum", values=("A", "B"))]
    assert breaking_changes(old, "id", [*old, FieldDef("new", "string")], "id") == []
    problems = breaking_changes(
        old, "id", [FieldDef("id", "integer", True), FieldDef("e", "enum", values=("A",))], "id"
    )
    assert problems == [
        "field 'id' changes type from string to integer",
        "enum field 'e' loses values ['B']",
    ]


TRICKY_BODIES = [
    # One row per line (the block path), with quoted commas, with and without a final newline.
    b"".join(
        b'k%d,"a, ""b"" %d"\n' % (i, i) if i % 3 == 0 else b"k%d,%d\n" % (i, i) for i in range(200)
    ),
    b"".join(b"k%d,%d\n" % (i, i) for i in range(199)) + b"last,row",
    "k1,\u201cquoted\u201d\nk2,x\n".encode(),
    b'a,plain\r\n"b","two\r\nlines"\r\n\r\nc,"quote "" inside"\r\nd,"x\n\ny"\n',
    b"a,1\n\n   \n\t\r\nb,2\n" + "\u00a0\u2003\n".encode() + b"c,3",
    "\u00e9,caf\u00e9\n\u00a0x,1\n".encode() + b'e,"multi\n\n\nline"\nf,2\n',
    b"a,1\nb,\xff bad\nc,3\n",
    b'a,"never closed\nb,2\n',
    b"a,1\nb\x00,2\n",
    b"".join(
        b'k%d,"v %d\nsecond"\n' % (i, i) if i % 7 == 0 else b"k%d,%d\n" % (i, i) for i in range(300)
    ),
]


@pytest.mark.parametrize("body", TRICKY_BODIES)
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 50])
@pytest.mark.parametrize("encoding_errors", ["fail", "replace"])
def test_block_cutting_gives_the_line_by_line_plan(
    tmp_path, monkeypatch, body, chunk_rows, encoding_errors
):
    path = write(tmp_path, b"id,s\n" + body)

    def plan() -> Any:
        try:
            return parsing.plan_chunks(
                path, "csv", FIELDS, chunk_rows, encoding_errors=encoding_errors
            )
        except parsing.ImportFileError as exc:
            return str(exc)

    # Blocks of a few bytes: many block ends fall inside rows and quoted fields.
    monkeypatch.setattr(parsing, "_BLOCK_BYTES", 5)
    by_blocks = plan()
    monkeypatch.setattr(parsing, "_BLOCK_BYTES", 1 << 20)
    one_block = plan()
    monkeypatch.setattr(parsing, "_plan_csv_body", lambda *args: None)
    line_by_line = plan()
    assert by_blocks == one_block == line_by_line
