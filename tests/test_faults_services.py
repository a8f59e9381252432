"""Faults (issue 8): the servers a transfer depends on restart while it runs.

- the source's smbd and the destination's smbd: every daemon killed with its children
  (all SMB sessions cut) and started again on the same address after 2 s;
- Redis (the broker), a private redis-server of this test without persistence: queued
  messages are lost with it;
- PostgreSQL (the job database), a private cluster of this test: every connection of the
  driver and the workers is cut.

Each run must end, and the independent comparison must then find the destination
identical to the source with no temporary file left over. Where a run ends "completed
with errors" (files that failed while a server was down), the next run picks them up, as
an administrator would re-run it; an smbd restart of 2 s must not even need that (a
batch retries a round whose server was unreachable, ``--retries 2 --retry-delay 2``).
"""

from __future__ import annotations

import pytest

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from tests.fault_support import FaultLab, finish, kill_fault_workers, when_copying  # noqa: F401  (kill_fault_workers: a fixture)
from tests.lab.services import PrivatePostgres, PrivateRedis, create_database

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240), pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")]


@pytest.mark.parametrize("side", ["src", "dst"])
def test_smbd_restarts_mid_transfer(side, samba_factory, worker_factory, tmp_path, monkeypatch):
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, batch_files=6)
    files = lab.fill(folders=4, files=18)
    lab.snapshot()
    lab.worker()
    driver = lab.start_run(retries=2, retry_delay=2)
    when_copying(lab, driver)
    server = lab.src if side == "src" else lab.dst
    before = set(server.pids())
    server.restart(downtime=2)
    assert before and not before & set(server.pids())
    # Each batch retries a round whose server was unreachable: no re-run needed.
    assert finish(lab, driver, files) == ["succeeded"]


def test_redis_restarts_mid_transfer(samba_factory, worker_factory, tmp_path, monkeypatch):
    redis_server = PrivateRedis(tmp_path).start()
    try:
        lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, batch_files=6,
                       SMS_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/0",
                       SMS_VISIBILITY_TIMEOUT="60")
        files = lab.fill(folders=4, files=18)
        lab.snapshot()
        lab.worker()
        driver = lab.start_run(retries=2, retry_delay=2)
        when_copying(lab, driver)
        redis_server.stop()
        redis_server.start()
        finish(lab, driver, files)
    finally:
        redis_server.stop()


def test_postgres_restarts_mid_transfer(samba_factory, worker_factory, tmp_path, monkeypatch):
    postgres = PrivatePostgres()
    try:
        postgres.start()
        url = create_database(postgres.port, "faults")
        lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, batch_files=6,
                       SMS_DATABASE_URL=url)
        files = lab.fill(folders=4, files=18)
        lab.snapshot()
        lab.worker()
        driver = lab.start_run(retries=2, retry_delay=2)
        when_copying(lab, driver, driver_waiting=True)
        postgres.restart(downtime=2)
        finish(lab, driver, files)
    finally:
        from common.db import dispose_engines
        dispose_engines()
        postgres.stop()
