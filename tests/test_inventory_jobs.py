"""Jobs and servers through ``sms job`` and ``sms server``: passwords only from a prompt,
standard input or a named variable, stored encrypted, never shown; an event per action."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from common.crypto import decrypt_secret
from common.db import session_scope
from common.models import Event, Server
from common.settings import Settings
from tests.inventory_lab import sms

SMB_PASSWORD = "Smb-Secret-1!"
SSH_PASSWORD = "Ssh-Secret-2!"
WINRM_PASSWORD = "WinRM-Secret-3!"


@pytest.fixture
def env(tmp_path):
    environment = {"SMS_STATE_DIR": str(tmp_path / "state")}
    sms(environment, "db", "upgrade")
    return environment


def test_job_and_servers_round_trip(env, tmp_path):
    state = tmp_path / "state"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    created = json.loads(sms(env, "job", "create", "move-fs01", "--description", "FS01 to FS02", "--json").stdout)
    assert created["name"] == "move-fs01" and created["state"] == "draft" and created["servers"] == []

    samba = sms({**env, "FS01_SMB": SMB_PASSWORD}, "server", "add", "move-fs01", "fs01", "--kind", "samba",
                "--address", "fs01.example.test", "--user", "LAB\\mig", "--password-env", "FS01_SMB",
                "--ssh-user", "admin", "--ssh-password-stdin", "--ssh-port", "2222",
                "--known-hosts", str(known_hosts), "--smb-conf", "/etc/samba/other.conf", "--json",
                stdin=SSH_PASSWORD + "\n")
    windows = sms({**env, "WINRM_PW": WINRM_PASSWORD}, "server", "add", "1", "fs02", "--kind", "windows",
                  "--role", "destination", "--address", "10.0.0.2", "--port", "4455", "--user", "LAB\\mig",
                  "--password-stdin", "--winrm-transport", "kerberos", "--winrm-http",
                  "--winrm-password-env", "WINRM_PW", "--json", stdin=SMB_PASSWORD + "\n")
    nas = sms(env, "server", "add", "move-fs01", "nas", "--kind", "smb-only", "--address", "10.0.0.3",
              "--user", "mig", "--password-stdin", "--json", stdin=SMB_PASSWORD + "\n")
    for result in (samba, windows, nas):
        assert result.returncode == 0, result.stderr
        for secret in (SMB_PASSWORD, SSH_PASSWORD, WINRM_PASSWORD):
            assert secret not in result.stdout + result.stderr

    shown = json.loads(sms(env, "server", "show", "move-fs01", "fs01", "--json").stdout)
    assert shown["role"] == "source" and shown["kind"] == "samba" and shown["username"] == "LAB\\mig"
    assert shown["password"] == "(stored, encrypted)"
    assert shown["management"] == {
        "ssh_host": None, "ssh_port": 2222, "ssh_user": "admin", "known_hosts": str(known_hosts),
        "key_file": None, "smb_conf": "/etc/samba/other.conf", "ssh_password": "(stored, encrypted)"}
    listed = json.loads(sms(env, "server", "list", "move-fs01", "--json").stdout)
    assert [(s["name"], s["role"], s["kind"], s["port"]) for s in listed] == [
        ("fs01", "source", "samba", 445), ("fs02", "destination", "windows", 4455),
        ("nas", "source", "smb-only", 445)]
    fs02 = listed[1]["management"]
    assert (fs02["winrm_transport"], fs02["winrm_https"], fs02["winrm_password"]) == (
        "kerberos", False, "(stored, encrypted)")

    settings = Settings(state_dir=state)
    with session_scope(f"sqlite:///{state / 'sms.sqlite'}") as session:
        servers = {s.name: s for s in session.scalars(select(Server))}
        kinds = [e.kind for e in session.scalars(select(Event).order_by(Event.id))]
    for server in servers.values():
        assert decrypt_secret(server.credential, settings) == SMB_PASSWORD
        assert SMB_PASSWORD.encode() not in server.credential
    assert decrypt_secret(servers["fs01"].management["ssh_password"].encode(), settings) == SSH_PASSWORD
    assert decrypt_secret(servers["fs02"].management["winrm_password"].encode(), settings) == WINRM_PASSWORD
    assert kinds == ["job.created", "server.added", "server.added", "server.added"]
    database = (state / "sms.sqlite").read_bytes()
    for secret in (SMB_PASSWORD, SSH_PASSWORD, WINRM_PASSWORD):
        assert secret.encode() not in database

    jobs = json.loads(sms(env, "job", "list", "--json").stdout)
    assert [(j["name"], len(j["servers"])) for j in jobs] == [("move-fs01", 3)]
    human = sms({**env, "COLUMNS": "200"}, "job", "show", "move-fs01").stdout
    assert "fs01" in human and "server.added" in human and SMB_PASSWORD not in human


def test_refusals_say_why(env, tmp_path):
    sms(env, "job", "create", "j")
    duplicate = sms(env, "job", "create", "j", check=False)
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    no_ssh = sms(env, "server", "add", "j", "s", "--kind", "samba", "--address", "a", "--user", "u",
                 "--password-stdin", stdin="pw\n", check=False)
    assert no_ssh.returncode == 2 and "--ssh-user and --known-hosts" in no_ssh.stderr
    missing_env = sms(env, "server", "add", "j", "s", "--kind", "smb-only", "--address", "a", "--user", "u",
                      "--password-env", "NOT_SET_ANYWHERE", check=False)
    assert missing_env.returncode == 2 and "NOT_SET_ANYWHERE" in missing_env.stderr
    plaintext = sms({**env, "PW": "x"}, "server", "add", "j", "w", "--kind", "windows", "--address", "a",
                    "--user", "u", "--password-env", "PW", "--winrm-transport", "basic", check=False)
    assert plaintext.returncode == 2 and "Basic and plaintext are refused" in plaintext.stderr
    unknown = sms(env, "server", "list", "nope", check=False)
    assert unknown.returncode == 2 and "no job 'nope'" in unknown.stderr
