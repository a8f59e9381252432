"""Helpers of the inventory tests: trees written through SMB, their independent listing,
and the ``sms`` command run as a subprocess with exactly the settings a test gives.

The expected side of every comparison is read with ``tests.lab.smbio`` (plain
smbprotocol, never ``common.smb``), so the scan is judged by code it does not share.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from common.db import session_scope
from common.models import FileRecord, FileState, Share
from tests.lab.smbio import LabTree

SMS = Path(sys.executable).with_name("sms")
ROOT = Path(__file__).resolve().parents[1]

READONLY, HIDDEN, SYSTEM, DIRECTORY, ARCHIVE = 0x1, 0x2, 0x4, 0x10, 0x20
# Odd 100 ns FILETIMEs (2011-2021): a scan that rounds them anywhere shows.
TIME_BASE = 129_700_000_000_000_001


@dataclass(frozen=True)
class Expected:
    """One entry as the test wrote it and as the server reports it."""

    is_dir: bool
    size: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    attributes: int


def times_for(index: int) -> tuple[int, int, int]:
    """(creation, last access, last write) FILETIMEs for the index-th entry: all distinct, all odd."""
    base = TIME_BASE + index * 86_400_0000_000 + index * 2 * 1_234_567
    return base, base + 3_600_0000_002, base + 1_800_0000_004


def build_tree(lab: LabTree, files: dict[str, int], directories: list[str],
               attributes: dict[str, int] | None = None, *, start_index: int = 0) -> dict[str, tuple]:
    """Write ``directories`` and ``files`` (path -> size) through SMB, then set each entry's
    times (distinct odd FILETIMEs) and attributes (``attributes``, default ARCHIVE for
    files and none for folders). Folders get their times last, after their content.
    Returns {path: (creation, last access, last write, attributes)} as configured."""
    attributes = attributes or {}
    configured = {}
    for directory in directories:
        lab.mkdir(directory)
    for index, (path, size) in enumerate(sorted(files.items()), start=start_index):
        lab.write_file(path, bytes((index + offset) % 251 for offset in range(size)))
    ordered = sorted(files) + sorted(directories, key=lambda p: -p.count("\\"))
    for index, path in enumerate(ordered, start=start_index):
        creation, access, write = times_for(index)
        is_dir = path in directories
        attrs = attributes.get(path, DIRECTORY if is_dir else ARCHIVE)
        lab.set_basic_info(path, creation=creation, last_access=access, last_write=write,
                           attributes=attrs)
        configured[path] = (creation, access, write, attrs)
    return configured


def list_share(lab: LabTree, root: str = "") -> dict[str, Expected]:
    """Every entry under ``root`` of the share, with times read back through QUERY_INFO."""
    found: dict[str, Expected] = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        for name, attributes, size in lab.listdir(directory):
            path = f"{directory}\\{name}" if directory else name
            creation, access, write, change, attrs = lab.basic_info(path)
            is_dir = bool(attributes & DIRECTORY)
            found[path] = Expected(is_dir, 0 if is_dir else size, creation, access, write, change, attrs)
            if is_dir:
                stack.append(path)
    return found


def sms(env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True,
        timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``sms ARGS`` with ``env`` as its only SMS_* settings; returns the finished process."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}
    environment.update(env)
    result = subprocess.run([str(SMS), *args], env=environment, input=stdin, capture_output=True,
                            text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode not in (0, 1):
        raise AssertionError(f"sms {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def check_scan_records(url: str, share_id: int, address: str,
                       unreadable: frozenset[str] = frozenset()) -> tuple[dict[str, Expected], dict]:
    """Every scan record of share ``data`` against its independent listing, less what lies
    below the ``unreadable`` folders (each of which must be a record failed with
    STATUS_ACCESS_DENIED), and the share's counters; returns the listing and the records."""
    with LabTree(address, "data") as tree:
        actual = {path: entry for path, entry in list_share(tree).items()
                  if not any(path.startswith(folder + "\\") for folder in unreadable)}
    with session_scope(url) as session:
        share = session.get(Share, share_id)
        records = {r.relative_path: r for r in session.scalars(
            select(FileRecord).where(FileRecord.share_id == share_id, FileRecord.run_id.is_(None)))}
        counters = (share.file_count, share.directory_count, share.total_bytes)
        assert share.scanned_at is not None
        session.expunge_all()
    assert set(records) == set(actual) | {""}
    assert records[""].is_dir and records[""].state is FileState.SCANNED
    for path, entry in actual.items():
        record = records[path]
        if path in unreadable:
            assert record.state is FileState.FAILED and record.error_code == "STATUS_ACCESS_DENIED", path
        else:
            assert record.state is FileState.SCANNED and record.error_code is None, path
        assert (record.is_dir, record.size, record.creation_time, record.last_write_time,
                record.change_time, record.attributes) == (
            entry.is_dir, entry.size, entry.creation_time, entry.last_write_time,
            entry.change_time, entry.attributes), path
        if not entry.is_dir:  # listing a folder moves its own access time; files keep theirs
            assert record.last_access_time == entry.last_access_time, path
    files = [e for e in actual.values() if not e.is_dir]
    assert counters == (len(files), sum(1 for e in actual.values() if e.is_dir), sum(e.size for e in files))
    return actual, records
