"""``sms inventory run --wait`` again right after a transfer, and right after itself, on the
embedded defaults (SQLite job database, SQLite broker, workers started by the CLI).

Each command starts its own workers (an orchestrator worker for the scans, a proxy worker
for the transfer) and stops them at its end; the next command starts new ones at once.
Every inventory must finish with exit code 0, report its scan as finished, and count the
share's files, folders and bytes exactly, however soon it follows the previous command;
a later inventory leaves the job's phase where the migration stands.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import os

from tests.lab.samba import MIGRATION_PASSWORD
from tests.test_cli_migration import add_server, run_transfer, sms_json

FOLDERS, FILES_PER_FOLDER = 3, 5


def share_scan(inventory: dict) -> dict:
    """The scan counters of the only share of the only source server in ``--json`` output."""
    [server] = inventory["inventory"]["servers"]
    [share] = server["shares"]
    return share["scan"]


def inventory_again(env: dict, job: str, expected: dict, step: str) -> None:
    """Run ``sms inventory run JOB --wait`` and check it finished with the expected counts."""
    code, inventory = sms_json(env, "inventory", "run", job, "--wait", "--timeout", "240")
    assert code == 0, (step, inventory)
    assert inventory["waited"] is True and inventory["finished"] is True, step
    scan = share_scan(inventory)
    assert {key: scan[key] for key in expected} == expected, (step, scan)


def test_inventory_right_after_transfer_and_after_itself_finishes_with_counts(samba_factory, tmp_path):
    source, destination = samba_factory("rerunsrc"), samba_factory("rerundst")
    total_bytes = 0
    for folder in range(FOLDERS):
        for number in range(FILES_PER_FOLDER):
            target = source.shares["data"].path / f"dir{folder}" / f"file{number}.bin"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(os.urandom(100 + 37 * number))
            total_bytes += 100 + 37 * number
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}
    env.update(SMS_STATE_DIR=str(tmp_path / "state"), LAB_SMB_PASSWORD=MIGRATION_PASSWORD)
    assert sms_json(env, "job", "create", "rerun")[0] == 0
    add_server(env, "rerun", "src", "source", source.address)
    add_server(env, "rerun", "dst", "destination", destination.address)
    expected = {"state": "complete", "files": FOLDERS * FILES_PER_FOLDER, "directories": FOLDERS,
                "bytes": total_bytes, "errors": 0, "pending_directories": 0}

    inventory_again(env, "rerun", expected, "first inventory")
    code, paired = sms_json(env, "transfer", "pair", "--job", "rerun", "--source", "src",
                            "--destination", "dst")
    assert code == 0, paired
    code, reports = run_transfer(env, "rerun")
    assert code == 0, reports
    assert sms_json(env, "job", "show", "rerun")[1]["state"] == "transfer"

    # At once after the transfer's workers stopped, then at once after its own worker stopped.
    inventory_again(env, "rerun", expected, "inventory right after the transfer")
    inventory_again(env, "rerun", expected, "inventory right after an inventory")
    assert sms_json(env, "job", "show", "rerun")[1]["state"] == "transfer"
