"""``sms inventory run --wait`` again right after a transfer, on the embedded defaults.

The CLI starts its own orchestrator worker for the scans (and proxy workers for the
transfer) and stops them at the end; the next command starts new ones at once. Each
inventory must finish with exit code 0 and the share's true counts, however soon it
follows the previous command.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import os

from tests.test_cli_migration import add_server, run_transfer, sms_json

FOLDERS, FILES_PER_FOLDER = 3, 5


def scan_of(inventory: dict) -> dict:
    """The scan counters of the only share of the only source server."""
    [server] = inventory["inventory"]["servers"]
    [share] = server["shares"]
    return share["scan"]


def test_inventory_again_right_after_transfer_finishes_with_counts(samba_factory, tmp_path):
    source, destination = samba_factory("rerunsrc"), samba_factory("rerundst")
    payload_bytes = 0
    for folder in range(FOLDERS):
        for number in range(FILES_PER_FOLDER):
            target = source.shares["data"].path / f"dir{folder}" / f"file{number}.bin"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(os.urandom(100 + 37 * number))
            payload_bytes += 100 + 37 * number
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}
    env.update(SMS_STATE_DIR=str(tmp_path / "state"), LAB_SMB_PASSWORD="")
    from tests.lab.samba import MIGRATION_PASSWORD
    env["LAB_SMB_PASSWORD"] = MIGRATION_PASSWORD

    assert sms_json(env, "job", "create", "rerun")[0] == 0
    add_server(env, "rerun", "src", "source", source.address)
    add_server(env, "rerun", "dst", "destination", destination.address)
    expected = {"state": "complete", "files": FOLDERS * FILES_PER_FOLDER, "directories": FOLDERS,
                "bytes": payload_bytes, "errors": 0}

    for attempt in range(3):
        code, inventory = sms_json(env, "inventory", "run", "rerun", "--wait", "--timeout", "300")
        assert code == 0, (attempt, inventory)
        assert {k: scan_of(inventory)[k] for k in expected} == expected, attempt
        if attempt == 0:
            assert sms_json(env, "transfer", "pair", "--job", "rerun", "--source", "src",
                            "--destination", "dst")[0] == 0
        code, reports = run_transfer(env, "rerun")
        assert code == 0, reports
    code, inventory = sms_json(env, "inventory", "run", "rerun", "--wait", "--timeout", "300")
    assert code == 0, inventory
    assert {k: scan_of(inventory)[k] for k in expected} == expected
    assert sms_json(env, "job", "show", "rerun")[1]["state"] == "transfer"
