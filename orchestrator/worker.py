"""The orchestrator's own Celery worker: it serves ``settings.orchestrator_queue``.

The file scan of the inventory fans out there, one task per batch of folders
(``orchestrator.inventory.tasks``). Start it with ``sms orchestrator-worker`` or
``python -m orchestrator.worker [--concurrency N]``; scale out by starting more, on any
machine that reaches the job database, the broker and the file servers. On the embedded
defaults, ``sms inventory run --wait`` starts one itself (``start_local_worker``) and
stops it by pid at the end.

Broker, database and everything else come from settings (``SMS_*`` variables), never
from the command line, so no credential ever shows in a process list. This module must
never stop a process it did not start.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.celery_app import create_celery_app
from common.settings import get_settings


def worker_argv(concurrency: int, loglevel: str) -> list[str]:
    """The Celery worker arguments for the orchestrator queue."""
    settings = get_settings()
    argv = [
        "worker",
        "--queues", settings.orchestrator_queue,
        "--concurrency", str(concurrency),
        "--pool", "prefork",
        "--hostname", f"sms-orchestrator-{os.getpid()}@%h",
        "--loglevel", loglevel,
    ]
    if settings.broker_is_embedded:
        # kombu's SQLAlchemy transport has no fan-out exchanges.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return argv


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the orchestrator worker until it is stopped."""
    parser = argparse.ArgumentParser(
        prog="sms orchestrator-worker", description="Worker serving the orchestrator's queue.")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="prefork processes (default: settings.orchestrator_concurrency)")
    parser.add_argument("--loglevel", default="INFO")
    options = parser.parse_args(argv)
    concurrency = options.concurrency or get_settings().orchestrator_concurrency
    app = create_celery_app()
    app.worker_main(worker_argv(concurrency, options.loglevel))


READY_MARK = " ready."  # what Celery logs once the worker consumes
# Seconds a local worker gets to stop on its own (SIGTERM, warm shutdown) before it is
# killed: while it may be copying or scanning, enough to finish a batch; once the work it
# was started for has ended, one second. An idle worker on the embedded broker takes 5-7 s
# to stop by itself (Celery's loop there notices a stop only every 2 s, then its pool winds
# down), and it holds nothing of that work: a message of other work it had taken but not
# run is published again as for a worker that died (a batch by the lease reaper, a scan's
# folders by ``sms inventory resume``).
STOP_GRACE = 15.0
IDLE_STOP_GRACE = 1.0


def stop_grace(work_ended: bool) -> float:
    """The grace a local worker gets to stop: ``IDLE_STOP_GRACE`` once the work it was
    started for has ended, else ``STOP_GRACE``."""
    return IDLE_STOP_GRACE if work_ended else STOP_GRACE


class WorkerStartError(RuntimeError):
    """A local worker (orchestrator or proxy) exited, or did not become ready in time."""


def wait_for_ready_mark(process: subprocess.Popen, log_path: Path, timeout: float,
                        log_offset: int = 0) -> str | None:
    """Wait until a worker started as ``process`` logs READY_MARK in ``log_path`` (after
    ``log_offset``): None then, or why not: "exited" when the process ended first,
    "timed out" after ``timeout`` seconds. Shared by the local orchestrator worker and the
    embedded mode's proxy workers."""
    deadline = time.monotonic() + timeout
    while READY_MARK not in read_log(log_path, log_offset):
        if process.poll() is not None:
            return "exited"
        if time.monotonic() >= deadline:
            return "timed out"
        time.sleep(0.1)
    return None


def read_log(log_path: Path, offset: int = 0) -> str:
    """A worker's log file from ``offset`` on."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


class LocalWorker:
    """An orchestrator worker subprocess this process started (its own process group)."""

    def __init__(self, process: subprocess.Popen, log_path: Path, log_offset: int = 0):
        self.process = process
        self.log_path = log_path
        self.log_offset = log_offset  # where this worker's output starts in its log file

    @property
    def pid(self) -> int:
        """Pid of the worker's main process, which leads its process group."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the worker's main process runs."""
        return self.process.poll() is None

    def log(self) -> str:
        """What this worker has written to its log so far."""
        return read_log(self.log_path, self.log_offset)

    def gone_message(self) -> str:
        """Why the worker is gone, for an administrator: its exit status and its log."""
        return f"the orchestrator worker (pid {self.pid}) exited with status {self.process.returncode}; see {self.log_path}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Return once the worker consumes its queue; WorkerStartError if it exits first or
        is not ready within ``timeout`` seconds (the worker is then stopped)."""
        outcome = wait_for_ready_mark(self.process, self.log_path, timeout, self.log_offset)
        if outcome == "exited":
            raise WorkerStartError(self.gone_message() + " before it was ready")
        if outcome == "timed out":
            self.stop()
            raise WorkerStartError(f"the orchestrator worker was not ready after {timeout:.0f} s; "
                                   f"see {self.log_path}")

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Warm shutdown: SIGTERM to the main process alone, which stops its pool and hands
        back the messages it holds; SIGKILL to the whole group after ``grace`` seconds
        (``IDLE_STOP_GRACE`` once the scan it served has ended).

        (SIGTERM to the whole group kills the pool processes under the main process, which
        then hangs in billiard's pool finaliser until the SIGKILL.)
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # whatever of the group outlived the main process
        except ProcessLookupError:
            pass
        self.process.wait()


def start_local_worker(concurrency: int | None = None) -> LocalWorker:
    """Start an orchestrator worker subprocess with this process's settings (environment).

    Its output goes to ``STATE_DIR/logs/orchestrator-worker-PID.log``; ``wait_ready`` on
    the result waits until it consumes.
    """
    settings = get_settings()
    logs = settings.ensure_state_dir() / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"orchestrator-worker-{os.getpid()}.log"
    argv = [sys.executable, "-m", "orchestrator.worker"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    with open(log_path, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))
    return LocalWorker(process, log_path, offset)


if __name__ == "__main__":
    main()
