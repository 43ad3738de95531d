"""Bulk refunds from a file (CSV or JSON lines): validate every row, store it all or nothing, publish.

    from worker.batch import enqueue_batch
    result = enqueue_batch("refunds.csv", name="recall 2026-11")

Two streaming passes over the file, so memory stays bounded whatever its size (1M rows: the
only per-row state is a 64-bit hash per key and per invoice, for duplicate detection):

1. validation: every row is parsed and validated (`parse_request` + `validate`), duplicate keys
   and invoices inside the file are found, and keys that already exist in the database with
   another payload are reported. Each bad row is reported with its row number, field and rule.
   By default nothing is stored when any row is bad; `skip_invalid` stores the valid ones and
   writes the rejects to a file. The database is read in blocks, one short connection each.
2. store, all or nothing: the rows are staged, `batch_chunk` at a time, in a TEMPORARY table of
   the import's own connection (invisible to everyone else, gone with the connection, even
   after a SIGKILL), then one write transaction inserts the batch row, every refund and every
   first event with `INSERT ... SELECT` and commits. Nothing of the batch is visible before that
   commit. A conflict found there (another producer stored a key or an invoice of this file
   meanwhile) refuses the whole file with `BatchConflict`, naming each row and key.
3. publish, only after the commit: the submit work as fan-out messages of `publish_chunk` ids
   (one message per row is too slow: ~1k/s). A crash before it is covered by next_action_at
   (set at the commit, database clock, + publish_grace): the dispatcher sends them then.

Re-submitting the same file (same SHA-256) returns the existing batch. A batch left half-stored
by a refundq from before atomic imports is completed (rows already stored are skipped).
Counters move with every transition (store.transition -> store.count_batch_move).
"""

from worker.batch.export import export, export_rows, neutralise_cell, summary
from worker.batch.importer import (
    BatchConflict,
    BatchResult,
    enqueue_batch,
    fan_out,
    get_batch,
    publish_submits,
)
from worker.batch.retry import RetryResult, cancel, retry, retry_key
from worker.batch.rows import BatchFileError, RowError, read_rows
from worker.batch.validate import BatchInvalid

__all__ = [
    "BatchConflict",
    "BatchFileError",
    "BatchInvalid",
    "BatchResult",
    "RetryResult",
    "RowError",
    "cancel",
    "enqueue_batch",
    "export",
    "export_rows",
    "fan_out",
    "get_batch",
    "neutralise_cell",
    "publish_submits",
    "read_rows",
    "retry",
    "retry_key",
    "summary",
]
