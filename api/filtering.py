"""AIP-160 filtering for list methods.

``parse_filter`` turns the ``filter`` request field into typed
:class:`~domains.shared.query.Condition` objects for repositories. Only a conjunction of
comparisons is supported (``a = 1 AND b != "x"``, or the implicit AND ``a = 1 b = 2``);
``OR``, ``NOT``/``-``, parentheses and the has operator ``:`` are rejected with a message
that says what to do instead. ``require_indexed`` then refuses the filters a list cannot
serve from an index.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Literal, cast, get_args

from domains.shared.errors import InvalidArgument
from domains.shared.query import Condition, Operator

__all__ = [
    "MAX_FILTER_LENGTH",
    "FieldSpec",
    "FieldType",
    "parse_filter",
    "require_indexed",
]

FieldType = Literal["string", "bool", "int", "number", "date", "timestamp", "enum"]

MAX_FILTER_LENGTH = 2000
"""Longest ``filter`` text accepted, in characters."""

_FILTER_REASON = "INVALID_FILTER"
_AND_HINT = "combine conditions with AND"
_NOT_HINT = "use != to exclude a value"
_TIMESTAMP_EXAMPLE = "2026-01-31T12:00:00Z"
_OPERATORS: tuple[Operator, ...] = get_args(Operator)
_EQUALITY_ONLY: frozenset[FieldType] = frozenset({"string", "bool", "enum"})
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
_INT = re.compile(r"[+-]?\d+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
# Characters that end a bare word. ":" also ends one, except in words that start with a
# digit or sign, so that unquoted timestamps (2026-01-31T12:00:00Z) still lex as one word.
_WORD_STOP = frozenset(" \t\r\n\f\v\"'()=!<>")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """How one filterable field is typed and compared.

    Attributes:
        type: Value type. ``string``, ``bool`` and ``enum`` fields allow only ``=`` and
            ``!=``; ``int``, ``number``, ``date`` and ``timestamp`` fields allow every
            comparison operator.
        enum_values: Allowed names for an ``enum`` field, in the order they are listed in
            error messages.
    """

    type: FieldType
    enum_values: tuple[str, ...] = ()


_TokenKind = Literal["word", "string", "op", "lparen", "rparen", "colon"]


@dataclasses.dataclass(frozen=True)
class _Token:
    """One lexical token of a filter.

    Attributes:
        kind: Token kind.
        text: Bare word, operator or punctuation exactly as written; for ``string``
            tokens the unescaped content without quotes.
        pos: 1-based position of the token's first character.
        end: 1-based position just after the token's last character.
    """

    kind: _TokenKind
    text: str
    pos: int
    end: int


class _FilterParser:
    """Recursive-descent parser for the supported AIP-160 subset."""

    def __init__(self, text: str, fields: Mapping[str, FieldSpec]) -> None:
        """Prepares to parse ``text`` against ``fields``.

        Args:
            text: The raw filter text.
            fields: Filterable fields by dotted name.
        """
        self._text = text
        self._fields = fields
        self._tokens: list[_Token] = []
        self._index = 0

    # ---- errors ------------------------------------------------------------------------

    def _error(self, message: str) -> InvalidArgument:
        """Builds the error raised for every filter problem.

        Args:
            message: Problem description, without the ``filter:`` prefix.

        Returns:
            The error to raise.
        """
        return InvalidArgument(
            f"filter: {message}", reason=_FILTER_REASON, metadata={"filter": self._text}
        )

    def _unsupported(self, what: str, pos: int, hint: str) -> InvalidArgument:
        """Builds the error for a syntax feature outside the supported subset.

        Args:
            what: The feature, e.g. ``OR``.
            pos: 1-based position where it appears.
            hint: What to do instead.

        Returns:
            The error to raise.
        """
        return self._error(f"{what} is not supported (at position {pos}); {hint}")

    # ---- lexing ------------------------------------------------------------------------

    def _lex(self) -> None:
        """Splits the text into tokens.

        Raises:
            InvalidArgument: On an unterminated string or an unexpected character.
        """
        text = self._text
        i = 0
        while i < len(text):
            char = text[i]
            if char.isspace():
                i += 1
            elif char in "\"'":
                i = self._lex_string(i)
            elif char in "<>!=":
                op = text[i : i + 2] if text[i : i + 2] in ("<=", ">=", "!=") else char
                if op == "!":
                    if text[i + 1 : i + 2] == "~":
                        raise self._unsupported('"!~"', i + 1, "compare with = or != instead")
                    raise self._error(f'unexpected character "!" at position {i + 1}')
                self._push("op", op, i, i + len(op))
                i += len(op)
            elif char == "(":
                self._push("lparen", char, i, i + 1)
                i += 1
            elif char == ")":
                self._push("rparen", char, i, i + 1)
                i += 1
            elif char == ":":
                self._push("colon", char, i, i + 1)
                i += 1
            else:
                allow_colon = char.isdigit() or char in "+-"
                start = i
                while i < len(text) and text[i] not in _WORD_STOP:
                    if text[i] == ":" and not allow_colon:
                        break
                    i += 1
                self._push("word", text[start:i], start, i)

    def _lex_string(self, start: int) -> int:
        """Lexes one quoted string starting at ``start``.

        Args:
            start: 0-based index of the opening quote.

        Returns:
            0-based index just after the closing quote.

        Raises:
            InvalidArgument: If the string is not terminated.
        """
        text = self._text
        quote = text[start]
        chars: list[str] = []
        i = start + 1
        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text):
                escaped = text[i + 1]
                chars.append(_ESCAPES.get(escaped, escaped))
                i += 2
            elif char == quote:
                self._push("string", "".join(chars), start, i + 1)
                return i + 1
            else:
                chars.append(char)
                i += 1
        raise self._error(
            f"unterminated string starting at position {start + 1}; close it with {quote}"
        )

    def _push(self, kind: _TokenKind, text: str, start: int, end: int) -> None:
        """Appends a token.

        Args:
            kind: Token kind.
            text: Token text.
            start: 0-based start index.
            end: 0-based end index (exclusive).
        """
        self._tokens.append(_Token(kind, text, start + 1, end + 1))

    # ---- parsing -----------------------------------------------------------------------

    def _peek(self) -> _Token | None:
        """Returns the next token without consuming it, or None at the end."""
        return self._tokens[self._index] if self._index < len(self._tokens) else None

    def _next(self) -> _Token | None:
        """Consumes and returns the next token, or None at the end."""
        token = self._peek()
        if token is not None:
            self._index += 1
        return token

    def _end_pos(self) -> int:
        """Returns the 1-based position just after the end of the text."""
        return len(self._text) + 1

    def parse(self) -> list[Condition]:
        """Parses the whole filter.

        Returns:
            The conditions, in the order written; all of them must hold.

        Raises:
            InvalidArgument: If the filter is malformed or uses unsupported syntax.
        """
        self._lex()
        if not self._tokens:
            return []
        conditions = [self._comparison()]
        while (token := self._peek()) is not None:
            if token.kind == "word" and token.text == "AND":
                self._next()
                if self._peek() is None:
                    raise self._error(
                        f"expected a comparison after AND at position {self._end_pos()}"
                    )
            # Otherwise whitespace between comparisons is an implicit AND (AIP-160).
            conditions.append(self._comparison())
        return conditions

    def _check_supported(self, token: _Token, *, field_position: bool) -> None:
        """Rejects tokens that start syntax outside the supported subset.

        Args:
            token: The token found where a field name, operator or value was expected.
            field_position: Whether a field name was expected (where ``-`` means NOT;
                elsewhere it may start a negative number).

        Raises:
            InvalidArgument: If the token is OR, NOT, ``-``, a parenthesis or ``:``.
        """
        if token.kind == "word" and token.text == "OR":
            raise self._unsupported("OR", token.pos, _AND_HINT)
        if token.kind == "word" and token.text == "NOT":
            raise self._unsupported("NOT", token.pos, _NOT_HINT)
        if field_position and token.kind == "word" and token.text.startswith("-"):
            raise self._unsupported('negation "-"', token.pos, _NOT_HINT)
        if token.kind in ("lparen", "rparen"):
            raise self._unsupported("grouping with parentheses", token.pos, _AND_HINT)
        if token.kind == "colon":
            raise self._unsupported('the has operator ":"', token.pos, "use = to compare")

    def _comparison(self) -> Condition:
        """Parses ``field op value``.

        Returns:
            The typed condition.

        Raises:
            InvalidArgument: If the comparison is malformed or mistyped.
        """
        token = self._next()
        if token is None:  # pragma: no cover - callers check for the end first
            raise self._error(f"expected a field name at position {self._end_pos()}")
        self._check_supported(token, field_position=True)
        if token.kind != "word" or token.text == "AND":
            shown = token.text if token.kind != "string" else f'"{token.text}"'
            raise self._error(f"expected a field name at position {token.pos} (got {shown})")
        name = token.text
        spec = self._fields.get(name)
        if spec is None:
            raise self._unknown_field(name, token.pos)

        op_token = self._next()
        if op_token is None or op_token.kind != "op":
            if op_token is not None:
                self._check_supported(op_token, field_position=False)
            pos = op_token.pos if op_token is not None else self._end_pos()
            raise self._error(
                f'expected an operator (=, !=, <, <=, >, >=) after "{name}" at position {pos}'
            )
        op = cast(Operator, op_token.text)
        if op not in _OPERATORS:  # pragma: no cover - the lexer only emits these
            raise self._error(f'unknown operator "{op}" at position {op_token.pos}')
        if spec.type in _EQUALITY_ONLY and op not in ("=", "!="):
            raise self._error(
                f'operator "{op}" is not supported for {name} ({spec.type}); use = or !='
            )

        value_token = self._peek()
        if value_token is not None:
            self._check_supported(value_token, field_position=False)
        if (
            value_token is None
            or value_token.kind not in ("word", "string")
            or (value_token.kind == "word" and value_token.text == "AND")
        ):
            raise self._error(f'expected a value after "{op}" at position {op_token.end}')
        self._next()
        return Condition(field=name, op=op, value=self._convert(name, spec, value_token))

    def _unknown_field(self, name: str, pos: int) -> InvalidArgument:
        """Builds the error for a field that is not filterable.

        Args:
            name: The field name as written.
            pos: 1-based position of the name.

        Returns:
            The error to raise.
        """
        known = ", ".join(sorted(self._fields)) or "(none)"
        if name in ("or", "Or"):
            raise self._unsupported("OR", pos, _AND_HINT)
        if name in ("not", "Not"):
            raise self._unsupported("NOT", pos, _NOT_HINT)
        hint = "; write AND in upper case" if name.upper() == "AND" else ""
        return self._error(
            f'unknown field "{name}" at position {pos}; filterable fields are: {known}{hint}'
        )

    def _convert(self, name: str, spec: FieldSpec, token: _Token) -> object:
        """Converts a value token to the field's type.

        Args:
            name: Field name, for messages.
            spec: The field's spec.
            token: A ``word`` or ``string`` token.

        Returns:
            ``str``, ``bool``, ``int`` or timezone-aware ``datetime`` (UTC).

        Raises:
            InvalidArgument: If the value does not fit the field's type.
        """
        raw = token.text
        if spec.type == "string":
            return raw
        if spec.type == "bool":
            if raw in ("true", "false"):
                return raw == "true"
            raise self._error(f"{name} must be true or false (got {_show(token)})")
        if spec.type == "int":
            if _INT.fullmatch(raw):
                return int(raw)
            raise self._error(f"{name} must be an integer (got {_show(token)})")
        if spec.type == "number":
            try:
                number = float(raw)
            except ValueError:
                number = float("nan")
            if number == number and number not in (float("inf"), float("-inf")):
                return number
            raise self._error(f"{name} must be a number (got {_show(token)})")
        if spec.type == "date":
            try:
                if len(raw) != 10:
                    raise ValueError(raw)
                return dt.date.fromisoformat(raw)
            except ValueError:
                raise self._error(
                    f'{name} must be a date like "2026-01-31" (got {_show(token)})'
                ) from None
        if spec.type == "timestamp":
            return self._timestamp(name, raw)
        if raw in spec.enum_values:
            return raw
        allowed = ", ".join(spec.enum_values) or "(none)"
        raise self._error(f"{name} must be one of {allowed} (got {_show(token)})")

    def _timestamp(self, name: str, raw: str) -> dt.datetime:
        """Parses an RFC 3339 timestamp.

        Args:
            name: Field name, for messages.
            raw: The value text.

        Returns:
            The instant as a timezone-aware ``datetime`` in UTC.

        Raises:
            InvalidArgument: If ``raw`` is not an RFC 3339 timestamp with an offset.
        """
        if _RFC3339.fullmatch(raw):
            normalized = raw.upper().replace("Z", "+00:00")
            try:
                return dt.datetime.fromisoformat(normalized).astimezone(dt.UTC)
            except ValueError:
                pass
        raise self._error(
            f'invalid timestamp "{raw}" for {name}; use RFC 3339 like "{_TIMESTAMP_EXAMPLE}"'
        )


def _show(token: _Token) -> str:
    """Renders a value token for an error message (always double-quoted)."""
    return json.dumps(token.text, ensure_ascii=False)


def parse_filter(text: str | None, fields: Mapping[str, FieldSpec]) -> list[Condition]:
    """Parses an AIP-160 filter into typed conditions.

    Supported: comparisons ``field op value`` (``op`` one of ``= != < <= > >=``) joined by
    ``AND`` or by whitespace (implicit AND). Values are quoted strings (``"..."`` or
    ``'...'`` with backslash escapes) or bare words (``true``, ``42``, ``RUNNING``);
    timestamps are RFC 3339 strings. Keywords are case-sensitive.

    Args:
        text: The ``filter`` request field; None or blank means no filtering.
        fields: Filterable fields by dotted API name, e.g. ``metadata.state``.

    Returns:
        The conditions in the order written (empty if there is no filter). Values are
        ``str`` for string and enum fields, ``bool``, ``int``, or a UTC ``datetime``.

    Raises:
        InvalidArgument: ``reason="INVALID_FILTER"`` and ``metadata={"filter": text}``, with
            a message naming the problem and where it is, if the filter is too long,
            malformed, uses unsupported syntax (OR, NOT, ``-``, parentheses, ``:``), names
            an unknown field or has a value that does not fit the field.
    """
    if text is None or not text.strip():
        return []
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidArgument(
            f"filter: too long ({len(text)} characters); the maximum is {MAX_FILTER_LENGTH}",
            reason=_FILTER_REASON,
            metadata={"filter": text},
        )
    return _FilterParser(text, fields).parse()


def require_indexed(
    conditions: list[Condition],
    text: str | None,
    *,
    equality: frozenset[str],
    ranges: frozenset[str] = frozenset({"create_time"}),
    handled: frozenset[str] = frozenset(),
    combined: frozenset[frozenset[str]] = frozenset(),
) -> list[Condition]:
    """Refuses the filters a list cannot serve from an index (AIP-160 lets a list do so).

    A list ordered by ``(create_time, id)`` has one index per equality field,
    ``(<parent>, <field>, create_time, id)``, plus ``(<parent>, create_time, id)``: a filter is
    served when it compares at most one equality field with ``=`` (a bool's ``!=`` becomes
    ``=`` of the other value) and the range fields with anything but ``!=``. Anything else
    would walk the whole index or sort every match, so it is INVALID_ARGUMENT rather than slow.

    Args:
        conditions: The parsed filter.
        text: The filter text (error metadata).
        equality: Fields served by an index with ``=``.
        ranges: Fields that are the order key, served with every comparison but ``!=``.
        handled: Fields the caller serves otherwise (e.g. the domain picks the schemas).
        combined: Sets of equality fields that one index serves together.

    Returns:
        The conditions, with ``bool != v`` rewritten as ``bool = not v``.

    Raises:
        InvalidArgument: ``reason="INVALID_FILTER"`` naming the field and what is served.
    """

    def refuse(message: str) -> InvalidArgument:
        return InvalidArgument(
            f"filter: {message}", reason=_FILTER_REASON, metadata={"filter": text or ""}
        )

    served: list[Condition] = []
    equality_fields: set[str] = set()
    for cond in conditions:
        if cond.op == "!=" and isinstance(cond.value, bool):
            cond = Condition(cond.field, "=", not cond.value)
        if cond.field in handled:
            served.append(cond)
        elif cond.field in equality:
            if cond.op != "=":
                raise refuse(
                    f'operator "{cond.op}" is not supported for {cond.field} on this list'
                    f" (no index serves it); compare {cond.field} with ="
                )
            equality_fields.add(cond.field)
            served.append(cond)
        elif cond.field in ranges:
            if cond.op == "!=":
                raise refuse(
                    f'operator "!=" is not supported for {cond.field} on this list'
                    " (no index serves it); use <, <=, > or >="
                )
            served.append(cond)
        else:
            allowed = ", ".join(sorted(equality | ranges | handled))
            raise refuse(
                f"{cond.field} cannot be filtered on this list (no index serves it at scale);"
                f" filter on {allowed}"
            )
    if len(equality_fields) > 1 and frozenset(equality_fields) not in combined:
        names = " and ".join(sorted(equality_fields))
        raise refuse(
            f"{names} cannot be combined in one filter on this list (no index serves both);"
            f" use one of them, optionally with {' and '.join(sorted(ranges))}"
        )
    return served
