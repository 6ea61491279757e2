"""Typed Python client of the Conveyor API.

>>> from conveyor_client import Conveyor  # doctest: +SKIP
>>> with Conveyor("http://127.0.0.1:8000", api_key="cvk_...") as cv:  # doctest: +SKIP
...     op = cv.pings.create("hello").wait()
...     print(op.state, op.response)

:class:`Conveyor` blocks, :class:`AsyncConveyor` is the same for asyncio. Creates send a
``request_id`` and are retried safely (AIP-155); list calls iterate over every page; errors are
the typed exceptions of :mod:`conveyor_client.errors`.
"""

from conveyor_client import errors, models
from conveyor_client._async import AsyncConveyor, AsyncOperation
from conveyor_client._core import RetryPolicy, new_request_id
from conveyor_client._sync import Conveyor, Operation
from conveyor_client.errors import (
    Aborted,
    AlreadyExists,
    ApiError,
    Cancelled,
    ConnectionFailed,
    ConveyorError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "ApiError",
    "AsyncConveyor",
    "AsyncOperation",
    "Cancelled",
    "ConnectionFailed",
    "Conveyor",
    "ConveyorError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "Operation",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "errors",
    "models",
    "new_request_id",
]
