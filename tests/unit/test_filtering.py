"""Unit tests for api.filtering: AIP-160 filter parsing."""

from __future__ import annotations

import datetime as dt

import pytest

from api.filtering import MAX_FILTER_LENGTH, FieldSpec, parse_filter
from domains.shared.errors import InvalidArgument
from domains.shared.query import Condition

FIELDS = {
    "done": FieldSpec("bool"),
    "metadata.domain": FieldSpec("string"),
    "metadata.state": FieldSpec("enum", ("PENDING", "RUNNING", "SUCCEEDED", "FAILED")),
    "metadata.attempt": FieldSpec("int"),
    "create_time": FieldSpec("timestamp"),
}


def filter_error(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_filter(text, FIELDS)
    error = info.value
    assert error.reason == "INVALID_FILTER"
    assert error.metadata == {"filter": text}
    assert error.message.startswith("filter: ")
    return error


# ---- parse_filter: success --------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   ", "\t\n"])
def test_empty_filter_means_no_conditions(text: str | None) -> None:
    assert parse_filter(text, FIELDS) == []


def test_parses_bool_true() -> None:
    assert parse_filter("done = true", FIELDS) == [Condition("done", "=", True)]


def test_parses_bool_false_with_not_equal() -> None:
    assert parse_filter("done != false", FIELDS) == [Condition("done", "!=", False)]


def test_parses_double_quoted_string() -> None:
    assert parse_filter('metadata.domain = "imports"', FIELDS) == [
        Condition("metadata.domain", "=", "imports")
    ]


def test_parses_single_quoted_string() -> None:
    assert parse_filter("metadata.domain != 'reports'", FIELDS) == [
        Condition("metadata.domain", "!=", "reports")
    ]


def test_parses_bare_word_as_string() -> None:
    assert parse_filter("metadata.domain = webhooks", FIELDS) == [
        Condition("metadata.domain", "=", "webhooks")
    ]


def test_string_backslash_escapes_are_unescaped() -> None:
    conditions = parse_filter(r'metadata.domain = "a\"b\\c\'d\ne"', FIELDS)
    assert conditions == [Condition("metadata.domain", "=", "a\"b\\c'd\ne")]


def test_quoted_string_keeps_spaces_and_keywords() -> None:
    conditions = parse_filter('metadata.domain = "x AND y OR (z)"', FIELDS)
    assert conditions == [Condition("metadata.domain", "=", "x AND y OR (z)")]


def test_parses_empty_quoted_string() -> None:
    assert parse_filter('metadata.domain = ""', FIELDS) == [Condition("metadata.domain", "=", "")]


def test_parses_int_with_every_operator() -> None:
    for op in ("=", "!=", "<", "<=", ">", ">="):
        assert parse_filter(f"metadata.attempt {op} 3", FIELDS) == [
            Condition("metadata.attempt", op, 3)
        ]


def test_parses_negative_int() -> None:
    assert parse_filter("metadata.attempt > -1", FIELDS) == [Condition("metadata.attempt", ">", -1)]


def test_int_value_is_an_int() -> None:
    [condition] = parse_filter("metadata.attempt = 42", FIELDS)
    assert type(condition.value) is int


def test_parses_enum_value() -> None:
    assert parse_filter("metadata.state = RUNNING", FIELDS) == [
        Condition("metadata.state", "=", "RUNNING")
    ]


def test_parses_quoted_enum_value() -> None:
    assert parse_filter('metadata.state != "FAILED"', FIELDS) == [
        Condition("metadata.state", "!=", "FAILED")
    ]


def test_parses_quoted_utc_timestamp_to_aware_datetime() -> None:
    [condition] = parse_filter('create_time > "2026-01-01T00:00:00Z"', FIELDS)
    assert condition == Condition("create_time", ">", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert isinstance(condition.value, dt.datetime)
    assert condition.value.tzinfo is not None


def test_timestamp_with_offset_is_normalized_to_utc() -> None:
    [condition] = parse_filter('create_time <= "2026-01-31T12:00:00+02:00"', FIELDS)
    assert condition.value == dt.datetime(2026, 1, 31, 10, 0, tzinfo=dt.UTC)


def test_timestamp_with_fractional_seconds() -> None:
    [condition] = parse_filter("create_time >= '2026-01-31T12:00:00.250Z'", FIELDS)
    assert condition.value == dt.datetime(2026, 1, 31, 12, 0, 0, 250000, tzinfo=dt.UTC)


def test_parses_unquoted_timestamp() -> None:
    [condition] = parse_filter("create_time < 2026-01-31T12:00:00Z", FIELDS)
    assert condition.value == dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC)


def test_whitespace_around_operators_is_optional() -> None:
    assert parse_filter("metadata.attempt>=2", FIELDS) == [Condition("metadata.attempt", ">=", 2)]


def test_extra_whitespace_is_ignored() -> None:
    assert parse_filter("  done   =\ttrue  ", FIELDS) == [Condition("done", "=", True)]


def test_conditions_joined_by_and_keep_order() -> None:
    conditions = parse_filter(
        'done = false AND metadata.state = RUNNING AND create_time > "2026-01-01T00:00:00Z"',
        FIELDS,
    )
    assert [c.field for c in conditions] == ["done", "metadata.state", "create_time"]


def test_space_between_comparisons_is_implicit_and() -> None:
    assert parse_filter("done = true metadata.attempt > 1", FIELDS) == [
        Condition("done", "=", True),
        Condition("metadata.attempt", ">", 1),
    ]


def test_same_field_twice_makes_a_range() -> None:
    assert parse_filter("metadata.attempt > 1 AND metadata.attempt < 5", FIELDS) == [
        Condition("metadata.attempt", ">", 1),
        Condition("metadata.attempt", "<", 5),
    ]


def test_filter_at_max_length_is_accepted() -> None:
    text = "metadata.domain = " + "x" * (MAX_FILTER_LENGTH - len("metadata.domain = "))
    assert len(text) == MAX_FILTER_LENGTH
    assert parse_filter(text, FIELDS)[0].value == "x" * (MAX_FILTER_LENGTH - 18)


# ---- parse_filter: errors -----------------------------------------------------------------


def test_unknown_field_lists_filterable_fields() -> None:
    error = filter_error("metadata.status = RUNNING")
    assert 'unknown field "metadata.status"' in error.message
    assert (
        "filterable fields are: create_time, done, metadata.attempt, metadata.domain, "
        "metadata.state" in error.message
    )


def test_lowercase_and_is_reported_with_a_hint() -> None:
    error = filter_error("done = true and metadata.attempt = 1")
    assert 'unknown field "and"' in error.message
    assert "upper case" in error.message


def test_invalid_enum_value_lists_allowed_values() -> None:
    error = filter_error("metadata.state = RUN")
    assert "metadata.state must be one of PENDING, RUNNING, SUCCEEDED, FAILED" in error.message
    assert '(got "RUN")' in error.message


def test_enum_values_are_case_sensitive() -> None:
    assert "must be one of" in filter_error("metadata.state = running").message


def test_invalid_timestamp_shows_rfc3339_example() -> None:
    error = filter_error('create_time > "yesterday"')
    assert 'invalid timestamp "yesterday" for create_time' in error.message
    assert 'use RFC 3339 like "2026-01-31T12:00:00Z"' in error.message


def test_timestamp_without_offset_is_rejected() -> None:
    assert "invalid timestamp" in filter_error('create_time > "2026-01-31T12:00:00"').message


def test_date_only_timestamp_is_rejected() -> None:
    assert "invalid timestamp" in filter_error('create_time > "2026-01-31"').message


def test_impossible_date_is_rejected() -> None:
    assert "invalid timestamp" in filter_error('create_time > "2026-02-30T00:00:00Z"').message


def test_missing_value_reports_position() -> None:
    error = filter_error("done =")
    assert 'expected a value after "=" at position 7' in error.message


def test_missing_value_before_and_reports_position() -> None:
    error = filter_error("done = AND metadata.attempt = 1")
    assert 'expected a value after "="' in error.message
    assert "position 7" in error.message


def test_missing_operator_is_reported() -> None:
    error = filter_error("done true")
    assert 'expected an operator (=, !=, <, <=, >, >=) after "done"' in error.message
    assert "position 6" in error.message


def test_field_alone_is_reported() -> None:
    assert "expected an operator" in filter_error("done").message


def test_dangling_and_is_reported() -> None:
    error = filter_error("done = true AND")
    assert "expected a comparison after AND" in error.message


def test_leading_and_is_reported() -> None:
    assert "expected a field name at position 1" in filter_error("AND done = true").message


def test_quoted_field_name_is_reported() -> None:
    assert "expected a field name" in filter_error('"done" = true').message


def test_or_is_not_supported() -> None:
    error = filter_error("done = true OR done = false")
    assert "OR is not supported" in error.message
    assert "combine conditions with AND" in error.message
    assert "position 13" in error.message


def test_lowercase_or_is_not_supported() -> None:
    assert "OR is not supported" in filter_error("done = true or done = false").message


def test_not_is_not_supported() -> None:
    error = filter_error("NOT done = true")
    assert "NOT is not supported" in error.message
    assert "!=" in error.message


def test_minus_negation_is_not_supported() -> None:
    error = filter_error("-done = true")
    assert 'negation "-" is not supported' in error.message


def test_parentheses_are_not_supported() -> None:
    error = filter_error("(done = true)")
    assert "grouping with parentheses is not supported" in error.message
    assert "combine conditions with AND" in error.message


def test_parenthesized_value_is_not_supported() -> None:
    assert "parentheses" in filter_error("metadata.attempt = (1)").message


def test_has_operator_is_not_supported() -> None:
    error = filter_error("done:true")
    assert 'has operator ":" is not supported' in error.message
    assert "position 5" in error.message


def test_has_operator_with_spaces_is_not_supported() -> None:
    assert "has operator" in filter_error("metadata.domain : imports").message


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
@pytest.mark.parametrize(
    ("field", "value"),
    [("done", "true"), ("metadata.state", "RUNNING"), ("metadata.domain", '"x"')],
)
def test_ordering_operators_are_rejected_on_bool_enum_and_string(
    op: str, field: str, value: str
) -> None:
    error = filter_error(f"{field} {op} {value}")
    assert f'operator "{op}" is not supported for {field}' in error.message
    assert "use = or !=" in error.message


def test_non_boolean_value_is_rejected() -> None:
    error = filter_error("done = yes")
    assert 'done must be true or false (got "yes")' in error.message


def test_boolean_keywords_are_case_sensitive() -> None:
    assert "must be true or false" in filter_error("done = TRUE").message


def test_non_integer_value_is_rejected() -> None:
    error = filter_error("metadata.attempt = 1.5")
    assert 'metadata.attempt must be an integer (got "1.5")' in error.message


def test_unterminated_string_is_reported() -> None:
    error = filter_error('metadata.domain = "imports')
    assert "unterminated string starting at position 19" in error.message


def test_lone_exclamation_mark_is_reported() -> None:
    assert 'unexpected character "!" at position 6' in filter_error("done ! true").message


def test_regex_operator_is_not_supported() -> None:
    assert '"!~" is not supported' in filter_error('metadata.domain !~ "x"').message


def test_too_long_filter_is_rejected() -> None:
    text = "metadata.domain = " + "x" * MAX_FILTER_LENGTH
    error = filter_error(text)
    assert "too long" in error.message
    assert str(MAX_FILTER_LENGTH) in error.message
