"""Faults (issue 8): hostile names from a source.

- Unpaired UTF-16 surrogates. NTFS allows them in names; Samba maps such a name to the
  bytes CESU-8 would give it on disk (``\xed\xa0\x80`` for U+D800) and lists it as the
  lone surrogate, so the test creates those bytes on the source's disk. The job database
  stores paths as UTF-8 text, which cannot hold a lone surrogate: such an entry crashed
  the whole run before; now the walk refuses it with UNSUPPORTED_NAME (naming it as an
  ASCII escape), the run ends "completed with errors", nothing of it is written and the
  rest arrives intact. (A name that is not UTF-8 at all, e.g. ``\xff``, is not listed by
  Samba: no SMB client can see or move it; see docs/faults.md.) tests.lab.smbio cannot
  open such a name (smbprotocol encodes paths strictly), so the other folders are
  compared one by one.
- Names that would leave the destination root if joined naively (``..``, absolute paths, a
  drive, a ``:`` stream suffix, a trailing or doubled separator). No real Samba lists such
  a name, so they are put where a broken walker or a tampered job database would put them:
  file records of a batch that a real worker then copies. Each is refused with
  UNSAFE_PATH (common.smb.paths) and nothing is written, inside the share or outside it.
- A path longer than a file record holds (common.models.MAX_PATH_BYTES): refused with
  PATH_TOO_LONG by the inventory scan and by the transfer's walk, on PostgreSQL, while
  everything else is scanned and transferred.
"""

from __future__ import annotations

import os
import random
import string

import pytest
from sqlalchemy import select

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from common.db import bulk_insert_file_records, session_scope
from common.models import PATH_TOO_LONG, Batch, Event, FileRecord, FileState, Share, path_too_long
from common.settings import get_settings
from common.smb.paths import UNSAFE_PATH, UnsafePath, safe_relative_path
from orchestrator.inventory.service import InventoryOptions, run_inventory
from orchestrator.inventory.tasks import run_scans_inline
from orchestrator.leases import dispatch_batch
from orchestrator.transfer import planning
from tests.fault_support import JOB, FaultLab, kill_fault_workers, wait_until  # noqa: F401  (kill_fault_workers: a fixture)
from tests.lab.compare import compare_trees, snapshot_times
from tests.lab.smbio import LabTree

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240), pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")]

SURROGATE_NAMES = [b"lone high \xed\xa0\x80.txt", b"lone low \xed\xb0\x80.txt",
                   b"\xed\xa0\x80\xed\xa0\x81 two highs"]
HOSTILE_PATHS = ["..\\escape.txt", "plain\\..\\..\\escape.txt", "\\absolute.txt", "/absolute.txt",
                 "C:\\drive.txt", "C:drive.txt", "\\\\server\\share\\unc.txt", "plain\\a.txt:evil",
                 "plain\\a.txt::$DATA", "plain\\", "plain\\\\a.txt", ".\\plain\\a.txt", "plain\\a.txt\x00x"]


def test_the_validator_refuses_every_escape_and_keeps_names_exact():
    for path in HOSTILE_PATHS:
        with pytest.raises(UnsafePath):
            safe_relative_path(path)
    assert safe_relative_path("") == ""
    assert safe_relative_path("a/b\\c.txt") == "a\\b\\c.txt"
    assert safe_relative_path("..a\\b..\\...x") == "..a\\b..\\...x"
    assert safe_relative_path("lone \ud800 surrogate") == "lone \ud800 surrogate"
    assert safe_relative_path("A\u030a and \u212b") == "A\u030a and \u212b"


def tree_listing(root) -> set[str]:
    """Every path under ``root`` on the local disk (names as raw bytes, decoded losslessly)."""
    return {os.fsdecode(os.path.relpath(os.path.join(top, name), os.fsencode(root)))
            for top, dirs, files in os.walk(os.fsencode(root)) for name in dirs + files}


def test_hostile_names_from_a_source(samba_factory, worker_factory, tmp_path, monkeypatch):
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch)
    lab.fill(folders=1, files=4)
    with LabTree(lab.src.address, "data") as tree:
        tree.mkdir("plain")
        tree.write_file("plain\\a.txt", b"a plain file\n")
        tree.write_file("escape.txt", b"must never be written outside the share\n")
        tree.mkdir("surrogates")
    for number, name in enumerate(SURROGATE_NAMES):
        with open(os.path.join(os.fsencode(lab.source_path("surrogates")), name), "wb") as out:
            out.write(b"surrogate %d\n" % number)
    with LabTree(lab.src.address, "data") as src:
        times = {folder: snapshot_times(src, folder) for folder in ("plain", "dir0")}
    lab.worker()

    run_id, state = lab.run()
    assert state == "completed_with_errors"
    refused_names = [ascii("surrogates\\" + name.decode("utf-8", "surrogatepass"))
                     for name in SURROGATE_NAMES]
    assert sorted(lab.walk_errors(run_id)) == sorted((name, "UNSUPPORTED_NAME") for name in refused_names)
    assert os.listdir(lab.destination_path("surrogates")) == []
    with LabTree(lab.src.address, "data") as src, LabTree(lab.dst.address, "data") as dst:
        for folder in ("plain", "dir0"):
            assert compare_trees(src, folder, dst, folder, source_times=times[folder]) == []
    assert lab.leftovers() == []

    # Hostile paths in a batch of a new run: each refused, nothing written anywhere.
    outside = lab.destination_path().parent
    before = tree_listing(outside)
    with session_scope() as session:
        pairing = session.get(planning.Pairing, lab.pairing_id)
        run = planning.create_run(session, pairing, planning.TransferOptions(retries=0))
        run.state = planning.RunState.RUNNING
        share_id = session.scalar(select(Share.id).where(Share.name == "data"))
        batch = Batch(run_id=run.id, share_id=share_id, file_count=len(HOSTILE_PATHS))
        session.add(batch)
        session.flush()
        bulk_insert_file_records(session, [
            {"share_id": share_id, "run_id": run.id, "batch_id": batch.id, "relative_path": path,
             "is_dir": False, "size": 1, "creation_time": 0, "last_write_time": 0,
             "last_access_time": 0, "change_time": 0, "attributes": 0x20,
             "state": FileState.SCANNED} for path in HOSTILE_PATHS])
        dispatch_batch(session, batch, planning.default_publisher(), task_name=planning.COPY_TASK,
                       queue=get_settings().destination_queue("dst"))
        run_id, batch_id = run.id, batch.id
    wait_until(lambda: lab.batches(run_id).get(planning.BatchState.DONE), 60, "the hostile batch")
    with session_scope() as session:
        refused = dict(session.execute(select(FileRecord.relative_path, FileRecord.error_code)
                                       .where(FileRecord.batch_id == batch_id)).all())
    assert refused == {path: UNSAFE_PATH for path in HOSTILE_PATHS}
    assert tree_listing(outside) == before
    assert not (outside / "escape.txt").exists() and not (outside.parent / "escape.txt").exists()


def test_a_path_longer_than_a_file_record_holds(samba_factory, worker_factory, tmp_path, monkeypatch,
                                                fresh_postgres_url):
    """A folder chain of random 250-character names passes MAX_PATH_BYTES at its eleventh
    level. On PostgreSQL such a path failed the whole scan batch (btree entries are capped
    at 2,704 bytes); now the scan and the transfer refuse that entry alone, with
    PATH_TOO_LONG, and everything else is scanned and arrives."""
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, SMS_DATABASE_URL=fresh_postgres_url)
    lab.fill(folders=1, files=4)
    rng = random.Random(11)
    chain = ["".join(rng.choice(string.ascii_letters + string.digits) for _ in range(250)) for _ in range(11)]
    deepest = lab.source_path("\\".join(chain).replace("\\", os.sep))
    os.makedirs(deepest)
    (deepest / "inside.txt").write_bytes(b"below the refused folder\n")
    refused = "\\".join(chain)
    assert path_too_long(refused) and not path_too_long("\\".join(chain[:10]))
    # Counted in bytes: 700 four-byte characters are 2,800 bytes, 650 are exactly 2,600.
    assert path_too_long("\U0001F600" * 700) and not path_too_long("\U0001F600" * 650)

    report = run_inventory(JOB, InventoryOptions(), publish=run_scans_inline)
    with session_scope() as session:
        share = session.get(Share, report.scan_share_ids[0])
        assert (share.file_count, share.directory_count, share.scanned_at is not None) == (4, 1 + 10, True)
        stored = set(session.scalars(select(FileRecord.relative_path).where(FileRecord.share_id == share.id)))
        events = [event.detail for event in session.scalars(select(Event).where(
            Event.kind == "inventory.scan.error"))]
    assert refused not in stored and "\\".join(chain[:10]) in stored
    assert [(event["path"], event["status"]) for event in events] == [(refused, PATH_TOO_LONG)]

    with LabTree(lab.src.address, "data") as src:
        times = snapshot_times(src, "dir0")
    lab.worker()
    run_id, state = lab.run()
    assert state == "completed_with_errors"
    assert lab.walk_errors(run_id) == [(refused, PATH_TOO_LONG)]
    assert lab.destination_path("\\".join(chain[:10]).replace("\\", os.sep)).is_dir()
    assert not lab.destination_path(refused.replace("\\", os.sep)).exists()
    with LabTree(lab.src.address, "data") as src, LabTree(lab.dst.address, "data") as dst:
        assert compare_trees(src, "dir0", dst, "dir0", source_times=times) == []
    assert (deepest / "inside.txt").read_bytes() == b"below the refused folder\n"  # the source untouched
