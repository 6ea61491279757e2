"""Bulk writes of many rows in one statement whose text does not depend on how many.

A multi-row ``VALUES`` list is compiled again for every new row count (SQLAlchemy cannot
cache it: a 100-row insert of 16 columns compiled 1,600 bind parameters, about 35 ms of CPU)
and PostgreSQL prepares it again; ``executemany`` sends and binds one statement per row.
Here each column travels as one array parameter and ``unnest`` turns the arrays back into
rows: one statement, built once per column list, prepared once, one round trip for any number
of rows. JSON columns travel as text arrays (an array of JSON documents is not a PostgreSQL
array of arrays) and are cast back.

    statement = insert_statement(table, columns)
    await session.execute(statement, row_params(table, columns, rows))
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.sql.selectable import TableValuedAlias

ORDINAL = "ordinal"
"""Column of :func:`unnest_rows` numbering the rows from 1, in the order given."""


def _is_json(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.JSON)


def unnest_rows(table: sa.Table, columns: Sequence[str], *, name: str = "v") -> TableValuedAlias:
    """The derived table ``name(columns..., ordinal)`` of one array parameter per column.

    Args:
        table: The table whose column types the arrays take.
        columns: The columns to carry.
        name: The derived table's name; its parameters are ``<name>_<column>`` (fill them
            with :func:`row_params`).

    Returns:
        The derived table; its ``ordinal`` column keeps the rows' order.
    """
    arrays = [
        sa.bindparam(
            f"{name}_{column}",
            type_=pg.ARRAY(sa.Text if _is_json(table.c[column]) else table.c[column].type),
        )
        for column in columns
    ]
    return (
        sa.func.unnest(*arrays)
        .table_valued(*columns, with_ordinality=ORDINAL)
        .render_derived(name=name)
    )


def row_params(
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    name: str = "v",
) -> dict[str, list[Any]]:
    """The parameters of :func:`unnest_rows` for ``rows``.

    Args:
        table: The table.
        columns: The columns the derived table carries.
        rows: One mapping per row, holding every column of ``columns``.
        name: The derived table's name.

    Returns:
        One list per column (JSON values as text, ``None`` as JSON ``null`` unless the type
        says ``none_as_null``, as SQLAlchemy's own JSON binding does).
    """
    params: dict[str, list[Any]] = {}
    for column in columns:
        values = [row[column] for row in rows]
        kind = table.c[column].type
        if isinstance(kind, sa.JSON):
            # As SQLAlchemy's JSON type binds: None is JSON null unless none_as_null.
            values = [None if v is None and kind.none_as_null else json.dumps(v) for v in values]
        params[f"{name}_{column}"] = values
    return params


def column_value(table: sa.Table, source: TableValuedAlias, column: str) -> sa.ColumnElement[Any]:
    """A column of :func:`unnest_rows`'s derived table, as the table's column type.

    Args:
        table: The table the rows are for.
        source: The derived table.
        column: The column.

    Returns:
        The derived column (JSON columns cast back from text).
    """
    if _is_json(table.c[column]):
        return sa.cast(source.c[column], table.c[column].type)
    return source.c[column]


@functools.cache
def insert_statement(table: sa.Table, columns: tuple[str, ...], *, name: str = "v") -> pg.Insert:
    """``INSERT INTO table (columns) SELECT ... FROM unnest(...)``, rows inserted in order.

    Built once per table and column list (building the expression costs more than running
    it); add ``on_conflict_*`` or ``returning`` once too, where the caller caches it.

    Args:
        table: The table.
        columns: The columns to write.
        name: The derived table's name (distinct per insert when several share a statement).

    Returns:
        The insert (PostgreSQL's); parameters from :func:`row_params` (with the same ``name``).
    """
    source = unnest_rows(table, columns, name=name)
    select = sa.select(*(column_value(table, source, c) for c in columns)).order_by(
        source.c[ORDINAL]
    )
    return pg.insert(table).from_select(list(columns), select)


@functools.cache
def update_statement(table: sa.Table, key: str, columns: tuple[str, ...]) -> sa.Update:
    """``UPDATE table SET columns = v.columns FROM unnest(...) v WHERE table.key = v.key``.

    The caller should hold the rows' locks already (taken in a fixed order): the join may
    visit them in any order.

    Args:
        table: The table.
        key: The column matching a row to its update (unique per row).
        columns: The columns to set.

    Returns:
        The update; parameters from :func:`row_params` over ``(key, *columns)``.
    """
    source = unnest_rows(table, (key, *columns))
    return (
        sa.update(table)
        .where(table.c[key] == source.c[key])
        .values({column: column_value(table, source, column) for column in columns})
    )


def insert_many(
    table: sa.Table, rows: Sequence[Mapping[str, Any]]
) -> tuple[pg.Insert, dict[str, list[Any]]]:
    """The insert of ``rows`` (every key of the first row) and its parameters.

    Args:
        table: The table.
        rows: One mapping per row, all with the same keys.

    Returns:
        ``(statement, params)`` for ``session.execute``.
    """
    columns = tuple(rows[0])
    return insert_statement(table, columns), row_params(table, columns, rows)
