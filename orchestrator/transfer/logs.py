"""Per-run transfer logs as CSV: every entry, and the errors alone.

Each run keeps its own file records (SMS overwrites the previous run's), so any run's
logs can be exported at any time. Rows are streamed from the database in path order and
written as they come, so a run of millions of files never sits in memory.

Columns: share, path, type, size, attributes (hex and letters), creation / last-write /
last-access times (ISO 8601 UTC to 100 ns, plus the raw FILETIME), owner (the source
entry's owner SID, read by the proxy worker from its security descriptor), hash
algorithm, source and destination checksums, result, error code (NTSTATUS name) and
error message.

This module only reads the database and writes the CSV files it is asked for.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from itertools import islice
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import FileState, Share, run_records

COLUMNS = ("share", "path", "type", "size", "attributes", "attribute_letters",
           "creation_time", "last_write_time", "last_access_time",
           "creation_filetime", "last_write_filetime", "last_access_filetime", "owner",
           "hash_algorithm", "source_checksum", "destination_checksum", "result",
           "error_code", "error_message")
ERROR_STATES = (FileState.FAILED, FileState.MISMATCH, FileState.SCANNED)
_RESULT_NAMES = {FileState.SCANNED: "missing", FileState.SKIPPED: "unchanged"}
_LETTERS = ((0x1, "R"), (0x2, "H"), (0x4, "S"), (0x10, "D"), (0x20, "A"), (0x80, "N"),
            (0x100, "T"), (0x200, "P"), (0x400, "L"), (0x800, "C"), (0x1000, "O"),
            (0x2000, "I"), (0x4000, "E"))
_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)


def filetime_iso(value: int | None) -> str:
    """A FILETIME as ISO 8601 UTC with all seven fractional digits ('' for none)."""
    if not value:
        return ""
    seconds, ticks = divmod(value, 10_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ticks:07d}Z"


def attribute_letters(attributes: int) -> str:
    """Attributes as letters in the style of attrib / robocopy (R H S D A N T P L C O I E)."""
    return "".join(letter for bit, letter in _LETTERS if attributes & bit)


def _rows(session: Session, run_id: int, errors_only: bool) -> Iterator[list]:
    records = run_records(run_id)
    query = (select(Share.name.label("share_name"), records).join(Share, Share.id == records.c.share_id)
             .order_by(Share.name, records.c.relative_path))
    if errors_only:
        query = query.where(records.c.state.in_(ERROR_STATES))
    for record in session.execute(query.execution_options(yield_per=5000)):
        yield [
            record.share_name, record.relative_path or "\\", "directory" if record.is_dir else "file",
            record.size, f"0x{record.attributes:08X}", attribute_letters(record.attributes),
            filetime_iso(record.creation_time), filetime_iso(record.last_write_time),
            filetime_iso(record.last_access_time), record.creation_time or "",
            record.last_write_time or "", record.last_access_time or "", record.owner or "",
            record.hash_algorithm or "", record.source_hash or "", record.destination_hash or "",
            _RESULT_NAMES.get(record.state, record.state.value),
            record.error_code or ("NOT_REPORTED" if record.state == FileState.SCANNED else ""),
            record.error_message or "",
        ]


def write_csv(session: Session, run_id: int, out: TextIO, *, errors_only: bool = False) -> int:
    """Write run ``run_id``'s log (or only its errors) as CSV to ``out``; returns the rows."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for row in _rows(session, run_id, errors_only):
        writer.writerow(row)
        count += 1
    return count


def error_entries(session: Session, run_id: int, limit: int) -> list[dict[str, object]]:
    """The first ``limit`` rows of run ``run_id``'s error log, as dicts keyed by ``COLUMNS``."""
    return [dict(zip(COLUMNS, row)) for row in islice(_rows(session, run_id, True), limit)]


def export_run_logs(session: Session, run_id: int, directory: Path) -> tuple[Path, Path]:
    """Write ``transfer-run-N.csv`` and ``transfer-run-N-errors.csv`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    full = directory / f"transfer-run-{run_id}.csv"
    errors = directory / f"transfer-run-{run_id}-errors.csv"
    with open(full, "w", newline="", encoding="utf-8") as out:
        write_csv(session, run_id, out)
    with open(errors, "w", newline="", encoding="utf-8") as out:
        write_csv(session, run_id, out, errors_only=True)
    return full, errors
