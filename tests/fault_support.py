"""The harness of the fault suite (issue 8): a real transfer between lab smbd servers that
a test can break while it runs, and the proof afterwards that nothing was lost.

``FaultLab`` registers a source and a destination lab smbd as a job with one pairing,
with short leases (``SMS_BATCH_LEASE_SECONDS=5``, ``SMS_VISIBILITY_TIMEOUT=60`` unless
the test says otherwise), starts real ``sms-worker`` processes through ``worker_factory``
and drives a run with ``orchestrator.transfer.planning.execute_run`` in a thread of the
test process (the same driver ``sms transfer run --wait`` uses, reaper included), so the
test can inject its fault while the run is going on. ``proof()`` then compares the two
shares field by field with tests.lab.compare, against the source's times from before the
copy (``snapshot_times``), and lists every in-progress temporary file left behind.

Only faults are injected here; nothing is mocked. The harness must never put a credential
on a command line or in a log, and never touch a server it did not start.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Batch, BatchState, Server, ServerRole, TransferRun, run_records
from common.settings import get_settings
from common.transfer_options import TransferOptions
from orchestrator.database import upgrade_to_head
from orchestrator.transfer import planning
from tests.lab.compare import Difference, compare_trees, snapshot_times
from tests.lab.smbio import ATTRIBUTE_DIRECTORY, LabTree
from tests.transfer_support import register_servers, use_settings

JOB = "faults"
_started_workers: list = []


@pytest.fixture(autouse=True)
def kill_fault_workers(worker_factory):
    """SIGKILL the workers a fault test started when it ends (import this fixture into the
    test module): worker_factory's warm shutdown costs about 5 s a test, and a vanished
    worker is what these tests are built to survive anyway."""
    yield
    while _started_workers:
        _started_workers.pop().kill()


@dataclass
class Driver:
    """A run being driven in a background thread; ``lines`` is its progress output."""

    run_id: int
    thread: threading.Thread
    lines: list[str] = field(default_factory=list)
    state: object = None
    error: BaseException | None = None

    def wait(self, timeout: float = 150) -> str:
        """Block until the run ends; its final state's value."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run {self.run_id} did not end in {timeout} s: {self.lines}"
        if self.error is not None:
            raise AssertionError(f"the driver of run {self.run_id} failed: {self.error!r}\n{self.lines}")
        return self.state.value

    def said(self, fragment: str) -> bool:
        """True once a progress line contains ``fragment``."""
        return any(fragment in line for line in self.lines)


@dataclass
class Proof:
    """What the independent comparison found after a faulty transfer."""

    checked: int
    differences: list[Difference]
    leftovers: list[str]
    known: list[Difference] = field(default_factory=list)


class FaultLab:
    """A source and a destination smbd paired in one job, workers and a driver for runs."""

    def __init__(self, samba_factory, worker_factory, tmp_path: Path, monkeypatch, *,
                 source=None, destination=None, batch_files: int = 8, **settings: str):
        values = {"SMS_STATE_DIR": str(tmp_path / "state"),
                  "SMS_BATCH_MAX_FILES": str(batch_files),
                  "SMS_BATCH_LEASE_SECONDS": "5", "SMS_VISIBILITY_TIMEOUT": "60",
                  "SMS_QUEUE_PREFIX": f"f{uuid.uuid4().hex[:10]}"}
        values.update(settings)
        self.env = use_settings(monkeypatch, **values)
        upgrade_to_head(get_settings().database_url)
        self.worker_factory = worker_factory
        self.src = source or samba_factory("src")
        self.dst = destination or samba_factory("dst")
        register_servers(JOB, {"src": (self.src, ServerRole.SOURCE),
                               "dst": (self.dst, ServerRole.DESTINATION)})
        with session_scope() as session:
            rows = {row.name: row for row in session.scalars(select(Server))}
            self.pairing_id = planning.create_pairing(session, rows["src"], rows["dst"], ["data"]).id
        self.times: dict[str, tuple[int, int, int]] = {}

    # --- trees -----------------------------------------------------------------------------
    def source_path(self, relative: str = "") -> Path:
        """Where a source entry lives on the local disk."""
        return self.src.shares["data"].path / relative

    def destination_path(self, relative: str = "") -> Path:
        """Where a destination entry lives on the local disk."""
        return self.dst.shares["data"].path / relative

    def fill(self, folders: int = 4, files: int = 12, size: int = 3000) -> list[str]:
        """Folders of small files written through SMB; returns their paths."""
        paths = []
        with LabTree(self.src.address, "data") as lab:
            for folder in range(folders):
                lab.mkdir(f"dir{folder}")
                for number in range(files):
                    path = f"dir{folder}\\file{number:03d}.bin"
                    lab.write_file(path, os.urandom(size + number))
                    paths.append(path)
        return paths

    def snapshot(self) -> None:
        """Record the source's times before a copy reads it (tests.lab.compare)."""
        with LabTree(self.src.address, "data") as lab:
            self.times = snapshot_times(lab, "")

    def refresh(self, *paths: str) -> None:
        """Take the source's current times for ``paths`` (files changed on purpose since
        ``snapshot``; the next run copies them as they are now)."""
        with LabTree(self.src.address, "data") as lab:
            for path in paths:
                self.times[path] = lab.basic_info(path)[:3]

    # --- workers and runs --------------------------------------------------------------------
    def worker(self, concurrency: int = 1, **extra: str):
        """Start one more real ``sms-worker`` for the destination."""
        worker = self.worker_factory("dst", {**self.env, **extra}, concurrency=concurrency)
        _started_workers.append(worker)
        return worker

    def start_run(self, **options) -> Driver:
        """Create a run of the pairing and drive it in a thread (execute_run, with its reaper)."""
        options.setdefault("retries", 0)
        with session_scope() as session:
            pairing = session.get(planning.Pairing, self.pairing_id)
            run_id = planning.create_run(session, pairing, TransferOptions(**options)).id
        driver = Driver(run_id, threading.Thread(target=lambda: None))

        def drive() -> None:
            try:
                driver.state = planning.execute_run(run_id, poll_interval=0.2,
                                                    progress=driver.lines.append)
            except BaseException as exc:  # noqa: BLE001 - reported by Driver.wait
                driver.error = exc

        driver.thread = threading.Thread(target=drive, name=f"drive-{run_id}", daemon=True)
        driver.thread.start()
        return driver

    def run(self, timeout: float = 150, **options) -> tuple[int, str]:
        """A whole run: (run id, final state)."""
        driver = self.start_run(**options)
        return driver.run_id, driver.wait(timeout)

    def batches(self, run_id: int) -> dict[BatchState, int]:
        """How many of the run's batches are in each state."""
        with session_scope() as session:
            return planning.batch_state_counts(session, run_id)

    def attempts(self, run_id: int) -> int:
        """The highest attempt number among the run's batches (2+ = leased again)."""
        with session_scope() as session:
            return session.scalar(select(func.max(Batch.attempt)).where(Batch.run_id == run_id)) or 0

    def records(self, run_id: int) -> dict[str, tuple[str, str | None]]:
        """{path: (state, error code)} of the run's records."""
        records = run_records(run_id).c
        with session_scope() as session:
            return {path: (state.value, code) for path, state, code in session.execute(
                select(records.relative_path, records.state, records.error_code))}

    def run_row(self, run_id: int) -> TransferRun:
        """The run's row (detached)."""
        with session_scope() as session:
            run = session.get(TransferRun, run_id)
            session.expunge(run)
            return run

    def walk_errors(self, run_id: int) -> list[tuple[str, str]]:
        """(path, status) of every walk error event of the run, in the order recorded."""
        with session_scope() as session:
            events = planning.run_events(session, run_id, self.run_row(run_id).job_id, (planning.EVENT_WALK_ERROR,))
            return [(event.detail["path"], event.detail["status"]) for event in events]

    # --- the proof ----------------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """In-progress temporary files (``~sms-*``, docs/copy-engine.md) anywhere under the
        destination share, found on its disk without our data plane."""
        root = self.destination_path()
        return sorted(str(path.relative_to(root)) for path in root.rglob("~sms-*"))

    def proof(self, *, expected_missing: set[str] = frozenset(), rerun: bool = False) -> Proof:
        """Compare source and destination field by field (source times from ``snapshot``).

        Explained, hence dropped: PreExistingData on the destination; a path in
        ``expected_missing``; a last-access time that equals the source's current one (a
        file read twice, e.g. by a killed attempt and then by its successor, hands the
        later read the time the earlier read left).

        With ``rerun`` (a second run went over the same destination), a directory's
        last-access time later on the destination than on the source goes to
        ``Proof.known`` instead: the re-run's own listing of the destination moved it and
        the copy engine skips a directory whose other times match (a known gap, reported
        in docs/faults.md), so it is counted, not hidden.
        """
        with LabTree(self.src.address, "data") as src, LabTree(self.dst.address, "data") as dst:
            now = snapshot_times(src, "")
            found = compare_trees(src, "", dst, "", source_times=self.times or None)
            checked = len(now)
            files = {path for path in now if not src.basic_info(path)[4] & ATTRIBUTE_DIRECTORY}
            destination_times = {d.path: d.destination for d in found if d.field == "last_access_time"}
        unexplained, known = [], []
        for difference in found:
            if difference.path == "PreExistingData" and difference.field == "extra":
                continue
            if difference.path in expected_missing and difference.field == "missing":
                continue
            if difference.field == "last_access_time" and difference.path in now \
                    and destination_times[difference.path] == now[difference.path][1]:
                continue
            if rerun and difference.field == "last_access_time" and difference.path in now \
                    and difference.path not in files and difference.destination > difference.source:
                known.append(difference)
                continue
            unexplained.append(difference)
        return Proof(checked, unexplained, self.leftovers(), known)


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def finish(lab: FaultLab, driver: Driver, files: list[str]) -> list[str]:
    """Wait for the faulty run; re-run once if it ended with errors; prove the result.
    Returns the final states of the runs."""
    states = [driver.wait()]
    assert states[0] in ("succeeded", "completed_with_errors"), driver.lines
    if states[0] != "succeeded":
        states.append(lab.run(retries=1, retry_delay=1)[1])
        assert states[-1] == "succeeded", states
    proof = lab.proof(rerun=len(states) > 1)
    assert proof.checked > len(files)
    assert proof.differences == [] and proof.leftovers == []
    return states


def when_copying(lab: FaultLab, driver: Driver, *, driver_waiting: bool = False) -> None:
    """Wait until some batches are done and others still to do; with ``driver_waiting``,
    until the driver has planned everything and waits for batches still to do (the
    driver survives a database outage while it waits; one while it plans fails the run,
    which a resumed drive continues)."""
    def half_way() -> bool:
        counts = lab.batches(driver.run_id)
        still_to_do = counts.get(BatchState.QUEUED, 0) + counts.get(BatchState.RUNNING, 0)
        if driver_waiting:
            return driver.said("files: ") and still_to_do >= 1
        return counts.get(BatchState.DONE, 0) >= 2 and still_to_do >= 2

    wait_until(half_way, 90, "a transfer half way")
