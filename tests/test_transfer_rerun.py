"""Re-runs decide unchanged entries in the planner: nothing changed means no batch at all.

Two real lab smbd instances and a real SQLite (and, for the first test, also a real
PostgreSQL) job database; the run is driven in this
process and every batch the planner publishes is copied by the real ``copy_batch`` task
body, as a worker would (the publisher also notes what it was given). After a first run:

- a re-run with nothing changed publishes no batch, records every file and folder
  ``skipped`` (reconciled as unchanged, the run clean) and leaves both trees as they were;
- a re-run after a file was edited, added, deleted and given an attribute on the source,
  a folder was given an attribute on the source, and a file was deleted and another
  altered on the destination behind the migration's back, dispatches exactly those
  files, deletes the file the source lost, applies folder metadata only where needed,
  and leaves a destination equal to the source byte for byte and field by field
  (tests.lab.compare).

The pipelined walker that planning uses is also checked against ``ShareWalker``: the same
entries, field by field, including a folder too big for one QUERY_DIRECTORY response.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

from dataclasses import replace

import pytest
from sqlalchemy import select

from common.db import session_scope
from common.models import Batch, FileRecord, Server, ServerRole, UnchangedFile, run_records
from common.settings import get_settings
from common.smb.connection import SmbEndpoint, open_tree
from common.smb.fastpath import FastChannel
from common.smb.walk import PipelinedWalker, ShareWalker
from common.transfer_options import TransferOptions
from orchestrator.database import upgrade_to_head
from orchestrator.transfer import planning
from orchestrator.transfer.reconcile import reconcile
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER
from tests.lab.smbio import LabTree
from tests.transfer_support import (
    change_both_sides,
    drive_in_process as _run,
    fill_rerun_tree,
    record_kinds,
    record_states,
    register_servers,
    unexplained_differences,
    use_settings,
)

HIDDEN = 0x2


def _carried(run_id: int) -> dict[str, tuple]:
    """{path: (size, last-write time, attributes, owner, hash algorithm, source hash)}."""
    records = run_records(run_id).c
    with session_scope() as session:
        return {row[0]: tuple(row[1:]) for row in session.execute(select(
            records.relative_path, records.size, records.last_write_time, records.attributes,
            records.owner, records.hash_algorithm, records.source_hash))}


def _referenced_runs(run_id: int) -> dict[str, int]:
    """{path: run whose record it is} of the files run ``run_id`` recorded by reference."""
    with session_scope() as session:
        return dict(session.execute(select(FileRecord.relative_path, FileRecord.run_id).join(
            UnchangedFile, UnchangedFile.record_id == FileRecord.id).where(UnchangedFile.run_id == run_id)).all())


def _own_paths(run_id: int) -> set[str]:
    """Paths of the records run ``run_id`` wrote itself."""
    with session_scope() as session:
        return set(session.scalars(select(FileRecord.relative_path).where(FileRecord.run_id == run_id)))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_rerun_decides_unchanged_entries_in_the_planner(database, samba_factory, tmp_path, monkeypatch, request):
    """On the embedded SQLite and on PostgreSQL (where the references to unchanged files'
    records go by COPY). Tiny chunks, so that unchanged files are recorded in several transactions of the
    recorder thread, folder records are flushed while the walk goes on, and waiting
    entries are looked at often."""
    settings = {"SMS_DATABASE_URL": request.getfixturevalue("fresh_postgres_url")} if database == "postgresql" else {}
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_BATCH_MAX_FILES="7", **settings)
    monkeypatch.setattr(planning, "UNCHANGED_CHUNK", 3)
    monkeypatch.setattr(planning, "DIRECTORY_BATCH_MAX", 2)
    monkeypatch.setattr(planning, "COMPARE_CHECK_EVERY", 2)
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src"), samba_factory("dst")
    fill_rerun_tree(src.address)
    register_servers("rerun", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing_id = planning.create_pairing(session, servers["src"], servers["dst"], ["data"]).id
    options = TransferOptions(retries=0)

    first, _batches = _run(pairing_id, options)
    assert set(state for state, _code in record_states(first).values()) == {"copied"}

    # Nothing changed: no batch at all, every entry recorded unchanged, the run clean.
    second, batches = _run(pairing_id, options)
    assert batches == []
    with session_scope() as session:
        assert session.scalars(select(Batch).where(Batch.run_id == second)).all() == []
        report = reconcile(session, second)
    assert record_states(second) == {path: ("skipped", None) for path in record_states(first)}
    assert _carried(second) == _carried(first)  # owner and hashes of the run that copied them
    # The unchanged files are references to the first run's records, not copies of them;
    # the folders are the second run's own records.
    files = {path for path, is_dir in record_kinds(first).items() if not is_dir}
    assert _referenced_runs(second) == dict.fromkeys(files, first)
    assert _own_paths(second) == set(record_states(first)) - files
    assert report.clean and report.shares[0].unchanged == report.shares[0].inventoried == len(record_states(first))
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []

    # Changes on both sides, and an attribute set on a folder of the source.
    changed_files = change_both_sides(src.address, dst.address)
    with LabTree(src.address, "data") as lab:
        lab.set_basic_info("empty", attributes=HIDDEN | 0x10)
    third, batches = _run(pairing_id, options)
    dispatched = sorted(path for batch in batches for path in batch)
    # The files, then the folders whose metadata must be applied again: those the
    # source changed and those in which something was written or deleted.
    assert dispatched == sorted(changed_files + ["a", "b", "b\\deep", "empty"])
    states = record_states(third)
    assert "b\\f2.txt" not in states
    assert all(states[path] == ("copied", None) for path in dispatched)
    assert all(state == ("skipped", None) for path, state in states.items() if path not in dispatched)
    # A file unchanged twice refers to the record of the run that copied it, never to a reference.
    assert _referenced_runs(third) == dict.fromkeys(files - set(changed_files) - {"b\\f2.txt"}, first)
    with session_scope() as session:
        assert reconcile(session, third).clean
    assert not (dst.shares["data"].path / "b" / "f2.txt").exists()
    assert unexplained_differences(src, dst, ignore_all_access_times=True) == []

    # A verifying run takes as unchanged only files whose record holds a verified hash of its
    # algorithm: none does (no run so far verified), so the planner dispatches every file;
    # the workers re-hash each destination file, find it equal and record the hash. The
    # next verifying run then finds everything unchanged, folders included (no hash).
    verifying = TransferOptions(retries=0, checksum="fast")
    fourth, batches = _run(pairing_id, verifying)
    assert {path for batch in batches for path in batch} >= {
        path for path, is_dir in record_kinds(third).items() if not is_dir}
    with session_scope() as session:
        assert reconcile(session, fourth).clean
    fifth, batches = _run(pairing_id, verifying)
    assert batches == [] and set(record_states(fifth).values()) == {("skipped", None)}


def test_the_pipelined_walk_lists_what_the_share_walker_lists(samba_factory):
    src = samba_factory("walk")
    root = src.shares["data"].path
    (root / "big").mkdir()
    for number in range(4000):  # more than one 64 KiB response, as asked below
        (root / "big" / f"a-long-enough-file-name-{number:05d}.txt").write_bytes(b"x")
    with LabTree(src.address, "data") as lab:
        lab.mkdir("d1")
        lab.mkdir("d1\\d2")
        lab.write_file("d1\\d2\\f.txt", b"f\n")
        lab.write_file("d1\\s.txt:stream", b"s\n")
    endpoint = SmbEndpoint(src.address, "data", MIGRATION_USER, MIGRATION_PASSWORD)
    tree = open_tree(endpoint)
    try:
        expected = {entry.path: entry for entry in ShareWalker(tree)}
        channel = FastChannel.attach(tree.connection, tree.session, tree.tree)
        try:
            walker = PipelinedWalker(channel, max_output=65536)
            found = {entry.path: entry for entry in walker}
            refused = PipelinedWalker(channel, enter=lambda entry: entry.path != "big")
            partial = {entry.path for entry in refused}
        finally:
            channel.release()
    finally:
        tree.close()
    assert walker.errors == [] and walker.directories_listed == 4
    assert set(found) == set(expected) and len(found) == 4005
    # Field by field, but a listing moves folders' last-access times (relatime), and for
    # what was made on disk (no stored creation time) Samba reports the earliest of the
    # other times as the creation time, so that moves too.
    # The pipelined walk's listing (FileDirectoryInformation) carries no file id or EA size.
    def fields(entry):
        made_on_disk = entry.path == "big" or entry.path.startswith("big\\")
        return replace(entry, last_access_time=0, file_id=0, ea_size=0,
                       creation_time=0 if made_on_disk else entry.creation_time)

    assert [path for path in found if fields(found[path]) != fields(expected[path])] == []
    assert partial == {path for path in expected if not path.startswith("big\\")}
