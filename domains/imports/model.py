"""Datasets (a declared schema), imports (one file into a dataset) and their chunks; no I/O."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from domains.shared.errors import FailedPrecondition, InvalidArgument

FIELD_TYPES = ("string", "integer", "number", "boolean", "date", "timestamp", "enum")
"""Declared field types."""

MAX_FIELDS = 200
MAX_ENUM_VALUES = 1000
MAX_DISPLAY_NAME = 200
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ImportState(enum.StrEnum):
    """Life cycle of an import (mirrors its operation)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({ImportState.SUCCEEDED, ImportState.FAILED, ImportState.CANCELLED})


@dataclasses.dataclass(frozen=True)
class FieldDef:
    """One declared field of a dataset.

    Attributes:
        name: Column (CSV header) / key (JSONL) name.
        type: One of :data:`FIELD_TYPES`.
        required: A row without a value for it is rejected.
        values: Allowed values of an ``enum`` field.
        indexed: Its column in the records table gets an index (faster filters on it).
    """

    name: str
    type: str
    required: bool = False
    values: tuple[str, ...] = ()
    indexed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON form.

        Returns:
            ``{"name", "type", "required", "values"}``, with ``"indexed": true`` if indexed
            (absent otherwise, so unindexed fields keep their JSON form).
        """
        data: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "values": list(self.values),
        }
        if self.indexed:
            data["indexed"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldDef:
        """Builds a field from its JSON form.

        Args:
            data: ``{"name", "type", "required", "values"}`` and optionally ``"indexed"``.

        Returns:
            The field.
        """
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            required=bool(data.get("required", False)),
            values=tuple(str(v) for v in data.get("values") or ()),
            indexed=bool(data.get("indexed", False)),
        )


def validate_schema(fields: Sequence[FieldDef], key_field: str) -> None:
    """Checks a declared schema.

    Args:
        fields: Declared fields.
        key_field: Name of the upsert key field.

    Raises:
        InvalidArgument: Naming the bad field and what to fix.
    """
    if not fields:
        raise InvalidArgument(
            "fields must declare at least one field", metadata={"field": "fields"}
        )
    if len(fields) > MAX_FIELDS:
        raise InvalidArgument(
            f"fields declares {len(fields)} fields; at most {MAX_FIELDS} are allowed",
            metadata={"field": "fields"},
        )
    seen: set[str] = set()
    for i, f in enumerate(fields):
        where = {"field": f"fields[{i}]"}
        if not _FIELD_NAME.match(f.name):
            raise InvalidArgument(
                f"field name {f.name!r} is invalid; use letters, digits and _ (max 63),"
                " not starting with a digit",
                metadata=where,
            )
        if f.name in seen:
            raise InvalidArgument(f"field {f.name!r} is declared twice", metadata=where)
        seen.add(f.name)
        if f.type not in FIELD_TYPES:
            raise InvalidArgument(
                f"field {f.name!r} has type {f.type!r}; use one of {', '.join(FIELD_TYPES)}",
                metadata=where,
            )
        if f.type == "enum":
            if not f.values:
                raise InvalidArgument(
                    f"enum field {f.name!r} needs its allowed values in values", metadata=where
                )
            if len(f.values) > MAX_ENUM_VALUES or len(set(f.values)) != len(f.values):
                raise InvalidArgument(
                    f"enum field {f.name!r} needs 1 to {MAX_ENUM_VALUES} distinct values",
                    metadata=where,
                )
        elif f.values:
            raise InvalidArgument(
                f"field {f.name!r} is {f.type}; only enum fields take values", metadata=where
            )
    key = next((f for f in fields if f.name == key_field), None)
    if key is None:
        raise InvalidArgument(
            f"key_field {key_field!r} is not a declared field; name one of the fields",
            metadata={"field": "key_field"},
        )
    if not key.required:
        raise InvalidArgument(
            f"key field {key_field!r} must be required (every record needs a key)",
            metadata={"field": "key_field"},
        )


def breaking_changes(
    old: Sequence[FieldDef], old_key: str, new: Sequence[FieldDef], new_key: str
) -> list[str]:
    """Lists the changes that would break records stored under the old schema.

    Safe: adding an optional field, making a field optional, adding enum values.

    Args:
        old: Current fields.
        old_key: Current key field.
        new: Proposed fields.
        new_key: Proposed key field.

    Returns:
        Human-readable descriptions (empty if the change is safe).
    """
    problems: list[str] = []
    if old_key != new_key:
        problems.append(f"the key field changes from {old_key!r} to {new_key!r}")
    new_by_name = {f.name: f for f in new}
    old_names = {f.name for f in old}
    for f in old:
        g = new_by_name.get(f.name)
        if g is None:
            problems.append(f"field {f.name!r} is removed")
            continue
        if g.type != f.type:
            problems.append(f"field {f.name!r} changes type from {f.type} to {g.type}")
        if g.required and not f.required:
            problems.append(f"field {f.name!r} becomes required")
        removed = set(f.values) - set(g.values)
        if f.type == "enum" and g.type == "enum" and removed:
            problems.append(f"enum field {f.name!r} loses values {sorted(removed)}")
    for g in new:
        if g.name not in old_names and g.required:
            problems.append(f"new field {g.name!r} is required (stored records lack it)")
    return problems


@dataclasses.dataclass
class Dataset:
    """A named collection of records with a declared schema.

    Attributes:
        id: Dataset id (``datasets/{id}``).
        tenant: Owning tenant.
        display_name: Human name.
        fields: Declared fields.
        key_field: Field whose value keys records (upserts).
        source_uri: Default http(s) source for scheduled imports.
        create_time: Creation time.
        update_time: Last change.
        record_count: Records stored (kept up to date at each import's finalize).
        request_id: AIP-155 request id of the create call, if it sent one.
        request_hash: Fingerprint of that create request (a replay must match it).
    """

    id: uuid.UUID
    tenant: str
    display_name: str
    fields: list[FieldDef]
    key_field: str
    create_time: dt.datetime
    update_time: dt.datetime
    source_uri: str | None = None
    record_count: int = 0
    request_id: str | None = None
    request_hash: str | None = None

    @property
    def name(self) -> str:
        """Resource name ``datasets/{id}``."""
        return f"datasets/{self.id}"

    def field(self, name: str) -> FieldDef | None:
        """Returns the declared field ``name``.

        Args:
            name: Field name.

        Returns:
            The field or ``None``.
        """
        return next((f for f in self.fields if f.name == name), None)

    @staticmethod
    def check_display_name(display_name: str) -> None:
        """Checks a display name.

        Args:
            display_name: The name.

        Raises:
            InvalidArgument: If empty or too long.
        """
        if not display_name.strip() or len(display_name) > MAX_DISPLAY_NAME:
            raise InvalidArgument(
                f"display_name must be 1 to {MAX_DISPLAY_NAME} characters",
                metadata={"field": "display_name"},
            )

    def change_schema(
        self, fields: list[FieldDef], key_field: str, *, has_records: bool, now: dt.datetime
    ) -> None:
        """Replaces the schema if stored records stay valid under it.

        Args:
            fields: New fields.
            key_field: New key field.
            has_records: Whether records are stored.
            now: Current time.

        Raises:
            InvalidArgument: If the new schema is malformed.
            FailedPrecondition: If it would break stored records.
        """
        validate_schema(fields, key_field)
        if has_records:
            problems = breaking_changes(self.fields, self.key_field, fields, key_field)
            if problems:
                raise FailedPrecondition(
                    f"{self.name} has stored records and this schema change would break them: "
                    + "; ".join(problems)
                    + ". Add optional fields instead, or create a new dataset",
                    reason="BREAKING_SCHEMA_CHANGE",
                )
        self.fields = list(fields)
        self.key_field = key_field
        self.update_time = now


@dataclasses.dataclass
class Import:
    """One file loaded into a dataset.

    Attributes:
        id: Import id (``datasets/{dataset_id}/imports/{id}``).
        dataset_id: Target dataset.
        tenant: Owning tenant.
        operation_id: The operation carrying it out.
        state: Life cycle state.
        format: ``csv`` or ``jsonl``.
        create_time: Creation time.
        file_path: Stored file (relative to the storage directory), once stored/fetched.
        source_uri: http(s) source fetched by the worker, if any.
        size_bytes: Stored file size.
        sha256: Digest of the stored file.
        rows_total: Data rows in the file (known after the split).
        rows_accepted: Valid rows upserted.
        rows_rejected: Invalid rows (listed in the errors download).
        chunks_total: Chunks of the fan-out.
        error: Why it failed.
        complete_time: When it ended.
        encoding_errors: What a byte that is not UTF-8 does: ``fail`` the import, ``replace``
            it with U+FFFD, or ``reject_row`` (the row is listed in the errors).
    """

    id: uuid.UUID
    dataset_id: uuid.UUID
    tenant: str
    operation_id: uuid.UUID
    state: str
    format: str
    create_time: dt.datetime
    file_path: str | None = None
    source_uri: str | None = None
    size_bytes: int = 0
    sha256: str | None = None
    rows_total: int | None = None
    rows_accepted: int | None = None
    rows_rejected: int | None = None
    chunks_total: int | None = None
    error: str | None = None
    complete_time: dt.datetime | None = None
    encoding_errors: str = "fail"

    @property
    def name(self) -> str:
        """Resource name ``datasets/{dataset_id}/imports/{id}``."""
        return f"datasets/{self.dataset_id}/imports/{self.id}"

    @property
    def errors_uri(self) -> str:
        """Path of the row errors download."""
        return f"/v1/{self.name}/errors"


@dataclasses.dataclass
class Chunk:
    """A slice of an import's file processed by one task.

    Attributes:
        import_id: The import.
        chunk_no: 0-based position.
        start_offset: Byte offset of the chunk's first row in the plain (decompressed) file.
        end_offset: Byte offset just after its last row.
        first_line: Physical line number of its first row (the header is line 1 in CSV).
        rows: Rows in the chunk.
        state: ``PENDING``, ``DONE`` (validated and staged) or ``MERGED`` (its rows are in
            the records table).
        rows_accepted: Valid rows staged.
        rows_rejected: Invalid rows.
        rows_inserted: Records its merge inserted (not updated).
        keys_sorted: Its staged rows were written in bytewise key order with no key twice
            (the merge then neither sorts nor de-duplicates them).
    """

    import_id: uuid.UUID
    chunk_no: int
    start_offset: int
    end_offset: int
    first_line: int
    rows: int
    state: str = "PENDING"
    rows_accepted: int = 0
    rows_rejected: int = 0
    rows_inserted: int = 0
    keys_sorted: bool = False
