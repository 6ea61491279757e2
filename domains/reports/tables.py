"""Tables of the ``reports`` schema."""

from __future__ import annotations

from domains.operations.tables import operations_table
from domains.operations.unit_of_work import DomainTables
from domains.shared.tables import make_metadata, outbox_table

SCHEMA = "reports"
metadata = make_metadata(SCHEMA)
operations = operations_table(metadata)
outbox = outbox_table(metadata)
tables = DomainTables(schema=SCHEMA, metadata=metadata, operations=operations, outbox=outbox)
