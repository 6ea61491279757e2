"""Fuzzing (hypothesis) of the parsers that read untrusted text: the AIP-160 filter parser, the
page-token decoder, the API-key parser and the CSV/JSONL import parser. Each either succeeds or
raises its documented error type; nothing else escapes."""

from __future__ import annotations

import gzip
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import filtering, pagination
from api.v1.operations import FILTER_FIELDS
from domains.shared.errors import InvalidArgument
from domains.shared.query import Condition
from tests.support.imports import columnar_matches_row_validator

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

FIELD_NAMES = [*FILTER_FIELDS, "metadata", "done.x", "AND", "OR", "NOT", "and"]
OPERATORS = ["=", "!=", "<", "<=", ">", ">=", ":", "==", "=<", "!"]
VALUES = [
    "true",
    "false",
    "RUNNING",
    '"SUCCEEDED"',
    "'imports'",
    "2026-01-31T12:00:00Z",
    '"2026-13-45T99:99:99Z"',
    "-1",
    "42",
    '"unterminated',
    '"esc\\"aped"',
    "(",
    ")",
    "*",
    "",
]


def _check_filter(text: str) -> None:
    try:
        conditions = filtering.parse_filter(text, FILTER_FIELDS)
    except InvalidArgument as exc:
        assert exc.reason == "INVALID_FILTER"
        assert exc.message.startswith("filter: ")
        return
    assert all(isinstance(c, Condition) and c.field in FILTER_FIELDS for c in conditions)


@FUZZ
@given(st.text(max_size=300))
def test_filter_parser_on_arbitrary_text(text):
    _check_filter(text)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(FIELD_NAMES),
            st.sampled_from(OPERATORS),
            st.one_of(st.sampled_from(VALUES), st.text(max_size=20)),
            st.sampled_from([" AND ", " ", " OR ", "AND", " and ", "\t"]),
        ),
        max_size=6,
    )
)
def test_filter_parser_on_near_valid_filters(parts):
    text = "".join(f"{field} {op} {value}{joiner}" for field, op, value, joiner in parts)
    _check_filter(text)


def test_filter_parser_rejects_oversized_input():
    with pytest.raises(InvalidArgument):
        filtering.parse_filter("done = true AND " * 1000, FILTER_FIELDS)


@FUZZ
@given(st.one_of(st.text(max_size=400), st.binary(max_size=300).map(lambda b: b.hex())))
def test_page_token_decoder_only_raises_invalid_argument(token):
    try:
        position = pagination.decode_page_token(token, query_fingerprint="f")
    except InvalidArgument as exc:
        assert exc.reason == "INVALID_PAGE_TOKEN"
        return
    assert position is None  # only an empty token is accepted without a signature


@FUZZ
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4), st.text(max_size=5))
def test_page_tokens_round_trip_and_resist_tampering(position, flip):
    token = pagination.encode_page_token(position, query_fingerprint="f")
    assert pagination.decode_page_token(token, query_fingerprint="f") == position
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(InvalidArgument):
        pagination.decode_page_token(tampered + flip, query_fingerprint="f")


# ------------------------------------------------------------------------------ CSV / JSONL

parsing = pytest.importorskip("domains.imports.parsing")
model = pytest.importorskip("domains.imports.model")

FIELDS = [
    model.FieldDef("id", "string", required=True),
    model.FieldDef("n", "integer"),
    model.FieldDef("x", "number"),
    model.FieldDef("ok", "boolean"),
    model.FieldDef("day", "date"),
    model.FieldDef("at", "timestamp"),
    model.FieldDef("kind", "enum", values=("a", "b")),
]
HEADER = b"id,n,x,ok,day,at,kind\n"
CELLS = [
    b"",
    b"1",
    b"-7",
    b"1e309",
    b"nan",
    b"true",
    b"maybe",
    b"2026-02-30",
    b"2026-01-31",
    b"2026-01-31T12:00:00Z",
    b"a",
    b"c",
    b'"quoted, comma"',
    b'"open',
    b'""',
    b"\xff\xfe",
    b"\x00",
    "é".encode(),
    b"\r",
]


def _parse_file(data: bytes, fmt: str) -> None:
    """Runs the whole pipeline on ``data``: prepare, plan, read chunks, validate rows."""
    fd, path = tempfile.mkstemp(suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            plain = parsing.prepare_plain(path, max_bytes=1 << 20)
            plan = parsing.plan_chunks(plain, fmt, FIELDS, chunk_rows=3)
        except parsing.ImportFileError as exc:
            assert exc.message
            return
        validator = parsing.RowValidator(FIELDS, "id", plan.columns)
        for chunk in plan.chunks:
            rows = list(
                parsing.iter_chunk_rows(
                    plain, fmt, chunk.start_offset, chunk.end_offset, chunk.first_line
                )
            )
            for line, raw in rows:
                result = validator.row(fmt, line, raw)
                assert isinstance(result, (tuple, list))
            if fmt == "csv":
                # The vectorized validator the workers use gives the same outcome.
                columnar_matches_row_validator(FIELDS, "id", plan.columns, rows)
    finally:
        for leftover in (path, path + ".plain"):
            if os.path.exists(leftover):
                os.remove(leftover)


@FUZZ
@given(st.binary(max_size=400))
def test_csv_parser_on_arbitrary_bytes(data):
    _parse_file(data, "csv")


@FUZZ
@given(
    st.lists(
        st.lists(st.sampled_from(CELLS), min_size=0, max_size=9).map(
            lambda cells: b",".join(cells)
        ),
        max_size=8,
    ),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.booleans(),
    st.booleans(),
)
def test_csv_parser_on_near_valid_files(rows, newline, with_header, gzipped):
    data = (HEADER if with_header else b"") + newline.join(rows)
    if gzipped:
        data = gzip.compress(data)
    _parse_file(data, "csv")


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(["id", "n", "x", "ok", "day", "at", "kind", "other"]),
                st.one_of(
                    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)
                ),
                max_size=7,
            ).map(lambda d: __import__("json").dumps(d)),
            st.text(max_size=40),
        ),
        max_size=6,
    )
)
def test_jsonl_parser_on_arbitrary_lines(lines):
    _parse_file("\n".join(lines).encode(), "jsonl")
