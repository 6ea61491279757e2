"""Query conditions: the parsed, typed form of an AIP-160 filter handed to repositories."""

from __future__ import annotations

import dataclasses
from typing import Literal

Operator = Literal["=", "!=", "<", "<=", ">", ">="]
Value = str | int | float | bool | None


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
