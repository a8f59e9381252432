"""Shared set-up of the orchestrator benchmarks (bench_inventory.py, bench_transfer.py).

Gives a benchmark the services the orchestrator runs on in production, each its own:
a fresh PostgreSQL database (on the server at 127.0.0.1:5432 when it answers, else a
private cluster; tests.lab.services), Redis (the shared one or a private one) with queue
names of this run only, a fresh credential key, and the ``SMS_*`` settings for all of it
in this process's environment, from where the worker processes it starts inherit them
(never on a command line). Also: the load average, the CPU time every process on the
machine has used (to say where a run's CPU went), and real Celery workers (orchestrator
workers for the inventory, ``sms-worker`` proxy workers for transfers) started and
stopped by their process-group id.

It must never drop a database, stop a server or kill a process it did not create.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from cryptography.fernet import Fernet

from common.db import dispose_engines
from common.settings import reset_settings_cache
from orchestrator.database import upgrade_to_head
from orchestrator.worker import LocalWorker, start_local_worker
from tests.lab import services
from tests.lab.workers import SMS_WORKER, WorkerProcess


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds_by_process() -> dict[str, float]:
    """CPU seconds (user and system, with the children each has reaped) used so far by
    every process on the machine, summed by process name; this process itself (all its
    threads) under ``"this process"``. Two readings subtracted (``cpu_spent``) say where a
    run's CPU went: smbd's connection processes, PostgreSQL's backends, the workers.
    A process that ends between the readings counts only through its parent's reaped
    children (smbd's connection processes do; a process whose parent never waits is lost).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    own = os.getpid()
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        # Fields 14-17 of proc(5): utime, stime, cutime, cstime (here from index 11).
        seconds = sum(int(value) for value in fields[11:15]) / ticks
        if name.startswith("kworker"):  # a kernel worker's name changes with its work
            name = "kworker"
        key = "this process" if int(stat.parent.name) == own else name
        totals[key] = totals.get(key, 0.0) + seconds
    return totals


def cpu_spent(before: dict[str, float], after: dict[str, float], least: float = 0.02) -> str:
    """What each process name used between two ``cpu_seconds_by_process`` readings, the
    largest first (below ``least`` seconds left out), as one line."""
    spent = sorted(((after[name] - before.get(name, 0.0), name) for name in after), reverse=True)
    return ", ".join(f"{name} {seconds:.2f}" for seconds, name in spent if seconds >= least)


class Services:
    """PostgreSQL database, Redis and SMS_* settings of one benchmark run; a context manager.

    ``settings`` are extra ``SMS_*`` values (for example ``SMS_BATCH_MAX_FILES``).
    """

    def __init__(self, workdir: Path, **settings: str):
        self.workdir = workdir
        self.extra = settings
        self.redis: services.PrivateRedis | None = None
        self.postgres: services.PrivatePostgres | None = None
        self.database_name: str | None = None
        self.port = services.SHARED_POSTGRES_PORT
        self.env: dict[str, str] = {}
        self._saved: dict[str, str] = {}

    def new_database(self) -> str:
        """A fresh PostgreSQL database (dropped by ``close``); returns its URL."""
        if self.database_name is not None:
            raise RuntimeError("one database per Services")
        if not services.postgres_answers(self.port):
            self.postgres = services.PrivatePostgres().start()
            self.port = self.postgres.port
        self.database_name = f"sms_bench_{uuid.uuid4().hex[:12]}"
        return services.create_database(self.port, self.database_name)

    def __enter__(self) -> "Services":
        url = self.new_database()
        if services.redis_answers(services.SHARED_REDIS_PORT):
            broker = f"redis://{services.HOST}:{services.SHARED_REDIS_PORT}/0"
        else:
            self.redis = services.PrivateRedis(Path(tempfile.mkdtemp(prefix="sms-bench-redis-"))).start()
            broker = f"redis://{services.HOST}:{self.redis.port}/0"
        tag = uuid.uuid4().hex[:10]
        self.env = {
            "SMS_DATABASE_URL": url,
            "SMS_BROKER_URL": broker,
            "SMS_SECRET_KEY": Fernet.generate_key().decode(),
            "SMS_STATE_DIR": str(self.workdir / "state"),
            "SMS_QUEUE_PREFIX": f"bench{tag}",
            "SMS_ORCHESTRATOR_QUEUE": f"bench{tag}.orchestrator",
            **self.extra,
        }
        for name in list(os.environ):
            if name.startswith("SMS_"):
                self._saved[name] = os.environ.pop(name)
        os.environ.update(self.env)
        reset_settings_cache()
        dispose_engines()
        upgrade_to_head(url)
        return self

    @property
    def database_url(self) -> str:
        """URL of this run's job database."""
        return self.env["SMS_DATABASE_URL"]

    def close(self) -> None:
        """Drop the database and stop the private servers this object started."""
        dispose_engines()
        if self.database_name is not None:
            services.drop_database(self.port, self.database_name)
        if self.postgres is not None:
            self.postgres.stop()
        if self.redis is not None:
            self.redis.stop()
        for name in self.env:
            os.environ.pop(name, None)
        os.environ.update(self._saved)
        reset_settings_cache()

    def __exit__(self, *exc) -> None:
        self.close()


def start_proxy_worker(destination: str, concurrency: int, log_dir: Path) -> WorkerProcess:
    """A real ``sms-worker --destination NAME`` (Celery prefork, ``concurrency`` processes)
    with this process's settings, ready to take batches."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{destination}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(SMS_WORKER), "--destination", destination,
                                    "--concurrency", str(concurrency)],
                                   env=dict(os.environ), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess(destination, process, log_path)
    try:
        return worker.wait_ready(timeout=120)
    except BaseException:
        worker.stop()
        raise


def start_orchestrator_worker(concurrency: int) -> LocalWorker:
    """A real orchestrator worker (``python -m orchestrator.worker``) serving this run's
    orchestrator queue with ``concurrency`` prefork processes, ready to take tasks."""
    worker = start_local_worker(concurrency)
    worker.wait_ready()
    return worker
