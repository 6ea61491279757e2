"""Datasets, their imports (CSV/JSONL files or a source_uri) and their records."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from api import filtering, pagination
from api.auth import Principal, authorize, require_scope
from api.deps import ImportsDep, container, correlation_id
from api.errors import ERROR_RESPONSES, error_body
from api.v1 import imports_upload
from api.v1.schemas import OperationOut, RequestIdQuery, operation_response, request_id_field
from domains.imports.model import Dataset, FieldDef, Import
from domains.imports.storage import FileTooLarge
from domains.shared.errors import InvalidArgument
from domains.shared.ids import parse_id

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

Reader = Annotated[Principal, Depends(require_scope("imports:read"))]
Writer = Annotated[Principal, Depends(require_scope("imports:write"))]

_DATASET_ID = "019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d"
_IMPORT_ID = "019a8f0e-8a00-7b3e-9c55-3f1f9e0a1b2e"
_FIELDS_EXAMPLE: list[Any] = [
    {"name": "order_id", "type": "string", "required": True},
    {"name": "amount", "type": "number", "required": True},
    {"name": "country", "type": "enum", "values": ["DE", "FR", "US"]},
    {"name": "paid", "type": "boolean"},
    {"name": "ordered_on", "type": "date"},
]


class FieldIn(BaseModel):
    """A declared field."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63, description="CSV column / JSONL key.")
    type: Literal["string", "integer", "number", "boolean", "date", "timestamp", "enum"]
    required: bool = Field(default=False, description="Rows without a value are rejected.")
    values: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=1000, description="Allowed values of an enum field."
    )
    indexed: bool = Field(
        default=False,
        description="Index this field's column: filters on it stay fast on large datasets"
        " (the key is always indexed).",
    )

    def to_def(self) -> FieldDef:
        """Returns the domain field."""
        return FieldDef(
            self.name, self.type, self.required, tuple(self.values), indexed=self.indexed
        )


class CreateDatasetRequest(BaseModel):
    """Body of ``POST /v1/datasets``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "display_name": "Orders",
                "fields": _FIELDS_EXAMPLE,
                "key_field": "order_id",
            }
        },
    )

    display_name: str = Field(min_length=1, max_length=200)
    fields: list[FieldIn] = Field(min_length=1, max_length=200)
    key_field: str = Field(
        min_length=1, max_length=63, description="Required field keying upserts."
    )
    source_uri: str | None = Field(
        default=None, max_length=2048, description="Default http(s) source for scheduled imports."
    )
    request_id: str | None = request_id_field()


class UpdateDatasetRequest(BaseModel):
    """Body of ``PATCH /v1/datasets/{id}``: only the fields sent change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "display_name": "Orders 2026",
                "fields": [*_FIELDS_EXAMPLE, {"name": "note", "type": "string"}],
            }
        },
    )

    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    fields: list[FieldIn] | None = Field(default=None, min_length=1, max_length=200)
    key_field: str | None = Field(default=None, min_length=1, max_length=63)
    source_uri: str | None = Field(
        default=None, max_length=2048, description='"" removes the default source.'
    )


class FieldOut(BaseModel):
    """A declared field."""

    name: str
    type: str
    required: bool
    values: list[str] = []
    indexed: bool = Field(default=False, description="Present (true) if the field is indexed.")


class DatasetOut(BaseModel):
    """A dataset."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": f"datasets/{_DATASET_ID}",
                "id": _DATASET_ID,
                "display_name": "Orders",
                "fields": _FIELDS_EXAMPLE,
                "key_field": "order_id",
                "source_uri": None,
                "record_count": 99000,
                "create_time": "2026-11-25T12:00:00Z",
                "update_time": "2026-11-25T12:00:00Z",
            }
        }
    )

    name: str
    id: str
    display_name: str
    fields: list[FieldOut]
    key_field: str
    source_uri: str | None = None
    record_count: int
    create_time: dt.datetime
    update_time: dt.datetime


class ListDatasetsResponse(BaseModel):
    """A page of datasets (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "datasets": [DatasetOut.model_config["json_schema_extra"]["example"]],  # type: ignore[index]
                "next_page_token": "",
            }
        }
    )

    datasets: list[DatasetOut]
    next_page_token: str = ""


class CreateImportRequest(BaseModel):
    """JSON body of ``POST /v1/datasets/{id}/imports`` (import from a URL). To send a file,
    use multipart/form-data (part ``file``, optional parts ``format``, ``encoding_errors`` and
    ``request_id``) or the
    raw file as body with ``Content-Type: text/csv``, ``application/x-ndjson`` or
    ``application/gzip``.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "source_uri": "https://data.example.com/orders.csv.gz",
                "format": "csv",
                "request_id": "5b1c8f52-7f0e-4a43-9d0e-0c5a3f1b2d11",
            }
        },
    )

    source_uri: str = Field(min_length=1, max_length=2048, description="http(s) URL to fetch.")
    format: Literal["auto", "csv", "jsonl"] = "auto"
    encoding_errors: Literal["fail", "replace", "reject_row"] = Field(
        default="fail",
        description=(
            "A byte that is not UTF-8: `fail` the import, `replace` it with U+FFFD, or"
            " `reject_row` (the row is listed in the errors download)."
        ),
    )
    request_id: str | None = Field(default=None, min_length=1, max_length=128)


class ImportOut(BaseModel):
    """An import of a file into a dataset."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": f"datasets/{_DATASET_ID}/imports/{_IMPORT_ID}",
                "id": _IMPORT_ID,
                "dataset": f"datasets/{_DATASET_ID}",
                "state": "SUCCEEDED",
                "operation": f"operations/imports.{_IMPORT_ID}",
                "format": "csv",
                "source_uri": None,
                "size_bytes": 5_242_880,
                "rows_total": 100000,
                "rows_accepted": 99000,
                "rows_rejected": 1000,
                "errors_uri": f"/v1/datasets/{_DATASET_ID}/imports/{_IMPORT_ID}/errors",
                "error": None,
                "create_time": "2026-11-25T12:00:00Z",
                "complete_time": "2026-11-25T12:00:09Z",
            }
        }
    )

    name: str
    id: str
    dataset: str
    state: str
    operation: str
    format: str
    encoding_errors: str = "fail"
    source_uri: str | None = None
    size_bytes: int
    rows_total: int | None = None
    rows_accepted: int | None = None
    rows_rejected: int | None = None
    errors_uri: str
    error: str | None = None
    create_time: dt.datetime
    complete_time: dt.datetime | None = None


class ListImportsResponse(BaseModel):
    """A page of imports (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "imports": [ImportOut.model_config["json_schema_extra"]["example"]],  # type: ignore[index]
                "next_page_token": "",
            }
        }
    )

    imports: list[ImportOut]
    next_page_token: str = ""


class RecordOut(BaseModel):
    """A record of a dataset."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": f"datasets/{_DATASET_ID}/records/A-1001",
                "key": "A-1001",
                "data": {"order_id": "A-1001", "amount": 120.5, "country": "DE", "paid": True},
                "import": f"datasets/{_DATASET_ID}/imports/{_IMPORT_ID}",
                "update_time": "2026-11-25T12:00:09Z",
            }
        },
        populate_by_name=True,
    )

    name: str
    key: str
    data: dict[str, Any]
    import_: str = Field(alias="import")
    update_time: dt.datetime


class ListRecordsResponse(BaseModel):
    """A page of records (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "records": [RecordOut.model_config["json_schema_extra"]["example"]],  # type: ignore[index]
                "next_page_token": "",
            }
        }
    )

    records: list[RecordOut]
    next_page_token: str = ""


class RowErrorOut(BaseModel):
    """One rejected row's problem."""

    line: int
    field: str
    reason: str
    raw_value: str


class RowErrorsResponse(BaseModel):
    """Row errors as JSON (``Accept: application/json``); the CSV form has every error."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "errors": [
                    {
                        "line": 17,
                        "field": "amount",
                        "reason": "expected a number like 12.5",
                        "raw_value": "12,5",
                    }
                ],
                "truncated": False,
            }
        }
    )

    errors: list[RowErrorOut]
    truncated: bool = Field(description="More errors exist than listed; download the CSV.")


def dataset_out(dataset: Dataset) -> dict[str, Any]:
    """Renders a dataset.

    Args:
        dataset: The dataset.

    Returns:
        Its JSON body.
    """
    return {
        "name": dataset.name,
        "id": str(dataset.id),
        "display_name": dataset.display_name,
        "fields": [f.to_dict() for f in dataset.fields],
        "key_field": dataset.key_field,
        "source_uri": dataset.source_uri,
        "record_count": dataset.record_count,
        "create_time": dataset.create_time.isoformat(),
        "update_time": dataset.update_time.isoformat(),
    }


def import_out(item: Import) -> dict[str, Any]:
    """Renders an import.

    Args:
        item: The import.

    Returns:
        Its JSON body.
    """
    return {
        "name": item.name,
        "id": str(item.id),
        "dataset": f"datasets/{item.dataset_id}",
        "state": str(item.state),
        "operation": f"operations/imports.{item.operation_id}",
        "format": item.format,
        "encoding_errors": item.encoding_errors,
        "source_uri": item.source_uri,
        "size_bytes": item.size_bytes,
        "rows_total": item.rows_total,
        "rows_accepted": item.rows_accepted,
        "rows_rejected": item.rows_rejected,
        "errors_uri": item.errors_uri,
        "error": item.error,
        "create_time": item.create_time.isoformat(),
        "complete_time": item.complete_time.isoformat() if item.complete_time else None,
    }


def record_out(dataset: Dataset, row: dict[str, Any]) -> dict[str, Any]:
    """Renders a record.

    Args:
        dataset: Its dataset.
        row: The record row.

    Returns:
        Its JSON body.
    """
    return {
        "name": f"{dataset.name}/records/{row['key']}",
        "key": row["key"],
        "data": row["data"],
        "import": f"{dataset.name}/imports/{row['import_id']}",
        "update_time": row["update_time"].isoformat(),
    }


def _id(value: str, what: str) -> uuid.UUID:
    return parse_id(value.rsplit("/", 1)[-1], what=what)


PageSize = Annotated[int | None, Query(description="At most 1000; default 50.")]
PageToken = Annotated[
    str | None, Query(max_length=2000, description="next_page_token of the previous page.")
]

# ---- datasets ----------------------------------------------------------------------------


@router.post("", response_model=DatasetOut, summary="Create a dataset")
async def create_dataset(
    body: CreateDatasetRequest,
    svc: ImportsDep,
    caller: Writer,
    request_id_param: RequestIdQuery = None,
) -> Any:
    """Creates a dataset with its declared schema: typed fields and the key field for upserts.
    The same `request_id` with the same body returns the dataset the first call created.
    """
    dataset = await svc.create_dataset(
        tenant=caller.tenant,
        display_name=body.display_name,
        fields=[f.to_def() for f in body.fields],
        key_field=body.key_field,
        source_uri=body.source_uri,
        request_id=body.request_id or request_id_param,
    )
    return JSONResponse(dataset_out(dataset))


@router.get("", response_model=ListDatasetsResponse, summary="List datasets")
async def list_datasets(
    svc: ImportsDep, caller: Reader, page_size: PageSize = None, page_token: PageToken = None
) -> Any:
    """Lists the caller's datasets in creation order (AIP-158 paging)."""
    fingerprint = pagination.query_fingerprint("datasets", caller.tenant)
    after = pagination.decode_after(page_token, query_fingerprint=fingerprint)
    datasets, last = await svc.list_datasets(
        caller.tenant,
        page_size=pagination.clamp_page_size(page_size),
        after_id=uuid.UUID(after) if after else None,
    )
    return JSONResponse(
        {
            "datasets": [dataset_out(d) for d in datasets],
            "next_page_token": pagination.next_page_token(last, query_fingerprint=fingerprint),
        }
    )


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get a dataset")
async def get_dataset(dataset_id: str, svc: ImportsDep, caller: Reader) -> Any:
    """Returns a dataset with its schema and record count."""
    return JSONResponse(
        dataset_out(await svc.get_dataset(caller.tenant, _id(dataset_id, "dataset id")))
    )


@router.patch("/{dataset_id}", response_model=DatasetOut, summary="Update a dataset")
async def update_dataset(
    dataset_id: str, body: UpdateDatasetRequest, svc: ImportsDep, caller: Writer
) -> Any:
    """Changes the fields sent. A schema change that would break stored records (removing or
    retyping a field, making one required, changing the key, removing enum values) is refused
    with FAILED_PRECONDITION; adding optional fields or enum values is fine.
    """
    sent = body.model_fields_set
    dataset = await svc.update_dataset(
        caller.tenant,
        _id(dataset_id, "dataset id"),
        display_name=body.display_name,
        fields=[f.to_def() for f in body.fields] if body.fields is not None else None,
        key_field=body.key_field,
        source_uri=body.source_uri or None,
        clear_source_uri="source_uri" in sent and not body.source_uri,
    )
    return JSONResponse(dataset_out(dataset))


@router.delete(
    "/{dataset_id}",
    summary="Delete a dataset",
    responses={200: {"description": "Deleted", "content": {"application/json": {"example": {}}}}},
)
async def delete_dataset(dataset_id: str, svc: ImportsDep, caller: Writer) -> Any:
    """Deletes a dataset with its records, imports and files (not while an import runs)."""
    await svc.delete_dataset(caller.tenant, _id(dataset_id, "dataset id"))
    return JSONResponse({})


# ---- imports -----------------------------------------------------------------------------

_RAW_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/gzip": "auto",
    "application/x-gzip": "auto",
    "application/octet-stream": "auto",
    "text/plain": "auto",
}

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/json": {
            # Inline: the route reads its body by hand, so FastAPI does not register the model.
            "schema": CreateImportRequest.model_json_schema(),
            "example": CreateImportRequest.model_config["json_schema_extra"]["example"],  # type: ignore[index]
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "CSV with a header, or JSONL; gzip accepted.",
                    },
                    "format": {"type": "string", "enum": ["auto", "csv", "jsonl"]},
                    "encoding_errors": {
                        "type": "string",
                        "enum": ["fail", "replace", "reject_row"],
                    },
                    "request_id": {"type": "string", "maxLength": 128},
                },
            }
        },
        "text/csv": {
            "schema": {"type": "string", "format": "binary"},
            "example": "order_id,amount,country\nA-1001,120.5,DE\n",
        },
        "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
    },
}

_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {
        "model": ERROR_RESPONSES[400]["model"],
        "description": "RESOURCE_EXHAUSTED: the file is larger than CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES",
        "content": {
            "application/json": {
                "example": error_body(
                    "RESOURCE_EXHAUSTED",
                    "the import file is larger than the 1073741824-byte limit"
                    " (CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES); split it or compress it with gzip",
                    http_code=413,
                    reason="IMPORT_FILE_TOO_LARGE",
                )
            }
        },
    }
}


def _too_large(exc: FileTooLarge) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, http_code=413, reason=exc.reason, metadata=exc.metadata),
        status_code=413,
        headers={"connection": "close"},
    )


@router.post(
    "/{dataset_id}/imports",
    response_model=OperationOut,
    summary="Import a file into a dataset",
    openapi_extra={"requestBody": _UPLOAD_BODY, "x-upload": True},
    responses=_TOO_LARGE,
)
async def create_import(
    dataset_id: str,
    request: Request,
    format_param: Annotated[Literal["auto", "csv", "jsonl"] | None, Query(alias="format")] = None,
    request_id_param: Annotated[str | None, Query(alias="request_id", max_length=128)] = None,
    encoding_errors_param: Annotated[
        Literal["fail", "replace", "reject_row"] | None,
        Query(
            alias="encoding_errors",
            description="A byte that is not UTF-8: `fail` (default), `replace` (U+FFFD) or"
            " `reject_row` (the row is listed in the errors download).",
        ),
    ] = None,
) -> Any:
    """Starts an import and returns its Operation (type `import`). Send the file as
    multipart/form-data (part `file`), or as the raw body (`text/csv`, `application/x-ndjson`,
    `application/gzip`), or JSON `{"source_uri": ...}` for the worker to fetch (http/https,
    SSRF-guarded). The file is durable on disk before the response. Valid rows are upserted by
    the dataset's key; invalid rows are listed at `errors_uri`. The same `request_id` with the
    same file is one import.
    """
    # A hot route (docs/architecture.md, "Hot routes"): no dependencies.
    caller = authorize(request, "imports:write")
    svc, correlation = container(request).imports, correlation_id(request)
    did = _id(dataset_id, "dataset id")
    await svc.get_dataset(caller.tenant, did)
    content_type = request.headers.get("content-type", "").lower()
    media = content_type.split(";", 1)[0].strip()
    fmt = format_param
    rid = request_id_param
    encoding = encoding_errors_param
    if media == "application/json":
        raw = await _small_body(request)
        try:
            body = CreateImportRequest.model_validate_json(raw)
        except ValueError as exc:
            raise InvalidArgument(
                f"invalid JSON body: {str(exc).splitlines()[0]}; send"
                ' {"source_uri": "https://..."} or upload a file',
                reason="INVALID_REQUEST",
            ) from None
        op = await svc.create_import(
            tenant=caller.tenant,
            dataset_id=did,
            source_uri=body.source_uri,
            format=fmt or body.format,
            encoding_errors=encoding or body.encoding_errors,
            request_id=body.request_id or rid,
            correlation_id=correlation,
        )
        return operation_response(op)
    if media != "multipart/form-data" and media not in _RAW_TYPES:
        raise InvalidArgument(
            f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data with a"
            " 'file' part, a raw text/csv / application/x-ndjson / application/gzip body, or"
            " JSON with source_uri",
            reason="UNSUPPORTED_MEDIA_TYPE",
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > svc.store.max_bytes + 64 * 1024:
        return _too_large(
            FileTooLarge(
                f"the import file is larger than the {svc.store.max_bytes}-byte limit"
                " (CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES); split it or compress it with gzip",
                metadata={"max_bytes": str(svc.store.max_bytes)},
            )
        )
    writer = svc.store.writer()
    sniffer = _TextSniffer(writer.write)
    file_names: list[str] = []  # the upload's name, shown in Flower
    try:
        if media == "multipart/form-data":
            fields, got_file = await imports_upload.read_multipart(
                request.stream(),
                imports_upload.boundary_of(content_type),
                sniffer.write,
                on_filename=file_names.append,
            )
            if not got_file:
                raise InvalidArgument(
                    "the multipart body has no 'file' part; add the file as part 'file'",
                    reason="NO_FILE",
                )
            fmt = fmt or _form_format(fields.get("format"))
            encoding = encoding or _form_encoding_errors(fields.get("encoding_errors"))
            rid = rid or fields.get("request_id") or None
        else:
            async for block in request.stream():
                sniffer.write(block)
            fmt = fmt or _RAW_TYPES[media]  # type: ignore[assignment]
        sniffer.finish()
        if writer.size == 0:
            raise InvalidArgument(
                "the file is empty; send a CSV with a header or JSONL", reason="EMPTY_FILE"
            )
        stored = await writer.commit()
    except FileTooLarge as exc:
        return _too_large(exc)
    except BaseException:
        writer.abort()
        raise
    op = await svc.create_import(
        tenant=caller.tenant,
        dataset_id=did,
        stored=stored,
        format=fmt or "auto",
        encoding_errors=encoding or "fail",
        request_id=rid,
        correlation_id=correlation,
        file_name=file_names[0] if file_names else None,
    )
    return operation_response(op)


# Leading bytes of files people upload by mistake, and what to tell them.
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (an .xlsx or .docx is one): export the sheet as CSV"),
    (b"\xd0\xcf\x11\xe0", "an old Office file (.xls): export the sheet as CSV"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x7fELF", "a program"),
    (b"PAR1", "a Parquet file: export it as CSV or JSONL"),
)
_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 4096


class _TextSniffer:
    """Passes an upload's bytes on, refusing at once (400) a file that is not text.

    A binary file would be accepted, stored and fail later in the worker; its first bytes
    tell: a known signature, or a NUL byte (no CSV or JSONL in UTF-8 has one). A gzip file
    is let through: it is checked when decompressed.
    """

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self._write = write
        self._head = b""
        self._checked = False

    def write(self, block: bytes) -> Any:
        if not self._checked:
            self._head += block[: _SNIFF_BYTES - len(self._head)]
            if len(self._head) >= _SNIFF_BYTES:
                self.finish()
        return self._write(block)

    def finish(self) -> None:
        if self._checked:
            return
        self._checked = True
        head = self._head
        if not head or head.startswith(_GZIP_MAGIC):
            return
        what = next((label for magic, label in _BINARY_MAGIC if head.startswith(magic)), None)
        if what is None and b"\x00" in head:
            what = (
                "UTF-16 text: save it as UTF-8"
                if head[:2] in (b"\xff\xfe", b"\xfe\xff")
                else "binary data (it has NUL bytes)"
            )
        if what is not None:
            raise InvalidArgument(
                f"the file is not CSV or JSONL text: it looks like {what}; upload a UTF-8 CSV"
                " (with a header row) or JSONL file, optionally gzipped",
                reason="NOT_TEXT",
            )


def _form_format(value: str | None) -> Literal["auto", "csv", "jsonl"]:
    if value in (None, "", "auto"):
        return "auto"
    if value in ("csv", "jsonl"):
        return value  # type: ignore[return-value]
    raise InvalidArgument(
        f"format {value!r} is unknown; use csv, jsonl or auto", reason="INVALID_FORMAT"
    )


def _form_encoding_errors(value: str | None) -> Literal["fail", "replace", "reject_row"]:
    if value in (None, "", "fail"):
        return "fail"
    if value in ("replace", "reject_row"):
        return value  # type: ignore[return-value]
    raise InvalidArgument(
        f"encoding_errors {value!r} is unknown; use fail, replace or reject_row",
        metadata={"field": "encoding_errors"},
    )


async def _small_body(request: Request, limit: int = 64 * 1024) -> bytes:
    data = b""
    async for block in request.stream():
        data += block
        if len(data) > limit:
            raise InvalidArgument(
                f"the JSON body is larger than {limit} bytes; to send a file use multipart/form-data",
                reason="BODY_TOO_LARGE",
            )
    return data


@router.get("/{dataset_id}/imports", response_model=ListImportsResponse, summary="List imports")
async def list_imports(
    dataset_id: str,
    svc: ImportsDep,
    caller: Reader,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> Any:
    """Lists a dataset's imports in creation order (AIP-158 paging)."""
    did = _id(dataset_id, "dataset id")
    fingerprint = pagination.query_fingerprint("imports", caller.tenant, str(did))
    after = pagination.decode_after(page_token, query_fingerprint=fingerprint)
    items, last = await svc.list_imports(
        caller.tenant,
        did,
        page_size=pagination.clamp_page_size(page_size),
        after_id=uuid.UUID(after) if after else None,
    )
    return JSONResponse(
        {
            "imports": [import_out(i) for i in items],
            "next_page_token": pagination.next_page_token(last, query_fingerprint=fingerprint),
        }
    )


@router.get("/{dataset_id}/imports/{import_id}", response_model=ImportOut, summary="Get an import")
async def get_import(dataset_id: str, import_id: str, svc: ImportsDep, caller: Reader) -> Any:
    """Returns an import: state, counts and where its row errors are."""
    item = await svc.get_import(
        caller.tenant, _id(dataset_id, "dataset id"), _id(import_id, "import id")
    )
    return JSONResponse(import_out(item))


@router.get(
    "/{dataset_id}/imports/{import_id}/errors",
    response_model=RowErrorsResponse,
    summary="Download an import's row errors",
    responses={
        200: {
            "description": "CSV by default (every error); JSON with `Accept: application/json`.",
            "content": {
                "text/csv": {
                    "example": 'line,field,reason,raw_value\n17,amount,expected a number like 12.5,"12,5"\n'
                }
            },
        }
    },
)
async def get_import_errors(
    dataset_id: str, import_id: str, request: Request, svc: ImportsDep, caller: Reader
) -> Any:
    """Returns the rejected rows' problems (line, field, reason, raw value) in line order: a
    CSV download by default, or JSON (first `max_errors_listed`) with `Accept: application/json`.
    """
    did, iid = _id(dataset_id, "dataset id"), _id(import_id, "import id")
    await svc.get_import(caller.tenant, did, iid)
    if "application/json" in request.headers.get("accept", ""):
        limit = request.app.state.settings.imports.max_errors_listed
        errors = []
        async with svc.row_errors(caller.tenant, did, iid, limit=limit + 1) as rows:
            async for line, field, reason, raw in rows:
                errors.append({"line": line, "field": field, "reason": reason, "raw_value": raw})
        return JSONResponse({"errors": errors[:limit], "truncated": len(errors) > limit})

    # The database (replica, or the primary when the replica is down or behind) is chosen and
    # the query started before the 200 is sent: a failure then is an error response, never a
    # 200 whose body is cut off.
    stack = contextlib.AsyncExitStack()
    try:
        rows = await stack.enter_async_context(svc.row_errors(caller.tenant, did, iid))
        first = await anext(rows, None)
    except BaseException:
        await stack.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["line", "field", "reason", "raw_value"])
            if first is not None:
                writer.writerow(first)
            async for row in rows:
                writer.writerow(row)
                if out.tell() > 64 * 1024:
                    yield out.getvalue().encode()
                    out.seek(0)
                    out.truncate()
            yield out.getvalue().encode()
        finally:
            await stack.aclose()

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="import-{iid}-errors.csv"'},
        # Also closes the transaction when the body was never iterated (client gone).
        background=BackgroundTask(stack.aclose),
    )


# ---- records -----------------------------------------------------------------------------

_SPEC_TYPES: dict[str, filtering.FieldType] = {
    "string": "string",
    "integer": "int",
    "number": "number",
    "boolean": "bool",
    "date": "date",
    "timestamp": "timestamp",
    "enum": "enum",
}


def filter_fields(dataset: Dataset) -> dict[str, filtering.FieldSpec]:
    """Returns the AIP-160 filterable fields of a dataset: its declared fields, typed.

    Args:
        dataset: The dataset.

    Returns:
        Field specs by name.
    """
    return {
        f.name: filtering.FieldSpec(_SPEC_TYPES[f.type], tuple(f.values)) for f in dataset.fields
    }


@router.get("/{dataset_id}/records", response_model=ListRecordsResponse, summary="List records")
async def list_records(
    dataset_id: str,
    svc: ImportsDep,
    caller: Reader,
    filter_: Annotated[
        str | None,
        Query(
            alias="filter",
            max_length=2000,
            description='AIP-160 filter on declared fields, e.g. `amount > 100 AND country = "DE"`.',
        ),
    ] = None,
    page_size: PageSize = None,
    page_token: PageToken = None,
) -> Any:
    """Lists a dataset's records in key order, filtered on its declared fields (read from the
    replica).
    """
    dataset = await svc.get_dataset(caller.tenant, _id(dataset_id, "dataset id"))
    conditions = filtering.parse_filter(filter_, filter_fields(dataset))
    fingerprint = pagination.query_fingerprint("records", caller.tenant, str(dataset.id), filter_)
    after = pagination.decode_after(page_token, query_fingerprint=fingerprint)
    rows, last = await svc.list_records(
        dataset, conditions, page_size=pagination.clamp_page_size(page_size), after_key=after
    )
    return JSONResponse(
        {
            "records": [record_out(dataset, r) for r in rows],
            "next_page_token": pagination.next_page_token(last, query_fingerprint=fingerprint),
        }
    )


@router.get("/{dataset_id}/records/{key:path}", response_model=RecordOut, summary="Get a record")
async def get_record(dataset_id: str, key: str, svc: ImportsDep, caller: Reader) -> Any:
    """Returns the record with this key (read from the primary: a record a finished import
    wrote is there, whatever the replica's lag).
    """
    dataset = await svc.get_dataset(caller.tenant, _id(dataset_id, "dataset id"))
    return JSONResponse(record_out(dataset, await svc.get_record(dataset, key)))
