"""Security (issue 8): no clear-text credential anywhere after a transfer over a real Redis
and a real PostgreSQL, and credentials encrypted at rest with the configured key.

A transfer runs between two lab smbd servers with a private redis-server of this test (so
MONITOR sees only this test's traffic) as the broker, a fresh PostgreSQL database, and a
real ``sms-worker``. Meanwhile every command Redis receives is captured with MONITOR and
every process's /proc/PID/cmdline is sampled. Afterwards the migration account's password
and the credential key are searched for in: the captured Redis traffic, with each Celery
message body base64-decoded (the test fails if it decoded none, so it cannot pass by
seeing nothing); every key left in Redis; every text, JSON and binary column of every
table of the job database (binary columns also as hex and UTF-16); every file under the
state directory and the worker's and Redis's logs; the command lines. None may hold them.

Referenced, not repeated here: the key taken from the environment or a private key file
(tests/test_crypto.py), the API's and Flower's refusal of unauthenticated requests
(tests/test_api.py::test_health_is_open_and_every_other_endpoint_needs_the_token,
tests/test_flower.py::test_flower_requires_basic_auth), SSH host key verification
(tests/test_hosts_samba_ssh.py::test_unknown_host_key / test_mismatched_host_key), WinRM
refusing plaintext transports (tests/test_hosts_winrm.py::test_transport_guard_refuses_plaintext).
"""

from __future__ import annotations

import base64
import re
import socket
import threading
from pathlib import Path

import psycopg2
import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import select

from common.db import session_scope
from common.models import Server
from tests.fault_support import FaultLab, kill_fault_workers  # noqa: F401  (kill_fault_workers: a fixture)
from tests.lab.samba import MIGRATION_PASSWORD
from tests.lab.services import PrivateRedis

pytestmark = pytest.mark.timeout(240)

SCANNED_TYPES = ("text", "character varying", "character", "json", "jsonb", "bytea", "ARRAY")


class RedisMonitor:
    """Every command a Redis server receives, as MONITOR prints it, captured in a thread."""

    def __init__(self, port: int):
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.sendall(b"MONITOR\r\n")
        self.captured = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.socket.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.captured += chunk

    def stop(self) -> bytes:
        """Stop capturing; everything captured."""
        self.socket.shutdown(socket.SHUT_RDWR)
        self.socket.close()
        self.thread.join(5)
        return bytes(self.captured)


def message_bodies(captured: bytes) -> list[bytes]:
    """The base64-decoded bodies of the Celery messages in MONITOR's output."""
    text = captured.decode("latin-1").replace('\\"', '"')
    return [base64.b64decode(body) for body in re.findall(r'"body": "([A-Za-z0-9+/=]+)"', text)]


def command_lines() -> dict[int, bytes]:
    """Every process's command line right now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return found


def database_hits(url: str, needles: list[bytes]) -> tuple[int, list[str]]:
    """(columns scanned, 'table.column' holding any needle) over every text, JSON and binary
    column of the database at ``url``."""
    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    connection = psycopg2.connect(dsn)
    hits, scanned = [], 0
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = 'public'")
            columns = [row for row in cursor.fetchall() if row[2] in SCANNED_TYPES]
            for table, column, data_type in columns:
                scanned += 1
                cursor.execute(f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL')
                for (value,) in cursor.fetchall():
                    raw = bytes(value) if data_type == "bytea" else str(value).encode("utf-8")
                    if any(needle in raw for needle in needles):
                        hits.append(f"{table}.{column}")
                        break
    finally:
        connection.close()
    return scanned, hits


def test_no_clear_text_credential_after_a_transfer(samba_factory, worker_factory,
                                                    fresh_postgres_url, tmp_path, monkeypatch):
    redis_server = PrivateRedis(tmp_path).start()
    try:
        lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch,
                       SMS_DATABASE_URL=fresh_postgres_url,
                       SMS_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/0")
        lab.fill(folders=2, files=6)
        lab.snapshot()
        key = lab.env["SMS_SECRET_KEY"]
        password = MIGRATION_PASSWORD.encode()
        needles = [password, MIGRATION_PASSWORD.encode("utf-16-le"), key.encode(),
                   password.hex().encode()]
        monitor = RedisMonitor(redis_server.port)
        lab.worker()
        samples: dict[int, bytes] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                samples.update(command_lines())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _run_id, state = lab.run()
        finally:
            stop.set()
            sampler.join()
        samples.update(command_lines())
        captured = monitor.stop()
        assert state == "succeeded"

        # Redis: the traffic, each message body decoded, and whatever is left in it.
        bodies = message_bodies(captured)
        assert len(bodies) >= 3, "no Celery message decoded: the scan would prove nothing"
        assert not [n for n in needles if n in captured or any(n in body for body in bodies)]
        client = redis.Redis(port=redis_server.port)
        for name in client.keys("*"):
            assert not any(n in client.dump(name) for n in needles), name

        # The job database: every text, JSON and binary column.
        scanned, hits = database_hits(fresh_postgres_url, needles)
        assert scanned >= 20 and hits == []

        # Logs and state.
        logs = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
        logs += list(tmp_path.glob("worker-*.log")) + [tmp_path / "redis.log"]
        assert len(logs) >= 2
        for path in logs:
            content = path.read_bytes()
            assert not any(n in content for n in needles), path

        # Command lines of every process seen while the run went on.
        assert any(b"sms-worker" in line for line in samples.values())
        assert not [pid for pid, line in samples.items() if any(n in line for n in needles)]

        # At rest: a Fernet token of the key from the environment, nothing else.
        with session_scope() as session:
            tokens = session.scalars(select(Server.credential)).all()
        assert len(tokens) == 2
        for token in tokens:
            assert password not in bytes(token)
            assert Fernet(key.encode()).decrypt(bytes(token)) == password
        assert lab.proof().differences == []
    finally:
        redis_server.stop()
