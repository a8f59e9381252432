"""A whole migration driven only through ``sms ... --json``, as a script would, with the
documented exit codes: 0 when everything is copied and reconciled, 1 when the run
completed with errors (a file locked on the source), 2 and above on failure (the
destination refuses the credentials). Every JSON answer is parsed, never scraped."""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import json
import os
import subprocess
import sys
from pathlib import Path

from smbprotocol.open import CreateDisposition, CreateOptions, ImpersonationLevel, Open

from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER
from tests.lab.smbio import FILE_READ_DATA, SYNCHRONIZE, LabTree

SMS = Path(sys.executable).with_name("sms")


def sms_json(env: dict, *args: str) -> tuple[int, object]:
    """Run ``sms ARGS --json``; returns the exit code and the parsed standard output."""
    done = subprocess.run([str(SMS), *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=600)
    try:
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON ({exc}): {done.stdout!r} {done.stderr!r}") from exc


def add_server(env: dict, job: str, name: str, role: str, address: str) -> None:
    code, answer = sms_json(env, "server", "add", job, name, "--role", role, "--kind", "smb-only",
                            "--address", address, "--user", MIGRATION_USER,
                            "--password-env", "LAB_SMB_PASSWORD")
    assert code == 0 and answer["name"] == name, answer


def run_transfer(env: dict, job: str) -> tuple[int, list]:
    return sms_json(env, "transfer", "run", "--job", job, "--checksum", "sha256", "--retries", "0",
                    "--wait")


def test_whole_migration_through_the_cli_with_json_and_exit_codes(samba_factory, tmp_path):
    source, destination = samba_factory("clisrc"), samba_factory("clidst")
    files = {f"dir{d}/file{f}.txt": os.urandom(100 + 37 * f) for d in range(3) for f in range(5)}
    for relative, payload in files.items():
        target = source.shares["data"].path / relative
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(payload)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}
    env.update(SMS_STATE_DIR=str(tmp_path / "state"), LAB_SMB_PASSWORD=MIGRATION_PASSWORD)

    code, job = sms_json(env, "job", "create", "scripted")
    assert code == 0 and job["name"] == "scripted"
    add_server(env, "scripted", "src", "source", source.address)
    add_server(env, "scripted", "dst", "destination", destination.address)
    code, inventory = sms_json(env, "inventory", "run", "scripted", "--wait")
    assert code == 0, inventory
    assert sms_json(env, "job", "show", "scripted")[1]["state"] == "inventory"
    code, paired = sms_json(env, "transfer", "pair", "--job", "scripted", "--source", "src",
                            "--destination", "dst")
    assert code == 0 and paired["shares"] in ([], ["data"]), paired

    code, reports = run_transfer(env, "scripted")
    assert code == 0, reports
    [share] = reports[0]["shares"]
    assert share["share"] == "data" and share["clean"] is True
    assert share["copied"] >= len(files) and share["failed"] == 0 and share["missing"] == 0
    for relative, payload in files.items():
        assert (destination.shares["data"].path / relative).read_bytes() == payload
    assert sms_json(env, "job", "show", "scripted")[1]["state"] == "transfer"

    # A file held open without sharing on the source: completed with errors, exit code 1.
    with LabTree(source.address, "data") as lab:
        holder = Open(lab.tree, "dir1\\file2.txt")
        holder.create(ImpersonationLevel.Impersonation, FILE_READ_DATA | SYNCHRONIZE, 0x80,
                      0, CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
        (source.shares["data"].path / "dir1" / "file2.txt").write_bytes(b"changed while locked")
        code, reports = run_transfer(env, "scripted")
        holder.close()
    assert code == 1, reports
    [share] = reports[0]["shares"]
    assert share["failed"] == 1 and share["clean"] is False

    # The destination refuses the credentials: the run fails, exit code 2 or above.
    env_bad = dict(env, LAB_SMB_PASSWORD="not-the-password")
    add_server(env_bad, "scripted", "dst-bad", "destination", destination.address)
    code, _ = sms_json(env, "transfer", "pair", "--job", "scripted", "--source", "src",
                       "--destination", "dst-bad")
    assert code == 0
    code, pairings = sms_json(env, "transfer", "list", "--job", "scripted")
    assert code == 0
    done = subprocess.run([str(SMS), "transfer", "run", "--job", "scripted", "--retries", "0",
                           "--wait", "--json"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode >= 2, done.stdout + done.stderr
    assert "not-the-password" not in done.stdout + done.stderr
