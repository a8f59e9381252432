"""Pytest fixtures that run real ``sms-worker`` (Celery prefork) subprocesses.

``worker_factory(destination, env={...})`` starts the installed ``sms-worker`` console
script in its own process group with exactly the ``SMS_*`` settings given (none are
inherited from the test process), waits until Celery reports it ready, and returns a
``WorkerProcess``. ``WorkerProcess.kill()`` SIGKILLs the whole group (main process and
pool children), the way a crashed machine would vanish. Every worker still running at the
end of the test is stopped by its process-group id.

Settings travel in the environment, never on the command line, so no credential shows in
a process list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.worker import wait_for_ready_mark
from tests.lab.fixtures import unavailable

SMS_WORKER = Path(sys.executable).with_name("sms-worker")


@dataclass
class WorkerProcess:
    """A running ``sms-worker``: its main process leads its own process group."""

    destination: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        """Pid of the worker's main process (also its process-group id)."""
        return self.process.pid

    def log(self) -> str:
        """Everything the worker has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def pids(self) -> set[int]:
        """Pids of every live process in the worker's group (main process and pool)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == self.pid and fields[0] != "Z":  # pgrp, state
                found.add(int(entry.name))
        return found

    def wait_ready(self, timeout: float = 60) -> "WorkerProcess":
        """Block until Celery logs that the worker is ready; fail with its log otherwise."""
        if wait_for_ready_mark(self.process, self.log_path, timeout) is None:
            return self
        raise AssertionError(f"sms-worker for {self.destination!r} not ready:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the main process and every pool process at once."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        # Pool processes die a moment after the signal (the kernel tears them down
        # asynchronously); wait until none is left so callers see a dead worker.
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, grace: float = 5) -> None:
        """Warm shutdown (SIGTERM to the main process); SIGKILL the group after ``grace`` s."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@pytest.fixture
def worker_factory(tmp_path) -> Iterator:
    """Start real ``sms-worker`` processes; all are stopped when the test ends."""
    if not SMS_WORKER.exists():
        unavailable(f"{SMS_WORKER} is missing: run pip install -e '.[test]'")
    started: list[WorkerProcess] = []

    def start(
        destination: str, env: Mapping[str, str], *, concurrency: int = 1, ready: bool = True
    ) -> WorkerProcess:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}
        environment.update(env)
        log_path = tmp_path / f"worker-{destination}-{len(started)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(SMS_WORKER), "--destination", destination,
                 "--concurrency", str(concurrency)],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(destination, process, log_path)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.stop()
