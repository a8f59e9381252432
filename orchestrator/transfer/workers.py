"""Local proxy workers for the embedded mode: started by the CLI, stopped by it at the end.

With the embedded defaults (SQLite database, SQLite broker) there is nobody else to run
proxy workers, so ``sms transfer run --wait`` starts one ``sms-worker --destination NAME``
process per destination on this machine (``LocalWorkers``), each the leader of its own
process group, waits until Celery reports it ready, and stops each group by its id when
the run ends (SIGTERM, then SIGKILL after a grace period: one second once the runs have
ended, see orchestrator.worker.IDLE_STOP_GRACE).

Workers inherit this process's environment, which is where every ``SMS_*`` setting lives:
nothing but the destination name and the concurrency goes on their command line, so no
credential ever shows in a process list. This module must never stop a process it did
not start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.settings import get_settings
from orchestrator.worker import STOP_GRACE, WorkerStartError, wait_for_ready_mark

class LocalWorkers:
    """Worker processes of this CLI invocation, one per destination; a context manager."""

    def __init__(self, destinations: list[str], *, concurrency: int | None = None,
                 log_dir: Path | None = None, ready_timeout: float = 120.0):
        settings = get_settings()
        self.destinations = list(dict.fromkeys(destinations))
        self.concurrency = concurrency or settings.worker_concurrency
        self.log_dir = log_dir or settings.ensure_state_dir() / "logs"
        self.ready_timeout = ready_timeout
        self.processes: dict[str, subprocess.Popen] = {}
        self.log_paths: dict[str, Path] = {}

    def start(self) -> "LocalWorkers":
        """Start each destination's worker and wait until it is ready, one after the other
        (they would otherwise race to create the embedded broker's tables)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for destination in self.destinations:
            log_path = self.log_dir / f"worker-{destination}-{os.getpid()}.log"
            self.log_paths[destination] = log_path
            with open(log_path, "wb") as log:
                self.processes[destination] = subprocess.Popen(
                    [sys.executable, "-m", "proxy_worker.main", "--destination", destination,
                     "--concurrency", str(self.concurrency)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=dict(os.environ))
            self._wait_ready(destination)
        return self

    def _wait_ready(self, destination: str) -> None:
        log_path = self.log_paths[destination]
        if wait_for_ready_mark(self.processes[destination], log_path, self.ready_timeout) is not None:
            self.stop()
            raise WorkerStartError(f"worker for {destination} did not start; see {log_path}")

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Warm shutdown of every started worker group; SIGKILL what outlives ``grace``
        (``orchestrator.worker.IDLE_STOP_GRACE`` once the runs they served have ended)."""
        for process in self.processes.values():
            if process.poll() is None:
                # The main process alone: it shuts its pool down itself (warm shutdown).
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        self.processes.clear()

    def __enter__(self) -> "LocalWorkers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
