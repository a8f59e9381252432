"""Each inventory failure is recorded with a message an administrator can act on, and the
inventory of everything else goes on.

One job holds a healthy Samba source next to sources that fail in every way the issue
names: a wrong SSH password, an SSH host key that is not in known_hosts, a wrong SMB
password (managed and SMB-only), an SMB address where nothing answers, and an account
that may not read one folder. One inventory run (files scanned in this process, against
a real SQLite job database) must store everything that could be read and an error event
for each failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from common.db import session_scope
from common.models import Event, EventLevel, FileRecord, FileState, LocalPrincipal, Server, ServerFacts, Share
from common.settings import reset_settings_cache
from orchestrator.database import upgrade_to_head
from orchestrator.inventory.scan import DirectoryTask, ScanOptions
from orchestrator.inventory.service import InventoryOptions, inventory_view, run_inventory
from orchestrator.inventory.tasks import run_scans_inline, task_messages
from orchestrator.jobs import SambaManagement, add_server, create_job
from tests.inventory_lab import sms
from tests.lab.fixtures import unavailable
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, LabUnavailable, SambaServer

READER, READER_PASSWORD = "smsinvrdr", "Reader-Passw0rd!"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A Samba server whose share has a folder only root may read."""
    try:
        server = SambaServer("inverr", tmp_path_factory.mktemp("samba-inverr"))
    except LabUnavailable as exc:
        unavailable(str(exc))
    # The share lives outside pytest's private (0700) temporary tree, so that an account
    # other than root can reach it.
    share_root = Path(tempfile.mkdtemp(prefix="sms-inverr-"))
    os.chmod(share_root, 0o755)
    share = server.add_share("data", path=share_root / "data")
    (share.path / "open").mkdir()
    (share.path / "open" / "a.txt").write_bytes(b"a" * 10)
    (share.path / "top.txt").write_bytes(b"t" * 7)
    (share.path / "open" / "up").symlink_to("..")  # a link loop back to the share root
    secret = share.path / "secret"
    secret.mkdir()
    (secret / "hidden.txt").write_bytes(b"s" * 3)
    os.chmod(secret, 0o700)
    os.chmod(share.path, 0o755)
    try:
        server.start()
        server.add_user(READER, READER_PASSWORD)
    except LabUnavailable as exc:
        unavailable(str(exc))
    yield server
    server.destroy()
    shutil.rmtree(share_root, ignore_errors=True)
    subprocess.run(["userdel", READER], capture_output=True)


@pytest.fixture
def database(tmp_path, monkeypatch):
    """A job database at head, and settings pointing at it with a credential key."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SMS_DATABASE_URL", url)
    monkeypatch.setenv("SMS_SECRET_KEY", Fernet.generate_key().decode())
    reset_settings_cache()
    upgrade_to_head(url)
    yield url
    reset_settings_cache()


def _unused_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def test_every_failure_is_recorded_and_the_rest_goes_on(lab, sshd_server, database, tmp_path):
    empty_known_hosts = tmp_path / "empty_known_hosts"
    empty_known_hosts.write_text("")

    def samba(user: str, *, password: str | None = None, known_hosts=None) -> SambaManagement:
        return SambaManagement(
            ssh_user=user, ssh_host=sshd_server.host, ssh_port=sshd_server.port,
            known_hosts=str(known_hosts or sshd_server.known_hosts),
            key_file=None if password else str(sshd_server.client_key), password=password,
            smb_conf=str(lab.conf))

    with session_scope(database) as session:
        job = create_job(session, "errors")
        common = {"role": "source", "address": lab.address}
        add_server(session, job, name="healthy", kind="samba", username=MIGRATION_USER,
                   password=MIGRATION_PASSWORD, samba=samba("root"), **common)
        add_server(session, job, name="bad-ssh-password", kind="samba", username=MIGRATION_USER,
                   password=MIGRATION_PASSWORD, samba=samba(sshd_server.user, password="not-the-password"),
                   **common)
        add_server(session, job, name="unknown-host-key", kind="samba", username=MIGRATION_USER,
                   password=MIGRATION_PASSWORD, samba=samba("root", known_hosts=empty_known_hosts), **common)
        add_server(session, job, name="bad-smb-password", kind="samba", username=MIGRATION_USER,
                   password="wrong-smb-password", samba=samba("root"), **common)
        add_server(session, job, name="smb-bad-password", kind="smb-only", username=MIGRATION_USER,
                   password="wrong-smb-password", **common)
        add_server(session, job, name="unreachable", kind="smb-only", username=MIGRATION_USER,
                   password=MIGRATION_PASSWORD, role="source", address=lab.address,
                   port=_unused_port(lab.address))
        add_server(session, job, name="reader", kind="smb-only", username=READER,
                   password=READER_PASSWORD, **common)
        job_id = job.id

    report = run_inventory(job_id, InventoryOptions(), url=database, publish=run_scans_inline)
    errors = {server.name: server.errors for server in report.servers}

    with session_scope(database) as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        events = session.scalars(select(Event).where(Event.level == EventLevel.ERROR).order_by(Event.id)).all()
        by_server = {}
        for event in events:
            by_server.setdefault(event.server_id, []).append(event)

        def messages(name: str, loops: bool = False) -> list[str]:
            """Error events of a server (the share's link loop left out unless asked)."""
            return [e.message for e in by_server.get(servers[name].id, [])
                    if loops or "a link loop" not in e.message]

        def records(name: str) -> dict[str, FileRecord]:
            share = session.scalar(select(Share).where(Share.server_id == servers[name].id, Share.name == "data"))
            return {r.relative_path: r for r in session.scalars(
                select(FileRecord).where(FileRecord.share_id == share.id))} if share else {}

        # Healthy: everything, and the folder only root may read is read (admin account).
        assert errors["healthy"] == {}
        healthy = records("healthy")
        assert set(healthy) == {"", "open", "open\\a.txt", "open\\up", "top.txt", "secret",
                                "secret\\hidden.txt"}
        assert all(r.state is FileState.SCANNED for p, r in healthy.items() if p != "open\\up")
        # The link back to the root is recorded, not entered (the scan ends).
        loop = healthy["open\\up"]
        assert loop.is_dir and loop.state is FileState.FAILED
        assert loop.error_code == "STATUS_STOPPED_ON_SYMLINK" and "a link loop" in loop.error_message
        assert messages("healthy", loops=True) == [loop.error_message]

        # Wrong SSH password: the management error is recorded; the shares still come over
        # SMB and their files are scanned.
        [message] = messages("bad-ssh-password")
        assert f"SSH login as {sshd_server.user!r} was refused: check the password or key" in message
        assert set(records("bad-ssh-password")) == set(healthy)

        # Unknown host key: refused with the key's fingerprint; the rest goes on over SMB.
        [message] = messages("unknown-host-key")
        assert "is not in the known_hosts file" in message and "SHA256:" in message
        assert set(records("unknown-host-key")) == set(healthy)
        assert session.scalar(select(ServerFacts).where(ServerFacts.server_id == servers["unknown-host-key"].id)
                              ).extra["errors"]["management"] == message

        # Wrong SMB password on a managed server: facts, shares and accounts come over SSH;
        # the share descriptor and the scan fail with the logon status.
        bad_smb = messages("bad-smb-password")
        assert any("SMB logon as 'smsmig' refused (STATUS_LOGON_FAILURE)" in m for m in bad_smb)
        scan_failure = [m for m in bad_smb if "cannot log on" in m]
        assert scan_failure and "(STATUS_LOGON_FAILURE)" in scan_failure[0]
        assert "check the account name and password" in scan_failure[0]
        root = records("bad-smb-password")[""]
        assert root.state is FileState.FAILED and root.error_code == "STATUS_LOGON_FAILURE"
        assert session.scalars(select(LocalPrincipal).where(
            LocalPrincipal.server_id == servers["bad-smb-password"].id)).all()

        # Wrong SMB password, SMB only: nothing can be read; said so.
        [message] = messages("smb-bad-password")
        assert "refused" in message and "STATUS_LOGON_FAILURE" in message

        # Nothing listening: unreachable.
        [message] = messages("unreachable")
        assert "no SMB server answered" in message
        assert errors["unreachable"]

        # A folder the account may not read: one error with the status and the path,
        # every other entry scanned, and the share's scan complete.
        reader = records("reader")
        secret = reader["secret"]
        assert secret.state is FileState.FAILED and secret.error_code == "STATUS_ACCESS_DENIED"
        assert "cannot list folder 'secret'" in secret.error_message
        assert "may not read it" in secret.error_message
        assert "secret\\hidden.txt" not in reader
        assert {p for p, r in reader.items() if r.state is FileState.SCANNED} == {"", "open", "open\\a.txt", "top.txt"}
        assert reader["open\\up"].error_code == "STATUS_STOPPED_ON_SYMLINK"
        assert [m for m in messages("reader") if "secret" in m] == [secret.error_message]
        view = inventory_view(session, job_id)
    reader_view = next(s for s in view["servers"] if s["name"] == "reader")
    [data] = [s for s in reader_view["shares"] if s["name"] == "data"]
    assert data["scan"]["state"] == "complete" and data["scan"]["errors"] == 2
    assert data["scan"]["files"] == 2 and data["scan"]["directories"] == 3
    assert [f["status"] for f in data["scan"]["failed"]] == ["STATUS_STOPPED_ON_SYMLINK", "STATUS_ACCESS_DENIED"]
    for server in view["servers"]:
        for text in (str(server), str(errors)):
            assert MIGRATION_PASSWORD not in text and "wrong-smb-password" not in text
            assert "not-the-password" not in text and READER_PASSWORD not in text


def test_scan_messages_carry_no_secret(database, lab):
    """What a scan publishes is share id, path, a flag and options: never a credential."""
    with session_scope(database) as session:
        job = create_job(session, "messages")
        add_server(session, job, name="fs", kind="smb-only", role="source", address=lab.address,
                   username=MIGRATION_USER, password=MIGRATION_PASSWORD)
        job_id = job.id
    published: list[dict] = []

    def capture(tasks: list[DirectoryTask], options: ScanOptions) -> None:
        published.extend(task_messages(tasks, options))

    run_inventory(job_id, InventoryOptions(), url=database, publish=capture)
    assert published == [{"share_id": published[0]["share_id"],
                          "folders": [{"path": "", "fresh": True, "ancestors": []}],
                          "options": {"skip_excluded_folders": True}}]


def test_cli_inline_run_reports_scan_errors(lab, tmp_path):
    """``sms inventory run --inline`` scans in the CLI process, prints the share table, and
    exits 1 when the run completed with errors (here: the folder the reader may not read)."""
    env = {"SMS_STATE_DIR": str(tmp_path / "state"), "READER_PW": READER_PASSWORD, "COLUMNS": "250"}
    sms(env, "db", "upgrade")
    sms(env, "job", "create", "cli")
    sms(env, "server", "add", "cli", "reader", "--kind", "smb-only", "--address", lab.address,
        "--user", READER, "--password-env", "READER_PW")
    result = sms(env, "inventory", "run", "cli", "--inline")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "reader" in result.stdout and "complete" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "│ data" in line)
    assert [cell.strip() for cell in row.split("│")[4:9]] == ["complete", "2", "3", "17", "2"]
    shown = sms(env, "inventory", "show", "cli").stdout
    assert "STATUS_ACCESS_DENIED" in shown and "may not read it" in shown
    assert READER_PASSWORD not in result.stdout + shown
