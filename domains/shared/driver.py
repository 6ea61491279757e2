"""Hot-path statements on the driver: SQLAlchemy builds and compiles, asyncpg executes.

The worker's claim and finish and the API's fused submit INSERT are one statement each in
autocommit. Run through ``AsyncConnection.execute`` every one of them pays for a connection
object, ``execution_options``, a greenlet switch per call into the driver, the compiled-cache
lookup (a cache key built from the statement) and the result machinery: about a millisecond of
CPU for a statement PostgreSQL answers in a tenth of that. :class:`DriverConnection` keeps what
makes SQLAlchemy worth having (statements built from the table definitions, its compiler, its
type processors, its per-connection prepared statements, its error classes) and drops the rest:

- a statement is compiled once per statement object (the hot path's statements are built once
  and cached by their modules), else once per SQLAlchemy cache key;
- parameters go through the compiled statement's bind processors and result columns through
  the types' result processors, exactly as ``execute`` would; where each positional argument
  comes from is worked out once per statement object and set of parameter names
  (``construct_params`` asked once, see :func:`_plan`), not on every execution;
- the statement runs as an asyncpg prepared statement from the pool connection's own cache, in
  autocommit (no transaction is open on a connection checked out of the pool);
- driver errors become the same ``sqlalchemy.exc`` errors (``IntegrityError``, ``DBAPIError``
  with ``connection_invalidated``), so callers handle them as before.

A statement it cannot run this way (Python-side column defaults, a dialect other than asyncpg)
runs through an ordinary autocommit connection: each statement is its own transaction, so which
connection runs it makes no difference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

log = logging.getLogger(__name__)

_Processor = Callable[[Any], Any] | None


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """A statement compiled for the driver."""

    compiled: Any
    sql: str
    positions: tuple[str, ...]
    bind_processors: Mapping[str, Callable[[Any], Any]]
    keys: tuple[str, ...]
    result_types: tuple[Any, ...]
    expanding: bool
    # Result processors by the driver's column type codes (a numeric column's processor
    # depends on what the server sends).
    result_processors: dict[tuple[int, ...], tuple[_Processor, ...]] = dataclasses.field(
        default_factory=dict
    )

    def processors_for(self, dialect: Any, attributes: Sequence[Any]) -> tuple[_Processor, ...]:
        """The result processors for the columns the prepared statement returns."""
        codes = tuple(attribute.type.oid for attribute in attributes)
        found = self.result_processors.get(codes)
        if found is None:
            found = tuple(
                type_._cached_result_processor(dialect, code)
                for type_, code in zip(self.result_types, codes, strict=True)
            )
            self.result_processors[codes] = found
        return found


# SQLAlchemy's own compiled cache (statements built per call are found by cache key, as
# ``execute`` finds them), the driver form of each compiled statement, and, in front, the
# statements seen before by identity (the hot path's are built once and cached by their modules:
# no cache key to build per call; the object is kept, so its id stays its own). All bounded.
_COMPILED_CACHE: dict[Any, Any] = {}
_DRIVER_FORMS: dict[int, tuple[Any, _Compiled | None]] = {}
_LIMIT = 512

_Plan = tuple[tuple[str | None, _Processor, Any], ...]
"""Per position of a compiled statement: the caller's parameter it takes (and that parameter's
bind processor), or ``None`` and the statement's own value, already processed."""


@dataclasses.dataclass
class _Seen:
    """A statement object run before with a given set of parameter names."""

    statement: Any  # kept, so its id stays its own
    form: _Compiled
    extracted: Any
    collected: Any
    # Its argument plan (:func:`_plan`), made on its second execution: a statement built per
    # call (a read with its key as a literal) runs once and would not pay it back.
    plan: _Plan | None = None
    planned: bool = False


_BY_OBJECT: dict[tuple[int, tuple[str, ...]], _Seen] = {}


class _Given:
    """Stands for a caller's parameter while a plan is made (see :func:`_plan`)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class Unsupported(Exception):
    """The statement needs SQLAlchemy's full execution path."""


def _driver_form(compiled: Any, dialect: Any) -> _Compiled | None:
    if (
        not compiled.positional
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.schema_translate_map
        or compiled.for_executemany
    ):
        return None
    columns = compiled._result_columns
    return _Compiled(
        compiled=compiled,
        sql=compiled.string,
        positions=tuple(compiled.positiontup or ()),
        bind_processors=compiled._bind_processors,
        keys=tuple(entry.keyname for entry in columns),
        result_types=tuple(entry.type for entry in columns),
        expanding=bool(compiled.literal_execute_params or compiled.post_compile_params),
    )


def _bounded(cache: dict[Any, Any]) -> dict[Any, Any]:
    if len(cache) >= _LIMIT:
        cache.clear()
    return cache


def compiled_for(
    statement: Any, dialect: Any, column_keys: tuple[str, ...]
) -> tuple[_Compiled, Any, Any]:
    """The driver form of ``statement`` and the values it carries itself.

    Args:
        statement: A SQLAlchemy executable.
        dialect: The engine's dialect.
        column_keys: Names of the parameters it runs with (an INSERT or UPDATE without
            explicit values writes these columns).

    Returns:
        ``(compiled, extracted_parameters, collected_parameters)``: the last two are the values
        of ``statement``'s own literals, taken instead of those of the (equal) statement the
        cached form was compiled from.

    Raises:
        Unsupported: If the statement needs SQLAlchemy's execution path.
    """
    seen, _ = _seen(statement, dialect, column_keys)
    return seen.form, seen.extracted, seen.collected


def _seen(statement: Any, dialect: Any, column_keys: tuple[str, ...]) -> tuple[_Seen, bool]:
    """:func:`compiled_for`'s entry for ``statement``, and whether it was there before."""
    ident = (id(statement), column_keys)
    hit = _BY_OBJECT.get(ident)
    if hit is not None and hit.statement is statement:
        return hit, True
    outcome = statement._compile_w_cache(
        dialect, compiled_cache=_bounded(_COMPILED_CACHE), column_keys=list(column_keys)
    )
    compiled, extracted = outcome[0], outcome[1]
    collected = outcome[2] if len(outcome) == 4 else None  # SQLAlchemy 2.1 collects them
    known = _DRIVER_FORMS.get(id(compiled))
    if known is None or known[0] is not compiled:
        known = _bounded(_DRIVER_FORMS)[id(compiled)] = (compiled, _driver_form(compiled, dialect))
    form = known[1]
    if form is None:
        raise Unsupported("statement needs SQLAlchemy's execution path")
    seen = _bounded(_BY_OBJECT)[ident] = _Seen(statement, form, extracted, collected)
    return seen, False


def _plan(
    compiled: _Compiled, extracted: Any, collected: Any, column_keys: tuple[str, ...]
) -> _Plan | None:
    """Where each positional argument of ``compiled`` comes from, for one statement object.

    ``construct_params`` walks every bind parameter of the statement on every execution (about
    a tenth of a hot-path statement's CPU in the worker) to find, again, that the caller's
    values go where they went last time and the statement's own literals are the same values.
    For a given statement object (same literals, same extracted parameters) and set of
    parameter names that holds by construction, so it is asked once: ``construct_params`` with
    a marker for each caller's value tells which positions take which parameter; the others
    keep the statement's values, run through their bind processors once.

    Returns:
        The plan, or ``None`` when a value is computed per execution (a callable bind
        parameter) or the statement expands (``IN`` lists): those take ``construct_params``.
    """
    inner = compiled.compiled
    if compiled.expanding or any(bind.callable for bind in inner.bind_names):
        return None
    extra = {} if collected is None else {"_collected_params": collected}
    markers = {key: _Given(key) for key in column_keys}
    constructed = inner.construct_params(
        markers or None, escape_names=False, extracted_parameters=extracted, **extra
    )
    plan: list[tuple[str | None, _Processor, Any]] = []
    for name in compiled.positions:
        value = constructed[name]
        processor = compiled.bind_processors.get(name)
        if isinstance(value, _Given):
            plan.append((value.key, processor, None))
        else:
            plan.append((None, None, processor(value) if processor is not None else value))
    return tuple(plan)


def _args(plan: _Plan, params: Mapping[str, Any]) -> list[Any]:
    return [
        value if key is None else params[key] if processor is None else processor(params[key])
        for key, processor, value in plan
    ]


class _Row(tuple[Any, ...]):
    """A result row: by position, by attribute, and ``_mapping``."""

    _index: Mapping[str, int]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._index[name]]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return {key: self[i] for key, i in self._index.items()}


class DriverResult:
    """The buffered result of one statement: the subset of ``Result`` the repositories use."""

    def __init__(self, keys: Sequence[str], rows: list[tuple[Any, ...]], rowcount: int) -> None:
        """Builds a result.

        Args:
            keys: Column names.
            rows: Processed rows.
            rowcount: Rows the statement matched (from the command status).
        """
        self._keys = tuple(keys)
        self._rows = rows
        self.rowcount = rowcount
        self._as_mappings = False

    def keys(self) -> tuple[str, ...]:
        """Column names."""
        return self._keys

    def _wrap(self, row: tuple[Any, ...]) -> Any:
        if self._as_mappings:
            return dict(zip(self._keys, row, strict=True))
        wrapped = _Row(row)
        wrapped._index = {key: i for i, key in enumerate(self._keys)}
        return wrapped

    def mappings(self) -> DriverResult:
        """Rows as dictionaries from now on."""
        self._as_mappings = True
        return self

    def __iter__(self) -> Iterator[Any]:
        return (self._wrap(row) for row in self._rows)

    def all(self) -> list[Any]:
        """Every row."""
        return list(self)

    fetchall = all

    def first(self) -> Any:
        """The first row or ``None``."""
        return self._wrap(self._rows[0]) if self._rows else None

    def one_or_none(self) -> Any:
        """The only row or ``None`` (more than one is an error)."""
        if len(self._rows) > 1:
            raise sa.exc.MultipleResultsFound("more than one row")
        return self.first()

    def one(self) -> Any:
        """The only row (none or more is an error)."""
        if not self._rows:
            raise sa.exc.NoResultFound("no row")
        return self.one_or_none()

    def scalar(self) -> Any:
        """The first column of the first row, or ``None``."""
        return self._rows[0][0] if self._rows else None

    def scalar_one_or_none(self) -> Any:
        """The first column of the only row, or ``None``."""
        row = self.one_or_none()
        return None if row is None else self._rows[0][0]

    def scalar_one(self) -> Any:
        """The first column of the only row."""
        self.one()
        return self._rows[0][0]

    def scalars(self) -> _Scalars:
        """The first column of every row."""
        return _Scalars(row[0] for row in self._rows)


class _Scalars(list[Any]):
    """First-column values (``all()``/``first()`` like SQLAlchemy's ``ScalarResult``)."""

    def all(self) -> list[Any]:
        """Every value."""
        return list(self)

    def first(self) -> Any:
        """The first value or ``None``."""
        return self[0] if self else None


def _rowcount(status: str | None) -> int:
    # "UPDATE 3", "INSERT 0 1", "DELETE 0", "SELECT 2": the last word is the count.
    if not status:
        return -1
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


class DriverConnection:
    """One pooled connection in autocommit that runs statements on the driver.

    ``execute(statement, params)`` has the session's signature, so the repositories bind to it
    like to a session. Use as ``async with DriverConnection(engine) as conn:``.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        """Binds to ``engine`` (the connection is checked out on entry).

        Args:
            engine: The domain's primary engine.
        """
        self._engine = engine
        self._dialect: Any = engine.dialect  # uses the asyncpg dialect's internals
        self._fairy: Any = None

    async def __aenter__(self) -> DriverConnection:
        self._fairy = await self._engine.raw_connection()
        return self

    async def __aexit__(self, *exc: object) -> None:
        fairy, self._fairy = self._fairy, None
        if fairy is not None:
            await greenlet_spawn(fairy.close)

    async def execute(self, statement: Any, params: Mapping[str, Any] | None = None) -> Any:
        """Runs one statement in autocommit and buffers its result.

        Args:
            statement: A SQLAlchemy executable.
            params: Its bind parameter values.

        Returns:
            A :class:`DriverResult`.

        Raises:
            sqlalchemy.exc.DBAPIError: As ``AsyncConnection.execute`` would raise it.
        """
        column_keys = tuple(sorted(params)) if params else ()
        try:
            seen, again = _seen(statement, self._dialect, column_keys)
        except Unsupported:
            return await self._execute_with_sqlalchemy(statement, params)
        compiled = seen.form
        if again and not seen.planned:
            seen.plan = _plan(compiled, seen.extracted, seen.collected, column_keys)
            seen.planned = True
        if seen.plan is not None:
            args, sql = _args(seen.plan, params or {}), compiled.sql
        else:
            args, sql = self._construct(compiled, seen.extracted, seen.collected, params)
        adapted = self._fairy.dbapi_connection
        try:
            prepared, attributes = await adapted._prepare(
                sql, self._dialect._invalidate_schema_cache_asof
            )
            records = await prepared.fetch(*args)
            status = prepared.get_statusmsg()
        except Exception as exc:
            raise await self._translate(exc, sql, args) from None
        result_processors = compiled.processors_for(self._dialect, attributes) if records else ()
        if any(p is not None for p in result_processors):
            rows = [
                tuple(
                    p(v) if p is not None else v
                    for p, v in zip(result_processors, record, strict=True)
                )
                for record in records
            ]
        else:
            rows = [tuple(record) for record in records]
        return DriverResult(compiled.keys, rows, _rowcount(status))

    @staticmethod
    def _construct(
        compiled: _Compiled, extracted: Any, collected: Any, params: Mapping[str, Any] | None
    ) -> tuple[list[Any], str]:
        """The positional arguments (and SQL) of one execution, by ``construct_params``."""
        extra = {} if collected is None else {"_collected_params": collected}
        construct = compiled.compiled.construct_params(
            dict(params) if params else None,
            escape_names=False,
            extracted_parameters=extracted,
            **extra,
        )
        sql, positions, processors = compiled.sql, compiled.positions, compiled.bind_processors
        if compiled.expanding:
            state = compiled.compiled._process_parameters_for_postcompile(construct)
            sql, positions = state.statement, state.positiontup
            processors = {**processors, **state.processors}
        args = [
            processors[name](construct[name]) if name in processors else construct[name]
            for name in positions
        ]
        return args, sql

    async def _translate(self, exc: Exception, sql: str, args: list[Any]) -> BaseException:
        # The driver's error as SQLAlchemy would have raised it: the dialect's DBAPI class
        # (IntegrityError for a unique violation, ...), connection_invalidated when the
        # connection is gone (it is then discarded, not returned to the pool).
        adapted = self._fairy.dbapi_connection
        try:
            adapted._handle_exception(exc)
        except Exception as translated:
            dbapi_error = self._dialect.loaded_dbapi.Error
            if not isinstance(translated, dbapi_error):
                return translated
            gone = self._dialect.is_disconnect(translated, adapted, None)
            if gone:
                await greenlet_spawn(self._fairy.invalidate, translated)
            wrapped: BaseException = DBAPIError.instance(
                sql,
                args,
                translated,
                dbapi_error,
                connection_invalidated=gone,
                dialect=self._dialect,
            )
            return wrapped
        return exc  # pragma: no cover - _handle_exception always raises

    async def _execute_with_sqlalchemy(
        self, statement: Any, params: Mapping[str, Any] | None
    ) -> DriverResult:
        async with self._engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            result = await conn.execute(statement, dict(params) if params else None)
            if not result.returns_rows:
                return DriverResult((), [], result.rowcount)
            keys = tuple(result.keys())
            rows = [tuple(row) for row in result.all()]
            return DriverResult(keys, rows, len(rows))


def driver_supported(engine: AsyncEngine) -> bool:
    """Whether ``engine`` runs on asyncpg with the SQLAlchemy internals this module uses.

    Args:
        engine: An engine.

    Returns:
        ``True`` when :class:`DriverConnection` can be used on it.
    """
    dialect = engine.dialect
    return (
        dialect.driver == "asyncpg"
        and hasattr(dialect, "_invalidate_schema_cache_asof")
        and getattr(dialect, "paramstyle", None) == "numeric_dollar"
    )


# Primary engine -> its companion whose connections plan prepared statements generically
# (``plan_cache_mode = force_generic_plan``), registered by the composition root.
_GENERIC_PLANS: weakref.WeakKeyDictionary[Any, AsyncEngine] = weakref.WeakKeyDictionary()


def register_generic_plans(engine: AsyncEngine, companion: AsyncEngine) -> None:
    """Names the engine that runs ``engine``'s by-key hot-path statements.

    PostgreSQL plans a prepared statement on a partitioned table anew on every execution: its
    generic plan (which prunes partitions at executor start-up) is costed over every partition,
    so the planner keeps choosing a custom plan, and planning the claim/finish CTE costs more
    than running it. ``companion`` connects to the same database with
    ``plan_cache_mode = force_generic_plan``; only statements that look rows up by primary key
    go there (a list's ``LIMIT`` and filters need the values to plan well). A plan made once
    outlives the table's size at the time, so ``companion`` also has ``enable_seqscan = off``:
    a plan made on an empty table would otherwise scan it on every execution as it grows.

    Args:
        engine: A domain's primary engine.
        companion: The same database, with ``plan_cache_mode = force_generic_plan`` and
            ``enable_seqscan = off``.
    """
    _GENERIC_PLANS[engine.sync_engine] = companion


def generic_plans_engine(engine: AsyncEngine) -> AsyncEngine:
    """The engine that runs ``engine``'s by-key statements.

    Args:
        engine: A domain's primary engine.

    Returns:
        Its companion registered with :func:`register_generic_plans`, else ``engine`` itself.
    """
    return _GENERIC_PLANS.get(engine.sync_engine, engine)


@contextlib.asynccontextmanager
async def autocommit_connection(
    engine: AsyncEngine, *, generic_plans: bool = False
) -> AsyncIterator[Any]:
    """A connection in autocommit for one-statement work (the hot path).

    Statements run on the driver (:class:`DriverConnection`) where the engine allows it, else on
    an ordinary SQLAlchemy connection in autocommit; both have ``execute(statement, params)``.

    Args:
        engine: The domain's primary engine.
        generic_plans: The statements look rows up by primary key: run them on the engine
            registered with :func:`register_generic_plans` (when there is one), planned once
            per connection instead of on every execution.

    Yields:
        The connection.
    """
    if generic_plans:
        engine = generic_plans_engine(engine)
    if driver_supported(engine):
        async with DriverConnection(engine) as driver:
            yield driver
        return
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
