"""Fault (issue 8): the proxy worker is cut off from the destination for 10 seconds.

The destination's smbd runs in a network namespace of its own (tests.lab.netns), joined
to a lab bridge by a veth pair; the worker speaks to it from the root namespace over the
bridge (198.18.0.0/15 only). Half way through the transfer the veth's root-namespace end
is taken down for 10 s, then brought back. The run must end; where files failed while the
link was down, the next run picks them up; then the independent comparison finds the
destination identical to the source, with no temporary file left over.
"""

from __future__ import annotations

import subprocess
import time
from types import SimpleNamespace

import pytest

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from tests.fault_support import FaultLab, finish, kill_fault_workers, when_copying  # noqa: F401  (kill_fault_workers: a fixture)

pytestmark = [pytest.mark.faults, pytest.mark.netns, pytest.mark.timeout(240),
              pytest.mark.filterwarnings(
                  "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")]


def test_worker_cut_off_from_the_destination_for_10_seconds(samba_factory, worker_factory,
                                                             netns_lab, tmp_path, monkeypatch):
    host = netns_lab.add_host("dst")
    netns_lab.start_samba(host, "DST")
    destination = SimpleNamespace(address=host.management_address,
                                  shares={"data": SimpleNamespace(path=host.shares["data"])})
    lab = FaultLab(samba_factory, worker_factory, tmp_path, monkeypatch, destination=destination,
                   batch_files=6)
    files = lab.fill(folders=4, files=18)
    lab.snapshot()
    lab.worker()
    driver = lab.start_run(retries=2, retry_delay=3)
    when_copying(lab, driver)
    subprocess.run(["ip", "link", "set", host.veth, "down"], check=True)
    try:
        time.sleep(10)
    finally:
        subprocess.run(["ip", "link", "set", host.veth, "up"], check=True)
    finish(lab, driver, files)
