"""Query conditions: the parsed, typed form of an AIP-160 filter handed to repositories."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

Operator = Literal["=", "!=", "<", "<=", ">", ">="]
Value = str | int | float | bool | None

Keyset = tuple[dt.datetime, uuid.UUID]
"""Position in a list ordered by ``(create_time, id)``: the last row of the previous page."""


@dataclasses.dataclass(frozen=True)
class Condition:
    """One comparison ``field op value``; a filter is a conjunction of conditions.

    Attributes:
        field: Dotted field path as the API names it, e.g. ``metadata.state``.
        op: Comparison operator.
        value: Typed value (bool, int, float, str, datetime as ISO string is converted by the
            parser into the field's type).
    """

    field: str
    op: Operator
    value: object


COMPARE: dict[str, Any] = {
    "=": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
}
"""Operator -> function building the SQLAlchemy comparison ``column op value``."""


def after_keyset(
    table: sa.Table, after: Keyset | None, *, descending: bool = False
) -> sa.ColumnElement[bool]:
    """The keyset condition of a list ordered by ``(create_time, id)``.

    A row comparison, so the list indexes ``(<parent>, [<column>,] create_time, id)`` serve it
    as an index condition rather than a filter.

    Args:
        table: A table with ``create_time`` and ``id`` columns.
        after: The previous page's last ``(create_time, id)``, or None for the first page.
        descending: The list runs newest first (rows before ``after``).

    Returns:
        The condition (``true`` on the first page).
    """
    if after is None:
        return sa.true()
    row = sa.tuple_(table.c.create_time, table.c.id)
    position = sa.tuple_(
        sa.literal(after[0], table.c.create_time.type), sa.literal(after[1], table.c.id.type)
    )
    return row < position if descending else row > position


def any_of(column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``column = ANY($1)``: one array parameter, whatever the number of values.

    ``IN ($1, $2, ...)`` renders a different statement for every list length, so each new
    length is parsed and prepared again; one array keeps one prepared statement.

    Args:
        column: The column compared.
        values: The values it may take.

    Returns:
        The condition.
    """
    return column == sa.any_(sa.literal(list(values), pg.ARRAY(column.type)))
