"""Unit: a statement's argument plan (domains.shared.driver) gives, for any parameter values,
the arguments ``construct_params`` and the bind processors give.

The plan is made once per statement object and set of parameter names; the statement's own
values are processed then. Red if a position takes another parameter, a literal of another
(equal) statement, or an unprocessed value.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from domains.operations.repository import SqlOperationRepository
from domains.platform import tables as platform_tables
from domains.platform.pings.repository import INSTANT_PROGRESS, instant_ping
from domains.shared.driver import DriverConnection, _args, _plan, compiled_for

DIALECT = pg_asyncpg.dialect()
metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("doc", pg.JSONB, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("n", sa.Integer),
)


def _both(statement: Any, params: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    keys = tuple(sorted(params))
    compiled, extracted, collected = compiled_for(statement, DIALECT, keys)
    plan = _plan(compiled, extracted, collected, keys)
    assert plan is not None
    expected, _ = DriverConnection._construct(compiled, extracted, collected, params)
    return _args(plan, params), expected


def _update(label: str) -> Any:
    # Literals of their own (a JSON document, a string, a number) next to bind parameters.
    return (
        sa.update(things)
        .where(things.c.id == sa.bindparam("k", type_=sa.Uuid))
        .values(
            name=label,
            doc={"label": label, "list": [1, label]},
            n=things.c.n + len(label),
            at=sa.bindparam("when", type_=things.c.at.type),
        )
        .returning(things.c.id)
    )


values = st.fixed_dictionaries(
    {
        "k": st.uuids(),
        "when": st.datetimes(timezones=st.just(dt.UTC)),
    }
)


@settings(max_examples=50, deadline=None)
@given(params=values, label=st.text(max_size=8))
def test_a_plan_gives_what_construct_params_gives(params: dict[str, Any], label: str) -> None:
    planned, expected = _both(_update(label), params)
    assert planned == expected


def test_equal_statements_keep_their_own_literals() -> None:
    # Same cache key, so one compiled form: each object's plan must carry its own literals.
    params = {"k": uuid.uuid4(), "when": dt.datetime.now(dt.UTC)}
    first, second = _update("one"), _update("two")
    args_first, _ = _both(first, params)
    args_second, expected_second = _both(second, params)
    assert args_second == expected_second
    assert args_first != args_second
    assert '"two"' in "".join(str(a) for a in args_second)


def test_a_parameter_named_like_a_column_value_overrides_it() -> None:
    # insert(table) with a row of parameters: every value is the caller's.
    row = {"id": uuid.uuid4(), "name": "x", "doc": {"a": 1}, "at": None, "n": 3}
    planned, expected = _both(sa.insert(things), row)
    assert planned == expected
    assert any(isinstance(a, str) and '"a"' in a for a in planned)  # the JSON, processed


def test_the_instant_ping_statement() -> None:
    # The worker's hot statement, with the values run_instant passes.
    repo = SqlOperationRepository(None, platform_tables.operations)  # type: ignore[arg-type]
    query = repo._instant_statement(instant_ping())
    params = {
        "op_id": uuid.uuid4(),
        "now": dt.datetime.now(dt.UTC),
        "cap": 5,
        "i_progress": INSTANT_PROGRESS.to_dict(),
        "p_worker": "w@h",
        "p_effect_id": uuid.uuid4(),
    }
    planned, expected = _both(query, params)
    assert planned == expected


def test_expanding_statements_have_no_plan() -> None:
    statement = sa.select(things.c.id).where(
        things.c.name.in_(sa.bindparam("names", expanding=True))
    )
    compiled, extracted, collected = compiled_for(statement, DIALECT, ("names",))
    assert _plan(compiled, extracted, collected, ("names",)) is None


def test_a_missing_parameter_is_the_same_error() -> None:
    statement = sa.select(things.c.id).where(things.c.id == sa.bindparam("k", type_=sa.Uuid))
    compiled, extracted, collected = compiled_for(statement, DIALECT, ())
    with pytest.raises(sa.exc.InvalidRequestError, match="required for bind parameter"):
        _plan(compiled, extracted, collected, ())
