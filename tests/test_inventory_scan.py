"""The file scan fans out by directory across real orchestrator worker processes, over a
real Redis, into a real PostgreSQL; a second run updates the baseline in place.

Two ``sms orchestrator-worker`` subprocesses serve a queue of this test alone. The
share's tree is written through SMB by the test; every stored record (size, raw 100 ns
times, attributes) is compared with an independent listing of the share made with plain
smbprotocol, and the share's counters with the tree. Then files and folders are added,
changed and removed, and the second run must leave exactly the new tree's records.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from common.db import session_scope
from common.models import Event, FileRecord
from common.settings import reset_settings_cache
from orchestrator.database import upgrade_to_head
from orchestrator.inventory.service import InventoryOptions, resume_scans, run_inventory, wait_for_scans
from orchestrator.jobs import add_server, create_job
from orchestrator.worker import wait_for_ready_mark
from tests.inventory_lab import ARCHIVE, DIRECTORY, HIDDEN, READONLY, SMS, build_tree, check_scan_records
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER
from tests.lab.smbio import LabTree

SCAN_TASK = "orchestrator.inventory.scan_directories"

DIRECTORIES = [f"d{i}" for i in range(4)] + [f"d{i}\\s{j}" for i in range(4) for j in range(3)] + [
    "deep", "deep\\a", "deep\\a\\b", "deep\\a\\b\\c", "deep\\a\\b\\c\\d", "empty"]
FILES = {
    **{f"d{i}\\s{j}\\f{k}.bin": (i * 31 + j * 7 + k * 3) % 97 + 1 for i in range(4) for j in range(3)
       for k in range(6)},
    **{f"d{i}\\top{k}.txt": 1000 + i * 10 + k for i in range(4) for k in range(2)},
    "deep\\a\\b\\c\\d\\leaf.dat": 70_000,
    "root.txt": 12,
}
ATTRIBUTES = {"root.txt": READONLY | ARCHIVE, "d1": DIRECTORY | HIDDEN, "d2\\top0.txt": HIDDEN | ARCHIVE}


class OrchestratorWorker:
    """An ``sms orchestrator-worker`` subprocess leading its own process group."""

    def __init__(self, env: dict[str, str], log_path):
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}
        environment.update(env)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(SMS), "orchestrator-worker", "--concurrency", "2"], env=environment,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        if wait_for_ready_mark(self.process, self.log_path, timeout) is not None:
            raise AssertionError(f"orchestrator worker not ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


@pytest.fixture
def production(tmp_path, monkeypatch, redis_url, fresh_postgres_url):
    """PostgreSQL job database at head, Redis broker, a queue of this test's own, and two
    orchestrator worker processes serving it."""
    env = {
        "SMS_STATE_DIR": str(tmp_path / "state"),
        "SMS_DATABASE_URL": fresh_postgres_url,
        "SMS_BROKER_URL": redis_url,
        "SMS_SECRET_KEY": Fernet.generate_key().decode(),
        "SMS_ORCHESTRATOR_QUEUE": f"sms.orchestrator.test-{uuid.uuid4().hex[:10]}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    upgrade_to_head(fresh_postgres_url)
    workers = [OrchestratorWorker(env, tmp_path / f"orchestrator-worker-{n}.log") for n in range(2)]
    try:
        for worker in workers:
            worker.wait_ready()
        yield fresh_postgres_url, workers
    finally:
        for worker in workers:
            worker.stop()
        reset_settings_cache()


def test_scan_fans_out_over_redis_into_postgresql_and_rerun_updates(production, samba_factory):
    url, workers = production
    lab = samba_factory("invscan", shares=("data",))
    with LabTree(lab.address, "data") as tree:
        configured = build_tree(tree, FILES, DIRECTORIES, ATTRIBUTES)
    with session_scope(url) as session:
        job = create_job(session, "scan")
        add_server(session, job, name="nas", kind="smb-only", role="source", address=lab.address,
                   username=MIGRATION_USER, password=MIGRATION_PASSWORD)
        job_id = job.id

    report = run_inventory(job_id, InventoryOptions())
    [server] = report.servers
    assert server.errors == {} and server.shares == ["data"]
    [share_id] = report.scan_share_ids
    assert wait_for_scans([share_id], timeout=180, url=url), [w.log()[-3000:] for w in workers]
    check_scan_records(url, share_id, lab.address)[0]
    with session_scope(url) as session:
        records = {r.relative_path: r for r in session.scalars(
            select(FileRecord).where(FileRecord.share_id == share_id))}
    for path, (creation, access, write, attributes) in configured.items():
        record = records[path]
        assert (record.creation_time, record.last_access_time, record.last_write_time, record.attributes) == (
            creation, access, write, attributes), path
        assert record.size == FILES.get(path, 0)

    # Batches of folders spread over the worker processes (no single giant listing): every
    # folder listed exactly once, by more than one task, on both workers.
    directories = len(DIRECTORIES) + 1
    logs = [w.log() for w in workers]
    done = [log.count(f"Task {SCAN_TASK}[") for log in logs]
    listed = [int(n) for log in logs for n in re.findall(r"succeeded in [^:]*: 'listed (\d+) folders", log)]
    assert sum(listed) == directories and len(listed) > 1, listed
    assert all(count > 0 for count in done), done

    # Change the tree: remove a file and a whole subtree, add a folder and files, rewrite one.
    with LabTree(lab.address, "data") as tree:
        tree.delete("d0\\s0\\f0.bin")
        for path in ("deep\\a\\b\\c\\d\\leaf.dat", "deep\\a\\b\\c\\d", "deep\\a\\b\\c", "deep\\a\\b"):
            tree.delete(path)
        build_tree(tree, {"d3\\new.txt": 44, "added\\x.bin": 9, "d0\\s1\\f1.bin": 123_456},
                   ["added"], start_index=900)
    report = run_inventory(job_id, InventoryOptions())
    assert report.scan_share_ids == [share_id]
    assert wait_for_scans([share_id], timeout=180, url=url)
    actual = check_scan_records(url, share_id, lab.address)[0]
    assert "deep\\a\\b" not in actual and "d0\\s0\\f0.bin" not in actual and "added\\x.bin" in actual
    with session_scope(url) as session:
        completed = session.scalars(select(Event).where(Event.kind == "inventory.scan.completed")
                                    .order_by(Event.id)).all()
        assert [e.detail["share_id"] for e in completed] == [share_id, share_id]
        assert completed[-1].detail["files"] == len(FILES) - 2 + 2
        assert completed[-1].detail["errors"] == 0


def test_a_scan_whose_messages_were_lost_is_resumed(production, samba_factory):
    """The database, not the broker, knows which folders are still to list."""
    url, _ = production
    lab = samba_factory("invresume", shares=("data",))
    with LabTree(lab.address, "data") as tree:
        build_tree(tree, {"a\\one.txt": 5, "a\\b\\two.txt": 6, "three.txt": 7}, ["a", "a\\b"])
    with session_scope(url) as session:
        job = create_job(session, "resume")
        add_server(session, job, name="nas", kind="smb-only", role="source", address=lab.address,
                   username=MIGRATION_USER, password=MIGRATION_PASSWORD)
        job_id = job.id
    lost: list = []
    report = run_inventory(job_id, InventoryOptions(skip_excluded_folders=False),
                           publish=lambda tasks, options: lost.append((tasks, options)))
    [share_id] = report.scan_share_ids
    assert len(lost) == 1  # published, and lost: no worker ever saw it
    assert not wait_for_scans([share_id], timeout=2, url=url)

    assert resume_scans(job_id) == [share_id]
    assert wait_for_scans([share_id], timeout=120, url=url)
    check_scan_records(url, share_id, lab.address)[0]
    with session_scope(url) as session:
        started = session.scalars(select(Event).where(Event.kind == "inventory.scan.started")).one()
        assert started.detail["options"] == {"skip_excluded_folders": False}
        resumed = session.scalars(select(Event).where(Event.kind == "inventory.scan.resumed")).one()
        assert resumed.detail["folders"] == 1
    assert resume_scans(job_id) == []  # nothing left to resume
