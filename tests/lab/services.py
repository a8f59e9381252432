"""Pytest fixtures for real Redis and PostgreSQL servers.

The servers on 127.0.0.1 (Redis 6379, PostgreSQL 5432 with trust auth for ``postgres``)
are used when they answer; otherwise a private instance is started on a free loopback
port (``redis-server --daemonize yes``; ``initdb`` + ``pg_ctl`` as user ``postgres``) and
stopped by pid at the end of the session. Each test session gets its own PostgreSQL
database, dropped at the end; ``fresh_postgres_url`` gives a test an empty one of its own.
Missing binaries skip locally and fail in CI (``tests.lab.fixtures.unavailable``).

These fixtures must never touch another database than the ones they created, and never
stop a server they did not start.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis

from common.db import dispose_engines
from tests.lab.fixtures import unavailable

HOST = "127.0.0.1"
SHARED_REDIS_PORT = 6379
SHARED_POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the server is still starting
            last_error = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout} s: {last_error}")


# --- Redis ---------------------------------------------------------------------------

def redis_answers(port: int) -> bool:
    """True when a Redis server on 127.0.0.1:port answers PING."""
    try:
        return bool(redis.Redis(host=HOST, port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


class PrivateRedis:
    """A redis-server of this test session on a free loopback port, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is not installed and no Redis answers on 127.0.0.1:6379")
        self.directory = directory
        self.pidfile = directory / "redis.pid"
        self.port = free_port()

    def start(self) -> "PrivateRedis":
        """Start it daemonized and wait until it answers."""
        subprocess.run(
            [self.binary, "--port", str(self.port), "--bind", HOST, "--daemonize", "yes",
             "--pidfile", str(self.pidfile), "--dir", str(self.directory), "--save", "",
             "--appendonly", "no", "--logfile", str(self.directory / "redis.log")],
            check=True,
        )
        _wait_for(lambda: redis_answers(self.port) and self.pidfile.exists(), 10,
                  "private redis-server")
        return self

    def stop(self) -> None:
        """Stop it by the pid in its pid file."""
        if self.pidfile.exists():
            os.kill(int(self.pidfile.read_text().strip()), signal.SIGTERM)
            _wait_for(lambda: not redis_answers(self.port), 10, "redis-server shutdown")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """URL of a real Redis: the shared one on 127.0.0.1:6379, else a private one."""
    if redis_answers(SHARED_REDIS_PORT):
        yield f"redis://{HOST}:{SHARED_REDIS_PORT}/0"
        return
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield f"redis://{HOST}:{server.port}/0"
    finally:
        server.stop()


# --- PostgreSQL ----------------------------------------------------------------------

def _admin_connect(port: int, host: str = HOST):
    return psycopg2.connect(
        host=host, port=port, user=POSTGRES_USER, dbname="postgres", connect_timeout=2
    )


def postgres_answers(port: int) -> bool:
    """True when PostgreSQL on 127.0.0.1:port accepts the trusted ``postgres`` user."""
    try:
        _admin_connect(port).close()
        return True
    except psycopg2.Error:
        return False


def _postgres_bin(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


class PrivatePostgres:
    """A PostgreSQL cluster of this test session, run as user postgres on a free port."""

    def __init__(self) -> None:
        self.initdb = _postgres_bin("initdb")
        self.pg_ctl = _postgres_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            unavailable("PostgreSQL (initdb, pg_ctl) is not installed")
        try:
            self.account = pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            unavailable("no 'postgres' system account to run a private PostgreSQL")
        self.directory = Path(tempfile.mkdtemp(prefix="sms-pg-"))
        os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
        self.data = self.directory / "data"
        self.port = free_port()

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(
            argv, check=True, capture_output=True,
            user=self.account.pw_uid, group=self.account.pw_gid, cwd=self.directory,
        )

    def start(self) -> "PrivatePostgres":
        """initdb and start the cluster, listening on 127.0.0.1 only."""
        self._as_postgres([self.initdb, "-D", str(self.data), "-A", "trust", "-U", POSTGRES_USER])
        options = f"-p {self.port} -k {self.directory} -c listen_addresses={HOST} -c fsync=off"
        self._as_postgres([self.pg_ctl, "-D", str(self.data), "-o", options,
                           "-l", str(self.directory / "postgres.log"), "-w", "start"])
        _wait_for(lambda: postgres_answers(self.port), 20, "private PostgreSQL")
        return self

    def restart(self, downtime: float = 0.0) -> None:
        """Fast shutdown (every client connection is cut), ``downtime`` seconds down, start
        again on the same port with the same data."""
        self._as_postgres([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
        time.sleep(downtime)
        options = f"-p {self.port} -k {self.directory} -c listen_addresses={HOST} -c fsync=off"
        self._as_postgres([self.pg_ctl, "-D", str(self.data), "-o", options,
                           "-l", str(self.directory / "postgres.log"), "-w", "start"])

    def stop(self) -> None:
        """Stop the postmaster by its pid and remove the cluster."""
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and pidfile.exists():
                time.sleep(0.1)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[tuple[str, int]]:
    """(host, port) of a real PostgreSQL: the shared one on 127.0.0.1:5432, else a private one."""
    if postgres_answers(SHARED_POSTGRES_PORT):
        yield HOST, SHARED_POSTGRES_PORT
        return
    server = PrivatePostgres()
    try:
        server.start()
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        server.stop()
        unavailable(f"could not start a private PostgreSQL: {exc}")
    try:
        yield HOST, server.port
    finally:
        server.stop()


def create_database(port: int, name: str) -> str:
    """Create database ``name`` and return its SQLAlchemy URL."""
    connection = _admin_connect(port)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return f"postgresql+psycopg2://{POSTGRES_USER}@{HOST}:{port}/{name}"


def drop_database(port: int, name: str) -> None:
    """Drop database ``name``, ending any session still connected to it."""
    connection = _admin_connect(port)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session, dropped at the end."""
    _, port = postgres_server
    name = f"sms_test_{uuid.uuid4().hex[:12]}"
    url = create_database(port, name)
    try:
        yield url
    finally:
        dispose_engines()
        drop_database(port, name)


@pytest.fixture
def fresh_postgres_url(postgres_server) -> Iterator[str]:
    """URL of an empty PostgreSQL database of this test alone, dropped after it."""
    _, port = postgres_server
    name = f"sms_test_{uuid.uuid4().hex[:12]}"
    url = create_database(port, name)
    try:
        yield url
    finally:
        dispose_engines()
        drop_database(port, name)
