"""Imports use cases: datasets (CRUD), imports (create, run, chunks, finalize, cancel), records.

The workflow of one import (operation type ``import``):

1. ``imports.run`` (task id = operation id) claims the operation, fetches ``source_uri`` if
   any, decompresses, and splits the file into chunks recorded in ``import_chunks`` (the DB is
   the truth about what is done). It returns the chunks not yet DONE; the task adapter fans
   them out as a Celery chord whose callback is ``imports.finalize``.
2. ``imports.process_chunk`` validates its rows and COPYs valid rows into the import's
   UNLOGGED staging table (``imports."staged_<hex>"``, created by the split)
   and invalid ones into ``row_errors``, then marks the chunk DONE, all in one transaction under
   the chunk's row lock: a redelivered or duplicate chunk task finds it DONE and does nothing.
3. ``imports.finalize`` checks that every chunk is DONE, then in one transaction fenced by the
   operation's attempt: merges the staged rows into ``records`` (``INSERT ... ON CONFLICT``),
   writes the counts, ends the operation and emits ``imports.ImportCompleted``. Records of an
   import become visible at once, or never.

A file of one chunk (up to ``chunk_rows`` rows; ``ImportsPolicy.inline_single_chunk``) is not
fanned out: ``imports.run`` processes the chunk and finalizes itself, with the same steps and
fencing, which spares a small import two task hops and the chord's counting.

Into a dataset without records (``ImportsPolicy.direct_load``), the split also creates an
import-wide load table shaped like the records table; chunks COPY into it, and finalize swaps it
in for the empty records table when no key repeats (else merges it), in one transaction.

A worker killed mid-import stops the heartbeats; the sweeper re-dispatches ``imports.run``,
which resumes: only chunks not DONE are sent again, and a callback of an older attempt is
ignored. Cancel: chunk tasks see CANCELLING at their next heartbeat, stop, and the staged rows
are deleted; nothing becomes visible.
"""

from __future__ import annotations

from domains.imports.service.base import (
    CHUNK_VALIDATED,
    DOMAIN,
    HEARTBEAT_ROWS,
    RUN_TASK,
    ImportsPolicy,
)
from domains.imports.service.chunks import ChunksPart
from domains.imports.service.datasets import DatasetsPart
from domains.imports.service.endings import EndingsPart
from domains.imports.service.finalize import FinalizePart
from domains.imports.service.imports import ImportsPart
from domains.imports.service.records import RecordsPart
from domains.imports.service.run import RunPart

__all__ = [
    "CHUNK_VALIDATED",
    "DOMAIN",
    "HEARTBEAT_ROWS",
    "RUN_TASK",
    "ImportsPolicy",
    "ImportsService",
]


class ImportsService(
    DatasetsPart, ImportsPart, RecordsPart, RunPart, ChunksPart, FinalizePart, EndingsPart
):
    """Datasets, imports and records of the imports domain."""
