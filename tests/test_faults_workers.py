"""Faults (issue 8): a proxy worker SIGKILLed in the middle of a batch, and in the middle of
a large file. The batch's lease runs out (5 s), the driver's reaper queues it again, a
second worker finishes it, and the independent comparison finds the destination identical
to the source with no temporary file left over.

Embedded defaults (SQLite database and broker): the SQLite broker has no visibility
timeout at all, so only the reaper can bring a killed worker's batch back.
"""

from __future__ import annotations

import os

import pytest

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from common.models import BatchState
from tests.fault_support import FaultLab, kill_fault_workers, wait_until  # noqa: F401  (kill_fault_workers: a fixture)
from tests.lab.smbio import LabTree

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240), pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")]


def test_worker_killed_mid_batch(samba_factory, worker_factory, tmp_path, monkeypatch):
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, batch_files=6)
    files = lab.fill(folders=4, files=18)
    lab.snapshot()
    first = lab.worker()
    driver = lab.start_run()
    # Kill once some batches are done and one is being copied.
    wait_until(lambda: lab.batches(driver.run_id).get(BatchState.DONE, 0) >= 2
               and lab.batches(driver.run_id).get(BatchState.RUNNING, 0) >= 1, 60, "a running batch")
    first.kill()
    lab.worker()
    assert driver.wait() == "succeeded", driver.lines
    assert lab.attempts(driver.run_id) >= 2, "the killed worker's batch was never leased again"
    assert any("re-dispatched" in line for line in driver.lines), driver.lines
    proof = lab.proof()
    assert proof.checked > len(files)
    assert proof.differences == [] and proof.leftovers == []


def test_worker_killed_mid_file(samba_factory, worker_factory, tmp_path, monkeypatch):
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch)
    with LabTree(lab.src.address, "data") as tree:
        tree.mkdir("big")
        tree.write_file("big\\large.bin", os.urandom(1 << 20) * 160)  # 160 MiB, 1 MiB pattern
        tree.write_file("big\\after.txt", b"copied after the large file\n")
    lab.snapshot()
    first = lab.worker()
    driver = lab.start_run()
    # The large file is being written under its temporary name: kill now.
    partial = wait_until(lambda: [p for p in lab.destination_path("big").glob("~sms-*")
                                  if p.stat().st_size > 0] if lab.destination_path("big").exists()
                         else [], 60, "the large file's temporary file", interval=0.01)
    first.kill()
    killed_at = partial[0].stat().st_size
    assert 0 < killed_at < 160 << 20, "the worker was not killed in the middle of the file"
    assert not lab.destination_path("big/large.bin").exists(), "a partial file under its real name"
    lab.worker()
    assert driver.wait() == "succeeded", driver.lines
    assert lab.attempts(driver.run_id) >= 2
    proof = lab.proof()
    assert proof.differences == [] and proof.leftovers == []
