"""Structured logs: JSON lines (or text in dev) carrying the request's correlation id.

One correlation id follows a request end to end:

1. The API takes ``X-Request-Id`` (``api.middleware`` keeps it in a context variable, which
   :func:`add_correlation_source` registers here) and stores it on the Operation.
2. ``domains.operations.service.enqueue`` puts it with the operation name into the outbox row's
   headers, and the publisher sends them as Celery message headers.
3. In the worker, :func:`install_task_context` binds them to context variables for the whole
   execution of the task (``task_prerun`` .. ``task_postrun``), and :class:`ContextFilter` adds
   them to every record: the task's own lines, the services it runs on the worker's runtime
   loop (``asyncio.run_coroutine_threadsafe`` copies the caller's context into the coroutine's
   task) and Celery's ``Task ... succeeded`` / ``retry`` / ``raised`` lines.

Celery detail (5.x, ``celery/worker/request.py``): the message *property* ``correlation_id``
(always the task id) overwrites a *header* of the same name in the request, so the task cannot
read our ``correlation_id`` header as ``task.request.correlation_id``. The worker's main process
copies it into the :data:`CORRELATION_HEADER` header on receipt (``task_received``), which
Celery then exposes in ``task.request`` and carries into retries (``task.request.headers``).

Every line is redacted as a whole, after formatting (:func:`monitoring.redaction.redact_text`):
URL passwords, ``Bearer``/``Basic`` credentials, secret-looking query parameters (the access log's
``?api_key=...``) and Conveyor API keys never reach the output, whichever logger wrote them,
tracebacks included.

The format comes from ``CONVEYOR_LOG_FORMAT`` (``json`` or ``text``); by default ``json`` when
``CONVEYOR_ENV=prod`` and ``text`` otherwise. The level comes from ``CONVEYOR_LOG_LEVEL``
(default ``INFO``) unless a command passes one.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from monitoring.redaction import redact_text

LogFormat = Literal["json", "text"]

CORRELATION_HEADER = "conveyor_correlation_id"
"""Celery header holding the correlation id in the worker (see the module docstring)."""
OUTBOX_CORRELATION_HEADER = "correlation_id"
"""Header name the outbox writes (``domains.operations.service.enqueue``)."""
OPERATION_HEADER = "operation"
"""Header holding the operation name (``operations/{domain}.{id}``)."""

FIELDS = ("correlation_id", "operation", "task_id", "task_name")
"""Context fields added to every record (when known)."""

correlation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conveyor_correlation_id", default=None
)
operation_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conveyor_operation", default=None
)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conveyor_task_id", default=None
)
task_name_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conveyor_task_name", default=None
)
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    "correlation_id": correlation_id_var,
    "operation": operation_var,
    "task_id": task_id_var,
    "task_name": task_name_var,
}
_correlation_sources: list[contextvars.ContextVar[str | None]] = []

# Worker main process: what the last received tasks carried, for Celery's own lines about them
# (they name the task in ``record.data["id"]`` and run outside any task context).
_received: collections.OrderedDict[str, tuple[str | None, str | None]] = collections.OrderedDict()
_RECEIVED_MAX = 2000
_received_lock = threading.Lock()

_HANDLER_MARK = "_conveyor_handler"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# Loggers kept at WARNING unless the process logs at DEBUG: alembic says one INFO line per
# plugin whenever it loads; httpx one per request, i.e. per webhook POST (each attempt is
# recorded in PostgreSQL already; formatting that line was ~3.6% of a webhook worker's CPU);
# a worker's "Received task" line, which TaskLineFilter turns to DEBUG anyway, is then not
# built at all (Celery checks the level once; the record cost ~4% of the consumer's CPU).
_QUIET = ("alembic.runtime.plugins", "httpx", "celery.worker.strategy")


def _quiet_level(level: int) -> int:
    return level if level <= logging.DEBUG else max(level, logging.WARNING)


# -- context -------------------------------------------------------------------------------


def add_correlation_source(var: contextvars.ContextVar[str | None]) -> None:
    """Registers a context variable holding a correlation id set elsewhere (the API's request
    id), used when none is bound here. Idempotent.

    Args:
        var: The context variable.
    """
    if var not in _correlation_sources:
        _correlation_sources.append(var)


def current() -> dict[str, str]:
    """Returns the context fields bound now (correlation id, operation, task id and name).

    Returns:
        ``{field: value}`` for the fields that are set.
    """
    values = {name: var.get() for name, var in _VARS.items()}
    if not values["correlation_id"]:
        for source in _correlation_sources:
            value = source.get()
            if value:
                values["correlation_id"] = value
                break
    return {name: value for name, value in values.items() if value}


@contextlib.contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Binds context fields for the ``with`` block (this thread or asyncio task only).

    Args:
        **fields: Values for names in :data:`FIELDS`; ``None`` leaves a field as it is.

    Yields:
        Nothing.

    Raises:
        TypeError: If a name is not in :data:`FIELDS`.
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in fields.items() if v is not None]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


# -- records ---------------------------------------------------------------------------------


class ContextFilter(logging.Filter):
    """Adds the context fields to every record that passes a handler.

    Records keep what they already carry (``extra={"correlation_id": ...}``). Celery's own
    records about a task (``record.data = {"id", "name", ...}``) get the task id and name, and
    in the worker's main process the correlation id and operation received with the task.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Sets the fields on ``record``.

        Args:
            record: The record.

        Returns:
            ``True`` (never drops a record).
        """
        values: dict[str, str | None] = dict.fromkeys(FIELDS)
        values.update(current())
        data = getattr(record, "data", None)
        if isinstance(data, Mapping) and isinstance(data.get("id"), str):
            task_id = data["id"]
            if values["task_id"] is None:
                values["task_id"] = task_id
                name = data.get("name")
                values["task_name"] = name if isinstance(name, str) else None
            if values["task_id"] == task_id and values["correlation_id"] is None:
                with _received_lock:
                    cid, operation = _received.get(task_id, (None, None))
                values["correlation_id"] = cid
                values["operation"] = values["operation"] or operation
        for name, value in values.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def _exc_fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, str]:
    out: dict[str, str] = {}
    if record.exc_info and record.exc_info[0] is not None:
        out["exc_type"] = record.exc_info[0].__name__
        out["exc_info"] = formatter.formatException(record.exc_info)
    elif record.exc_text:
        out["exc_info"] = record.exc_text
    if record.stack_info:
        out["stack_info"] = formatter.formatStack(record.stack_info)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``process``, the context fields that are known, and ``exc_type``/``exc_info`` for errors.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Renders ``record`` as one line of JSON.

        Args:
            record: The record.

        Returns:
            The JSON text (no newline inside).
        """
        time = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        entry: dict[str, Any] = {
            "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            if len(record.args) == 5:
                client, method, path, _, status = record.args
                entry["http"] = {
                    "client": client,
                    "method": method,
                    "path": path,
                    "status": status,
                }
        entry.update(_exc_fields(self, record))
        return redact_text(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Human-readable lines for development, with the context fields at the end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Renders ``record`` with ``[correlation_id=… operation=… task=name[id]]``.

        Args:
            record: The record.

        Returns:
            The text.
        """
        text = redact_text(super().format(record))
        parts = []
        cid = getattr(record, "correlation_id", None)
        operation = getattr(record, "operation", None)
        task_id = getattr(record, "task_id", None)
        if cid:
            parts.append(f"correlation_id={cid}")
        if operation:
            parts.append(f"operation={operation}")
        if task_id:
            parts.append(f"task={getattr(record, 'task_name', None) or '?'}[{task_id}]")
        if not parts:
            return text
        head, sep, tail = text.partition("\n")  # keep a traceback below the context
        return f"{head} [{' '.join(parts)}]{sep}{tail}"


# -- configuration ---------------------------------------------------------------------------


def log_format(environ: Mapping[str, str] | None = None) -> LogFormat:
    """Returns the configured format.

    Args:
        environ: Environment (default ``os.environ``).

    Returns:
        ``json`` or ``text``.

    Raises:
        ValueError: If ``CONVEYOR_LOG_FORMAT`` is neither (the message names the variable).
    """
    env = os.environ if environ is None else environ
    value = env.get("CONVEYOR_LOG_FORMAT", "").strip().lower()
    if not value:
        return "json" if env.get("CONVEYOR_ENV", "").strip().lower() == "prod" else "text"
    if value not in ("json", "text"):
        raise ValueError(f"CONVEYOR_LOG_FORMAT: must be json or text (got {value!r})")
    return "json" if value == "json" else "text"


def make_handler(fmt: LogFormat | None = None) -> logging.Handler:
    """Returns a stderr handler with the configured formatter and the context filter.

    Args:
        fmt: ``json`` or ``text`` (default: :func:`log_format`).

    Returns:
        The handler.
    """
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter() if (fmt or log_format()) == "json" else TextFormatter()
    )
    handler.setFormatter(formatter)
    # The filters that drop lines first: a worker builds a "succeeded" record per task that
    # TaskLineFilter mostly drops, and binding the context first cost ~6 of its ~13 us.
    handler.addFilter(HousekeepingFilter())
    handler.addFilter(TaskLineFilter())
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    return handler


def _level(level: str | int | None) -> int:
    if isinstance(level, int):
        return level or logging.INFO
    name = (level or os.environ.get("CONVEYOR_LOG_LEVEL") or "INFO").upper()
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else logging.INFO


def _install(level: int, fmt: LogFormat) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    root.addHandler(make_handler(fmt))
    root.setLevel(level)
    # Their own handlers would bypass the format and the context.
    for name in (*_UVICORN_LOGGERS, "celery", "celery.task"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    for name in _QUIET:
        logging.getLogger(name).setLevel(_quiet_level(level))


def setup(component: str, *, level: str | int | None = None, fmt: LogFormat | None = None) -> None:
    """Configures the process's logging (the ``conveyor`` commands call it first).

    Installs one stderr handler on the root logger (JSON or text, with the context filter). For
    ``worker`` and ``beat``, Celery's own logging setup is replaced by this one
    (``setup_logging`` signal) and task context binding is installed.

    Args:
        component: ``api``, ``worker``, ``relay``, ``beat``...
        level: Log level (default ``CONVEYOR_LOG_LEVEL`` or ``INFO``).
        fmt: ``json`` or ``text`` (default: from the environment).

    Raises:
        SystemExit: With code 2 and one line on stderr if the format variable is invalid.
    """
    try:
        chosen = fmt or log_format()
    except ValueError as exc:
        print(f"conveyor: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _install(_level(level), chosen)
    if component in ("worker", "beat"):
        from celery import signals

        def _celery_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
            _install(_level(loglevel or level), chosen)

        signals.setup_logging.connect(_celery_setup_logging, weak=False)
        install_task_context()


_POLL_PATHS = ("/healthz", "/readyz", "/metrics")


class PollAccessFilter(logging.Filter):
    """Demotes the access lines of polls to DEBUG: ``:wait`` long polls (``conveyor ops watch``
    sends one a second), ``GET /v1/operations/...`` and the health and metrics probes. At INFO
    they would bury every other line; at DEBUG they are all still there.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keeps ``record`` unless it is a poll's access line and DEBUG is off.

        Args:
            record: A ``uvicorn.access`` record.

        Returns:
            Whether to log it.
        """
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 5):
            return True
        method, path = str(args[1]), str(args[2]).split("?", 1)[0]
        poll = (
            path.endswith(":wait")
            or path in _POLL_PATHS
            or (method == "GET" and path.startswith("/v1/operations/"))
        )
        if not poll:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class HousekeepingFilter(logging.Filter):
    """Demotes a worker's "received" / "succeeded" lines of housekeeping tasks to DEBUG.

    Housekeeping tasks (the sweepers, breaker probes: ``send_events=False`` on the task) run
    every few seconds; at INFO their two lines per run would bury the user's tasks. Failures
    stay at their level.
    """

    _LOGGERS = frozenset({"celery.worker.strategy", "celery.app.trace"})

    def filter(self, record: logging.LogRecord) -> bool:
        """Keeps ``record`` unless it is an INFO line of a housekeeping task and DEBUG is off.

        Args:
            record: A log record.

        Returns:
            Whether to log it.
        """
        if record.levelno != logging.INFO or record.name not in self._LOGGERS:
            return True
        args = record.args
        name = args.get("name") if isinstance(args, dict) else None
        if not name:
            return True
        from celery import current_app

        task = current_app.tasks.get(str(name))
        if task is None or getattr(task, "send_events", True):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class TaskLineFilter(logging.Filter):
    """Celery's per-task lines at DEBUG, except a sample and the slow ones (issue #22).

    At INFO Celery writes two lines per task ("received", "succeeded"): 50 MB of worker logs
    in half an hour at 40 tasks a second, and nothing in them the operation does not already
    hold. "received" becomes DEBUG; "succeeded" stays INFO only for tasks slower than
    ``CONVEYOR_LOG_SLOW_TASK_SECONDS`` (default 10) and for a deterministic sample of task ids
    (``CONVEYOR_LOG_TASK_SUCCESS_SAMPLE``, default 0.01), so the correlation id of a sampled
    or slow task is still searchable at INFO, and every line is there at DEBUG. Retries,
    failures and the task's own lines keep their level.
    """

    _RECEIVED = "celery.worker.strategy"
    _TRACE = "celery.app.trace"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Reads the sample rate and slow threshold.

        Args:
            environ: Environment (default ``os.environ``).

        Raises:
            ValueError: If a variable is not a number in range (the message names it).
        """
        super().__init__()
        env = os.environ if environ is None else environ
        self.sample = _env_float(env, "CONVEYOR_LOG_TASK_SUCCESS_SAMPLE", 0.01, 0.0, 1.0)
        self.slow_seconds = _env_float(env, "CONVEYOR_LOG_SLOW_TASK_SECONDS", 10.0, 0.0, 1e9)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keeps ``record`` unless it is a routine per-task INFO line and DEBUG is off.

        Args:
            record: A log record.

        Returns:
            Whether to log it.
        """
        if record.levelno != logging.INFO or record.name not in (self._RECEIVED, self._TRACE):
            return True
        args = record.args if isinstance(record.args, dict) else {}
        if record.name == self._TRACE:
            if "runtime" not in args:  # not the success line (a retry, a revoke...)
                return True
            runtime = args.get("runtime")
            if isinstance(runtime, int | float) and runtime >= self.slow_seconds:
                return True
            if self._sampled(str(args.get("id", ""))):
                return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)

    def _sampled(self, task_id: str) -> bool:
        """Whether ``task_id`` falls in the sample (the same answer in every process)."""
        if self.sample <= 0:
            return False
        if self.sample >= 1:
            return True
        digest = hashlib.blake2b(task_id.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") < self.sample * 2**32


def _env_float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """Reads a float variable within ``[low, high]``.

    Raises:
        ValueError: Naming the variable, if it is not a number in range.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ValueError(f"{name}: must be a number from {low:g} to {high:g} (got {raw!r})")
    return value


def uvicorn_log_config(
    level: str | int | None = None, fmt: LogFormat | None = None
) -> dict[str, Any]:
    """Returns a ``logging.config.dictConfig`` for ``uvicorn.run(log_config=...)``.

    Uvicorn applies it in the server process and in each of its worker processes: the root
    logger gets this module's handler and uvicorn's loggers (access log included) propagate to
    it, so they share the format and carry the request id.

    Args:
        level: Log level (default ``CONVEYOR_LOG_LEVEL`` or ``INFO``).
        fmt: ``json`` or ``text`` (default: from the environment).

    Returns:
        The configuration.
    """
    chosen = fmt or log_format()
    level_name = logging.getLevelName(_level(level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"conveyor": {"()": f"{__name__}.make_handler", "fmt": chosen}},
        "filters": {"polls": {"()": f"{__name__}.PollAccessFilter"}},
        "root": {"handlers": ["conveyor"], "level": level_name},
        "loggers": {
            **{
                name: {"handlers": [], "level": level_name, "propagate": True}
                for name in _UVICORN_LOGGERS
            },
            "uvicorn.access": {
                "handlers": [],
                "level": level_name,
                "propagate": True,
                "filters": ["polls"],
            },
            **{
                name: {"level": logging.getLevelName(_quiet_level(_level(level)))}
                for name in _QUIET
            },
        },
    }


# -- Celery ----------------------------------------------------------------------------------

_task_stack = threading.local()
_installed = False
_install_lock = threading.Lock()


def _header(request: Any, name: str) -> str | None:
    value = request.get(name) if hasattr(request, "get") else None
    if not value:
        value = (getattr(request, "headers", None) or {}).get(name)
    return str(value) if value else None


def _on_task_received(request: Any = None, **_: Any) -> None:
    # Worker main process, before the request goes to the pool: see the module docstring.
    if request is None:
        return
    headers = getattr(getattr(request, "message", None), "headers", None) or {}
    request_dict = getattr(request, "request_dict", None)
    cid = headers.get(CORRELATION_HEADER) or headers.get(OUTBOX_CORRELATION_HEADER) or None
    if cid and isinstance(request_dict, dict):
        request_dict.setdefault(CORRELATION_HEADER, str(cid))
    operation = headers.get(OPERATION_HEADER) or None
    with _received_lock:
        _received[str(request.id)] = (
            str(cid) if cid else None,
            str(operation) if operation else None,
        )
        while len(_received) > _RECEIVED_MAX:
            _received.popitem(last=False)


def _on_task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    fields = {
        "correlation_id": _header(request, CORRELATION_HEADER) if request is not None else None,
        "operation": _header(request, OPERATION_HEADER) if request is not None else None,
        "task_id": task_id,
        "task_name": getattr(task, "name", None),
    }
    tokens = [(_VARS[k], _VARS[k].set(v)) for k, v in fields.items()]
    stack = getattr(_task_stack, "items", None)
    if stack is None:
        stack = _task_stack.items = []
    stack.append((task_id, tokens))


def _on_task_postrun(task_id: str | None = None, **_: Any) -> None:
    stack = getattr(_task_stack, "items", None)
    while stack:
        pushed_id, tokens = stack.pop()
        for var, token in reversed(tokens):
            try:
                var.reset(token)
            except ValueError:  # set in another context: clear instead
                var.set(None)
        if pushed_id == task_id:
            break


def _on_before_task_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # A message a running task sends itself (an import's chord: chunks and finalize) is part of
    # that task's work: it carries the task's correlation id and operation. Outbox messages
    # (their headers always hold OUTBOX_CORRELATION_HEADER) say what they belong to themselves:
    # an event published after a task's commit is not part of that task's operation.
    if headers is None or OUTBOX_CORRELATION_HEADER in headers:
        return
    cid, operation = correlation_id_var.get(), operation_var.get()
    if cid and not headers.get(CORRELATION_HEADER):
        headers[CORRELATION_HEADER] = cid
    if operation and not headers.get(OPERATION_HEADER):
        headers[OPERATION_HEADER] = operation


def install_task_context() -> None:
    """Connects the Celery signals that bind the context fields around each task (idempotent).

    ``task_received`` (worker main process) keeps the correlation id from the message headers;
    ``task_prerun``/``task_postrun`` (where the task runs: pool process or thread) bind and
    unbind the correlation id, operation, task id and task name; ``before_task_publish`` copies
    the bound correlation id and operation into messages a running task sends.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        from celery import signals

        signals.task_received.connect(_on_task_received, weak=False)
        signals.task_prerun.connect(_on_task_prerun, weak=False)
        signals.task_postrun.connect(_on_task_postrun, weak=False)
        signals.before_task_publish.connect(_on_before_task_publish, weak=False)
        _installed = True
