"""Imports domain settings (``CONVEYOR_IMPORTS__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImportsSettings(BaseModel):
    """Imports domain settings (``CONVEYOR_IMPORTS__*``)."""

    model_config = ConfigDict(extra="forbid")

    storage_dir: str = Field(
        default="",
        max_length=4096,
        description=(
            "Directory holding uploaded and fetched import files; empty means"
            " `<data_dir>/imports`. API and workers must see the same directory"
            " (a shared volume in docker-compose)."
        ),
    )
    max_upload_bytes: int = Field(
        default=1024**3,
        ge=1,
        le=1024**4,
        description="Largest import file accepted (upload, fetched source, or a gzip file once"
        " decompressed); the smaller of this and CONVEYOR_SECURITY__MAX_UPLOAD_BYTES applies"
        " (413 past it).",
    )
    chunk_rows: int = Field(
        default=50_000,
        ge=1,
        le=1_000_000,
        description="Rows per chunk task of the import fan-out.",
    )
    max_cell_bytes: int = Field(
        default=64 * 1024,
        ge=1,
        le=10 * 1024 * 1024,
        description=(
            "Largest value of one cell (CSV) or field (JSONL), in UTF-8 bytes; a row with a"
            " larger one is rejected as a row error (listed in the errors download), the"
            " import goes on."
        ),
    )
    max_row_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        le=10 * 1024 * 1024,
        description=(
            "Largest row (CSV: its cells and separators; JSONL: the line), in bytes; a larger"
            " row is a row error. Lines over 10 MiB still fail the file."
        ),
    )
    allow_private_sources: bool = Field(
        default=False,
        description="Let source_uri reach loopback/private addresses (development only).",
    )
    source_allowlist: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Addresses, networks (CIDR) or host names source_uri may reach even if internal.",
    )
    fetch_timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Timeout of one source_uri fetch."
    )
    max_errors_listed: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Row errors returned by the JSON form of the errors download (CSV has all).",
    )
