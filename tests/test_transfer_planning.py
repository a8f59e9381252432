"""Planning streams batches (committed, then published, while the walk goes on), and the
driver recovers a batch whose worker died.

The run is driven in this process against two real lab smbd instances and a real SQLite
job database; the publisher handed to the planner is a plain callback that, for every
batch it is given, looks at the database from a fresh session (is the batch and its file
list already committed? how many file records exist so far?) and then runs the real
``copy_batch`` task body on it, as a worker would. A second delivery of the same batch
is refused by the lease claim and changes nothing. In the second test every batch's first
delivery is claimed by a worker that then vanishes; the driver's reaper publishes it again
once the lease expires, and the run still ends clean. A run cancelled while it is driven
stops dispatching, its remaining batches are skipped by workers, and it cannot be driven
again. A large file that grows while it is being copied is recorded failed and is copied
by the next run. A worker that cannot decrypt the stored credential fails its batches at
once with that reason, and the run still ends. A destination share that does not exist
(the destination has no management access to create it) is reported and left out while
the others are transferred. Overlapping walks leave Python's collector thresholds as
they found them.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import gc
import os
import threading
import time

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from common.db import session_scope
from common.leases import claim_batch
from common.models import Batch, BatchState, FileRecord, Server, ServerRole
from common.settings import get_settings, reset_settings_cache
from common.smb.connection import close_pool
from common.transfer_options import TransferOptions
from orchestrator.database import upgrade_to_head
from orchestrator.leases import BatchDispatch
from orchestrator.transfer import planning
from orchestrator.transfer.reconcile import reconcile
from proxy_worker.copy_tasks import copy_batch
from tests.lab.smbio import LabTree
from tests.transfer_support import record_states, register_servers, unexplained_differences, use_settings

FILES = 60
BATCH_FILES = 5


def test_batches_are_published_after_commit_while_the_walk_goes_on(samba_factory, tmp_path, monkeypatch):
    """Batches start small and double up to the configured maximum (here 2, 4, then 5)."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"),
                 SMS_BATCH_MAX_FILES=str(BATCH_FILES))
    monkeypatch.setattr(planning, "FIRST_BATCH_FILES", 2)
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src"), samba_factory("dst")
    with LabTree(src.address, "data") as lab:
        for folder in range(6):
            lab.mkdir(f"f{folder}")
            for number in range(FILES // 6):
                lab.write_file(f"f{folder}\\n{number}.txt", f"{folder}/{number}\n".encode())
    register_servers("plan", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing = planning.create_pairing(session, servers["src"], servers["dst"], ["data"])
        run_id = planning.create_run(session, pairing, TransferOptions(checksum="fast", retries=0)).id

    seen: list[tuple[int, bool, int, int]] = []
    outcomes: list[str] = []

    def publish(dispatch: BatchDispatch) -> None:
        assert dispatch.task_name == planning.COPY_TASK
        assert dispatch.queue == get_settings().destination_queue("dst")
        with session_scope() as session:
            batch = session.get(Batch, dispatch.batch_id)
            records_of_batch = session.scalar(select(func.count()).select_from(FileRecord).where(
                FileRecord.batch_id == dispatch.batch_id, FileRecord.is_dir.is_(False)))
            files_so_far = session.scalar(select(func.count()).select_from(FileRecord).where(
                FileRecord.run_id == run_id, FileRecord.is_dir.is_(False)))
            seen.append((dispatch.batch_id, batch is not None and batch.state == BatchState.QUEUED,
                         records_of_batch, files_so_far))
        outcomes.append(copy_batch.run(dispatch.batch_id))

    try:
        state = planning.execute_run(run_id, publish, poll_interval=0.1)
    finally:
        close_pool()
    assert state.value == "succeeded"
    assert all(outcome == "done" for outcome in outcomes)
    file_batches = [entry for entry in seen if entry[2]]
    sizes = [count for _id, _committed, count, _total in file_batches]
    assert sizes[:3] == [2, 4, BATCH_FILES] and max(sizes) == BATCH_FILES and sum(sizes) == FILES
    # Every batch was committed, with its whole file list, before it was published ...
    assert all(committed for _id, committed, _count, _total in seen)
    # ... and the first was published (and copied) when the walk had recorded only it.
    assert file_batches[0][3] == 2 < FILES
    with session_scope() as session:
        assert reconcile(session, run_id).clean

    # A second delivery of a finished batch is refused and changes nothing.
    before = record_states(run_id)
    assert copy_batch.run(seen[0][0]) == "not claimed"
    assert record_states(run_id) == before
    files = {f"f{folder}\\n{number}.txt" for folder in range(6) for number in range(FILES // 6)}
    assert unexplained_differences(src, dst, ignore_access_times_of=files) == []


def test_a_batch_whose_worker_died_is_dispatched_again_and_the_run_ends(samba_factory, tmp_path,
                                                                         monkeypatch):
    """The first delivery of every batch is claimed by a worker that then vanishes (a real
    claim under an owner that never renews); once the lease expires the driver's reaper
    publishes the batch again, and the second delivery copies it."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_BATCH_MAX_FILES="4",
                 SMS_BATCH_LEASE_SECONDS="5")
    monkeypatch.setattr(planning, "REAP_INTERVAL", 1.0)
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src"), samba_factory("dst")
    with LabTree(src.address, "data") as lab:
        for number in range(6):
            lab.write_file(f"file{number}.txt", f"{number}\n".encode())
    register_servers("reap", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing = planning.create_pairing(session, servers["src"], servers["dst"], ["data"])
        run_id = planning.create_run(session, pairing, TransferOptions(retries=0)).id

    deliveries: dict[int, int] = {}
    outcomes: list[str] = []

    def publish(dispatch: BatchDispatch) -> None:
        deliveries[dispatch.batch_id] = deliveries.get(dispatch.batch_id, 0) + 1
        if deliveries[dispatch.batch_id] == 1:
            with session_scope() as session:
                assert claim_batch(session, dispatch.batch_id, "vanished-worker:1")
            return
        outcomes.append(copy_batch.run(dispatch.batch_id))

    try:
        state = planning.execute_run(run_id, publish, poll_interval=0.2)
    finally:
        close_pool()
    assert state.value == "succeeded"
    assert sorted(deliveries.values()) == [2, 2, 2]  # two file batches and the directories
    assert outcomes == ["done", "done", "done"]
    with session_scope() as session:
        attempts = set(session.scalars(select(Batch.attempt).where(Batch.run_id == run_id)))
        assert attempts == {2}
        assert reconcile(session, run_id).clean


def test_a_cancelled_run_stops_and_its_batches_are_skipped(samba_factory, tmp_path, monkeypatch):
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_BATCH_MAX_FILES="2")
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src"), samba_factory("dst")
    with LabTree(src.address, "data") as lab:
        for number in range(6):
            lab.write_file(f"file{number}.txt", f"{number}\n".encode())
    register_servers("cancel", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing = planning.create_pairing(session, servers["src"], servers["dst"], ["data"])
        run_id = planning.create_run(session, pairing, TransferOptions(retries=0)).id
    outcomes: list[str] = []

    def publish(dispatch: BatchDispatch) -> None:
        if not outcomes:
            with session_scope() as session:
                assert planning.cancel_run(session, run_id)
        outcomes.append(copy_batch.run(dispatch.batch_id))

    try:
        assert planning.execute_run(run_id, publish, poll_interval=0.1).value == "cancelled"
    finally:
        close_pool()
    assert outcomes == ["failed"]  # the walk stopped at the next batch
    assert set(record_states(run_id).values()) >= {("failed", "RUN_CANCELLED")}
    with session_scope() as session:
        assert not reconcile(session, run_id).clean
        assert not planning.cancel_run(session, run_id)  # already ended
    with pytest.raises(planning.TransferError, match="cancelled"):
        planning.execute_run(run_id, publish)


def test_a_file_changed_while_it_is_copied_fails_and_the_next_run_copies_it(samba_factory, tmp_path,
                                                                            monkeypatch):
    """A large file is appended to (on the source's disk) as soon as its temporary copy
    appears on the destination: the batch records it failed as SOURCE_CHANGED and the run
    completes with errors; the next run copies it whole."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"))
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src"), samba_factory("dst")
    big = src.shares["data"].path / "growing.bin"
    big.write_bytes(os.urandom(48 << 20))
    register_servers("grow", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing = planning.create_pairing(session, servers["src"], servers["dst"], ["data"])
        first = planning.create_run(session, pairing, TransferOptions(retries=0)).id
    destination_dir = dst.shares["data"].path
    appended = threading.Event()

    def append_once_copying() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(name.endswith(".partial") for name in os.listdir(destination_dir)):
                with open(big, "ab") as handle:
                    handle.write(b"appended while being copied")
                appended.set()
                return
            time.sleep(0.002)

    def publish(dispatch: BatchDispatch) -> None:
        watcher = threading.Thread(target=append_once_copying)
        watch = not appended.is_set()  # the first batch holds the file
        if watch:
            watcher.start()
        copy_batch.run(dispatch.batch_id)
        if watch:
            watcher.join()

    try:
        assert planning.execute_run(first, publish, poll_interval=0.1).value == "completed_with_errors"
        assert appended.is_set()
        assert record_states(first)["growing.bin"] == ("failed", "SOURCE_CHANGED")
        with session_scope() as session:
            second = planning.create_run(session, pairing, TransferOptions(retries=0)).id
        assert planning.execute_run(second, lambda d: copy_batch.run(d.batch_id),
                                    poll_interval=0.1).value == "succeeded"
    finally:
        close_pool()
    assert record_states(second)["growing.bin"][0] == "copied"
    assert (destination_dir / "growing.bin").read_bytes() == big.read_bytes()


def test_a_worker_with_the_wrong_key_fails_its_batches_and_the_run_ends(samba_factory, tmp_path,
                                                                        monkeypatch):
    """A worker whose SMS_SECRET_KEY differs from the orchestrator's cannot decrypt the
    stored credential: it records every file failed with that reason at once, instead of
    leaving the batch to expire and come back again and again."""
    env = use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"))
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src"), samba_factory("dst")
    with LabTree(src.address, "data") as lab:
        lab.write_file("one.txt", b"1\n")
    register_servers("key", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing = planning.create_pairing(session, servers["src"], servers["dst"], ["data"])
        run_id = planning.create_run(session, pairing, TransferOptions(retries=0)).id
    outcomes: list[str] = []

    def publish(dispatch: BatchDispatch) -> None:
        monkeypatch.setenv("SMS_SECRET_KEY", Fernet.generate_key().decode())
        reset_settings_cache()
        try:
            outcomes.append(copy_batch.run(dispatch.batch_id))
        finally:
            monkeypatch.setenv("SMS_SECRET_KEY", env["SMS_SECRET_KEY"])
            reset_settings_cache()

    try:
        # Nothing reached the destination: the run failed (not merely "with errors").
        assert planning.execute_run(run_id, publish, poll_interval=0.1).value == "failed"
    finally:
        close_pool()
    assert outcomes == ["failed", "failed"]  # the file batch and the directory batch
    assert set(record_states(run_id).values()) == {("failed", "CREDENTIAL_UNREADABLE")}


def test_directory_waves_keep_every_directory_after_its_children():
    """Narrow levels merge into one batch, a wider level (even a few dozen folders)
    becomes parallel batches, and no wave holds a directory shallower than one of a later
    wave."""
    levels = [(5, [1]), (4, [2]), (3, list(range(100, 1100))), (2, [3, 4]), (1, [5]), (-1, [6])]
    waves = planning.directory_waves(levels)
    assert waves[0] == [[1, 2]]
    assert len(waves[1]) == planning.DIRECTORY_PARALLELISM
    assert sorted(sum(waves[1], [])) == list(range(100, 1100))
    assert waves[2:] == [[[3, 4, 5]], [[6]]]  # the share root last, on its own
    # The slow-link case: 20 folders under the root are spread over several batches.
    waves = planning.directory_waves([(0, list(range(20))), (-1, [99])])
    assert len(waves) == 2 and len(waves[0]) >= 4 and sorted(sum(waves[0], [])) == list(range(20))
    assert waves[1] == [[99]]
    assert planning.directory_waves([(level, [level + 10]) for level in range(40, -2, -1)]) == \
        [[[level + 10 for level in range(40, -1, -1)]], [[9]]]


def test_a_destination_share_that_does_not_exist_is_reported_and_the_others_are_transferred(
        samba_factory, tmp_path, monkeypatch):
    """A destination without management access must hold the shares already: one it lacks
    is left out with an error event naming it (the run completes with errors and does not
    reconcile clean), the share it has is transferred, on the first run and on a re-run."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"))
    upgrade_to_head(get_settings().database_url)
    src, dst = samba_factory("src", shares=("data", "docs")), samba_factory("dst")
    for share in ("data", "docs"):
        with LabTree(src.address, share) as lab:
            lab.mkdir("folder")
            lab.write_file("folder\\file.txt", f"{share}\n".encode())
    register_servers("missing", {"src": (src, ServerRole.SOURCE), "dst": (dst, ServerRole.DESTINATION)})
    with session_scope() as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        pairing = planning.create_pairing(session, servers["src"], servers["dst"], ["data", "docs"])
    runs = []
    try:
        for _ in range(2):
            with session_scope() as session:
                run_id = planning.create_run(session, pairing, TransferOptions(retries=0)).id
            runs.append(run_id)
            assert planning.execute_run(run_id, lambda d: copy_batch.run(d.batch_id),
                                        poll_interval=0.1).value == "completed_with_errors"
            # The copy read the file (its last access moved); a re-run lists both trees again.
            assert unexplained_differences(src, dst, ignore_access_times_of={"folder\\file.txt"},
                                           ignore_all_access_times=len(runs) > 1) == []
    finally:
        close_pool()
    for run_id in runs:
        with session_scope() as session:
            run = session.get(planning.TransferRun, run_id)
            errors = planning.run_events(session, run_id, run.job_id, (planning.EVENT_SHARE_ERROR,))
            assert [(event.detail["share"], "cannot be opened" in event.message) for event in errors] \
                == [("docs", True)]
            report = reconcile(session, run_id)
        assert not report.clean
        assert {share.share: (share.clean, share.share_errors, share.inventoried)
                for share in report.shares} == {"data": (True, 0, 3), "docs": (False, 1, 0)}
    assert record_states(runs[0]) == {"": ("copied", None), "folder": ("copied", None),
                                      "folder\\file.txt": ("copied", None)}
    assert set(record_states(runs[1]).values()) == {("skipped", None)}


def test_overlapping_walks_put_the_collectors_thresholds_back_once_the_last_ends():
    """Runs driven side by side overlap their walks: the process's collector thresholds stay
    raised while any walk goes on and are what they were before once the last one ends,
    whichever ends first."""
    before = gc.get_threshold()
    first, second = planning._fewer_collections(), planning._fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == (planning.WALK_GC_THRESHOLD, *before[1:])
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
