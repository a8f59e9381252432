"""The REST API against a real job database (SQLite, and PostgreSQL), real lab smbd servers
and real ``sms transfer drive`` / ``sms-worker`` processes.

Auth: every endpoint but health answers 401 without the right bearer token; the API will
not be built without a token; ``sms serve`` generates one into the state directory (0600)
and never prints it. Bad input: 404 naming the missing job/server/run, 422 listing the
allowed values of an enum or naming the missing field, 409 for duplicates. A password
given to the API never comes back in any response, not even in a validation error.
A whole migration through the API: job, servers, inventory, pairing, transfer run,
progress, reconciliation and CSV logs.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import csv
import io
import os
import uuid
import signal
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from common.crypto import decrypt_secret
from common.db import session_scope
from common.models import (
    Batch,
    BatchState,
    CutoverRun,
    CutoverStage,
    Job,
    Pairing,
    RunState,
    Server,
    Share,
    TransferRun,
    utcnow,
)
from common.settings import Settings, get_settings
from orchestrator.api import create_app
from orchestrator.api.auth import ApiConfigurationError, resolve_api_token
from orchestrator.database import upgrade_to_head
from orchestrator.inventory.service import wait_for_scans
from orchestrator.worker import start_local_worker
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER
from tests.lab.services import free_port
from tests.lab.smbio import LabTree
from tests.transfer_support import use_settings

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMB_SECRET = "Smb-Secret-Api-1!"
SSH_SECRET = "Ssh-Secret-Api-2!"
WINRM_SECRET = "WinRM-Secret-Api-3!"
SECRETS = (SMB_SECRET, SSH_SECRET, WINRM_SECRET)


def make_client(monkeypatch, tmp_path, database_url: str | None = None, **extra: str) -> TestClient:
    """A client of an API on a fresh, upgraded job database with this test's settings."""
    values = {"SMS_STATE_DIR": str(tmp_path / "state"), "SMS_API_TOKEN": TOKEN, **extra}
    if database_url:
        values["SMS_DATABASE_URL"] = database_url
    use_settings(monkeypatch, **values)
    upgrade_to_head(get_settings().database_url)
    return TestClient(create_app(get_settings()))


@pytest.fixture
def client(monkeypatch, tmp_path):
    with make_client(monkeypatch, tmp_path) as test_client:
        yield test_client


def samba_server(name: str, **overrides) -> dict:
    known_hosts = overrides.pop("known_hosts")
    body = {"name": name, "role": "source", "kind": "samba", "address": f"{name}.example.test",
            "username": "LAB\\mig", "password": SMB_SECRET,
            "samba": {"ssh_user": "admin", "known_hosts": known_hosts, "ssh_password": SSH_SECRET}}
    body.update(overrides)
    return body


def windows_server(name: str) -> dict:
    return {"name": name, "role": "destination", "kind": "windows", "address": "10.0.0.2", "port": 4455,
            "username": "LAB\\mig", "password": SMB_SECRET,
            "windows": {"transport": "kerberos", "use_https": False, "password": WINRM_SECRET}}


# --- auth ----------------------------------------------------------------------------------

def test_health_is_open_and_every_other_endpoint_needs_the_token(client):
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok"}

    schema = client.get("/api/openapi.json", headers=AUTH)
    assert schema.status_code == 200
    operations = [(method, path) for path, item in schema.json()["paths"].items() for method in item]
    assert len(operations) > 15
    for method, path in operations:
        if path == "/api/health":
            continue
        path = (path.replace("{job}", "j").replace("{server}", "s").replace("{run_id}", "1")
                .replace("{cutover_id}", "1").replace("{kind}", "transfer"))
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}):
            answer = client.request(method.upper(), path, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in answer.text

    spec = schema.json()
    assert "/api/jobs/{job}/transfers/{run_id}/logs/{kind}.csv" in spec["paths"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    password = spec["components"]["schemas"]["ServerIn"]["properties"]["password"]
    assert password["writeOnly"] is True
    assert "password" not in spec["components"]["schemas"]["ServerOut"]["properties"]
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_api_refuses_to_start_without_a_usable_token(tmp_path):
    settings = Settings(state_dir=tmp_path / "state", api_token="")
    with pytest.raises(ApiConfigurationError, match="SMS_API_TOKEN"):
        create_app(settings)
    with pytest.raises(ApiConfigurationError, match="shorter than 16"):
        create_app(Settings(state_dir=tmp_path / "state", api_token="short"))

    token, source = resolve_api_token(settings, create=True)
    path = tmp_path / "state" / "api.token"
    assert source == str(path) and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_api_token(settings, create=True) == (token, source)  # kept, not regenerated
    app = create_app(settings)
    with TestClient(app) as test_client:
        headers = {"Authorization": f"Bearer {token}"}
        not_upgraded = test_client.get("/api/jobs", headers=headers)
        assert not_upgraded.status_code == 503 and "sms db upgrade" in not_upgraded.json()["detail"]
        upgrade_to_head(settings.database_url)
        assert test_client.get("/api/jobs", headers=headers).status_code == 200
    path.chmod(0o644)
    with pytest.raises(ApiConfigurationError, match="chmod 600"):
        create_app(settings)


def test_sms_serve_generates_a_private_token_and_serves(tmp_path):
    """``sms serve`` as a real process: a token file made 0600, its path printed (never
    the token), health open, the API closed without it and open with it."""
    port = free_port()
    state = tmp_path / "state"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SMS_")}
    env.update(SMS_STATE_DIR=str(state), SMS_API_PORT=str(port))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve"],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        assert health.status_code == 200
        token_file = state / "api.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert httpx.get(f"{base}/api/jobs", timeout=5).status_code == 401
        answer = httpx.get(f"{base}/api/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert answer.status_code == 200 and answer.json() == []
        assert token not in " ".join(open(f"/proc/{process.pid}/cmdline").read().split("\0"))
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    output = log.read_text()
    assert str(token_file) in output and token not in output


# --- bad input -----------------------------------------------------------------------------

def test_bad_input_gets_a_4xx_that_says_what_to_fix(client, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    assert client.post("/api/jobs", json={"name": "move"}, headers=AUTH).status_code == 201

    for path in ("/api/jobs/nope", "/api/jobs/nope/servers", "/api/jobs/nope/inventory",
                 "/api/jobs/nope/transfers", "/api/jobs/nope/cutovers"):
        answer = client.get(path, headers=AUTH)
        assert answer.status_code == 404 and answer.json()["detail"] == "job 'nope' not found", path
    missing_job = client.post("/api/jobs/nope/servers", json=samba_server("fs1", known_hosts=str(known_hosts)),
                              headers=AUTH)
    assert missing_job.status_code == 404 and missing_job.json()["detail"] == "job 'nope' not found"
    answer = client.get("/api/jobs/move/servers/ghost", headers=AUTH)
    assert answer.status_code == 404 and answer.json()["detail"] == "server 'ghost' not found in job 'move'"
    for path in ("/api/jobs/move/transfers/99", "/api/jobs/move/transfers/99/reconciliation",
                 "/api/jobs/move/transfers/99/logs/transfer.csv"):
        answer = client.get(path, headers=AUTH)
        assert answer.status_code == 404 and answer.json()["detail"] == "transfer run 99 not found in job 'move'"

    bad_kind = client.post("/api/jobs/move/servers", headers=AUTH, json={
        "name": "fs1", "kind": "netware", "address": "a", "username": "u", "password": SMB_SECRET})
    assert bad_kind.status_code == 422
    detail = bad_kind.json()["detail"]
    assert "body.kind" in detail and "'windows', 'samba' or 'smb-only'" in detail
    bad_role = client.post("/api/jobs/move/servers", headers=AUTH, json={
        "name": "fs1", "role": "middle", "kind": "smb-only", "address": "a", "username": "u"})
    assert bad_role.status_code == 422 and "'source' or 'destination'" in bad_role.json()["detail"]

    missing = client.post("/api/jobs/move/servers", headers=AUTH,
                          json={"name": "fs1", "kind": "smb-only", "password": SMB_SECRET})
    assert missing.status_code == 422
    assert "body.address: field required" in missing.json()["detail"]
    assert "body.username: field required" in missing.json()["detail"]
    assert SMB_SECRET not in missing.text  # the input is never echoed

    unknown_field = client.post("/api/jobs", headers=AUTH, json={"name": "x", "colour": "red"})
    assert unknown_field.status_code == 422 and "body.colour: unknown field" in unknown_field.json()["detail"]
    digits = client.post("/api/jobs", headers=AUTH, json={"name": "123"})
    assert digits.status_code == 422 and "only digits" in digits.json()["detail"]
    port = client.post("/api/jobs/move/servers", headers=AUTH, json={
        "name": "fs1", "kind": "smb-only", "address": "a", "username": "u", "port": 70000})
    assert port.status_code == 422 and "body.port" in port.json()["detail"]
    not_json = client.post("/api/jobs", headers={**AUTH, "Content-Type": "application/json"}, content=b"{nope")
    assert not_json.status_code == 422

    duplicate = client.post("/api/jobs", json={"name": "move"}, headers=AUTH)
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["detail"]
    samba_without_ssh = client.post("/api/jobs/move/servers", headers=AUTH, json={
        "name": "fs1", "kind": "samba", "address": "a", "username": "u", "password": SMB_SECRET})
    assert samba_without_ssh.status_code == 400 and "needs SSH access" in samba_without_ssh.json()["detail"]
    assert client.post("/api/jobs/move/servers", headers=AUTH,
                       json=samba_server("fs1", known_hosts=str(known_hosts))).status_code == 201
    again = client.post("/api/jobs/move/servers", headers=AUTH, json=samba_server("fs1", known_hosts=str(known_hosts)))
    assert again.status_code == 409 and again.json()["detail"] == "job 'move' already has a server named 'fs1'"

    bad_transport = client.post("/api/jobs/move/servers", headers=AUTH, json={
        **windows_server("fs2"), "windows": {"transport": "basic"}})
    assert bad_transport.status_code == 422 and "'ntlm', 'kerberos' or 'credssp'" in bad_transport.json()["detail"]
    bad_checksum = client.post("/api/jobs/move/transfers", headers=AUTH, json={"checksum": "md5"})
    assert bad_checksum.status_code == 422 and "'none', 'fast' or 'sha256'" in bad_checksum.json()["detail"]
    no_pairing = client.post("/api/jobs/move/transfers", headers=AUTH, json={})
    assert no_pairing.status_code == 409 and "has no pairing" in no_pairing.json()["detail"]
    unknown_pairing = client.post("/api/jobs/move/transfers", headers=AUTH, json={"pairing_ids": [42]})
    assert unknown_pairing.status_code == 404 and unknown_pairing.json()["detail"] == "pairing 42 not found in job 'move'"
    ghost_pair = client.post("/api/jobs/move/pairings", headers=AUTH, json={"source": "fs1", "destination": "ghost"})
    assert ghost_pair.status_code == 404 and "server 'ghost' not found" in ghost_pair.json()["detail"]
    wrong_roles = client.post("/api/jobs/move/pairings", headers=AUTH, json={"source": "fs1", "destination": "fs1"})
    assert wrong_roles.status_code == 400 and "must be a source" in wrong_roles.json()["detail"]
    bad_log = client.get("/api/jobs/move/transfers/1/logs/everything.csv", headers=AUTH)
    assert bad_log.status_code == 422 and "'transfer' or 'errors'" in bad_log.json()["detail"]


# --- secrets and round trips ------------------------------------------------------------------

def round_trip(client: TestClient, tmp_path: Path) -> None:
    """Create a job and three servers through the API, read everything back, and check
    that no response ever holds a password."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    responses: list[httpx.Response] = []

    def call(method: str, path: str, expected: int, **kwargs) -> dict | list:
        answer = client.request(method, path, headers=AUTH, **kwargs)
        responses.append(answer)
        assert answer.status_code == expected, answer.text
        return answer.json()

    created = call("POST", "/api/jobs", 201, json={"name": "move-fs01", "description": "FS01 to FS02"})
    assert created["name"] == "move-fs01" and created["state"] == "draft" and created["servers"] == []
    samba = call("POST", "/api/jobs/move-fs01/servers", 201,
                 json=samba_server("fs01", known_hosts=str(known_hosts), port=1445))
    windows = call("POST", f"/api/jobs/{created['id']}/servers", 201, json=windows_server("fs02"))
    nas = call("POST", "/api/jobs/move-fs01/servers", 201, json={
        "name": "nas", "kind": "smb-only", "address": "10.0.0.3", "username": "mig"})
    call("POST", "/api/jobs/move-fs01/servers", 422, json={**windows_server("bad"), "port": "not a port"})

    assert samba["password_stored"] is True and nas["password_stored"] is False
    assert samba["management"] == {
        "ssh_host": None, "ssh_port": 22, "ssh_user": "admin", "known_hosts": str(known_hosts.resolve()),
        "key_file": None, "smb_conf": None, "ssh_password": "(stored, encrypted)"}
    assert windows["management"]["winrm_transport"] == "kerberos"
    assert windows["management"]["winrm_https"] is False
    assert windows["management"]["winrm_password"] == "(stored, encrypted)"

    shown = call("GET", "/api/jobs/move-fs01", 200)
    assert shown["description"] == "FS01 to FS02"
    assert [(s["name"], s["role"], s["kind"], s["port"]) for s in shown["servers"]] == [
        ("fs01", "source", "samba", 1445), ("fs02", "destination", "windows", 4455), ("nas", "source", "smb-only", 445)]
    assert [e["kind"] for e in shown["events"]] == ["job.created", "server.added", "server.added", "server.added"]
    assert call("GET", "/api/jobs/move-fs01/servers", 200) == shown["servers"]
    assert call("GET", f"/api/jobs/move-fs01/servers/{windows['id']}", 200) == windows
    assert call("GET", "/api/jobs/move-fs01/servers/fs01", 200) == samba
    assert [job["name"] for job in call("GET", "/api/jobs", 200)] == ["move-fs01"]
    inventory = call("GET", "/api/jobs/move-fs01/inventory", 200)
    assert [s["name"] for s in inventory["servers"]] == ["fs01", "nas"]  # sources only
    assert inventory["counts"]["shares"] == 0 and inventory["servers"][0]["facts"] is None
    call("GET", "/api/openapi.json", 200)

    for answer in responses:
        for value in SECRETS:
            assert value not in answer.text, (answer.request.url, value)
    with session_scope() as session:
        stored = {server.name: server for server in session.query(Server)}
        assert decrypt_secret(stored["fs01"].credential) == SMB_SECRET
        assert SSH_SECRET not in str(stored["fs01"].management)
        assert decrypt_secret(stored["fs02"].management["winrm_password"].encode()) == WINRM_SECRET


def test_round_trip_on_sqlite_and_no_password_in_any_response(client, tmp_path):
    round_trip(client, tmp_path)


def test_round_trip_on_postgresql(monkeypatch, tmp_path, fresh_postgres_url):
    with make_client(monkeypatch, tmp_path, fresh_postgres_url) as test_client:
        assert get_settings().database_url.startswith("postgresql")
        round_trip(test_client, tmp_path)
        assert test_client.get("/api/health").json() == {"status": "ok", "database": "ok"}


def test_cutover_status_shows_stages(client):
    """Cutover runs are shown with their stages (the API reads them; it does not run them)."""
    assert client.post("/api/jobs", json={"name": "cut"}, headers=AUTH).status_code == 201
    for name, role in (("src", "source"), ("dst", "destination")):
        assert client.post("/api/jobs/cut/servers", headers=AUTH, json={
            "name": name, "role": role, "kind": "smb-only", "address": "10.0.0.9", "username": "u"}).status_code == 201
    pairing = client.post("/api/jobs/cut/pairings", headers=AUTH,
                          json={"source": "src", "destination": "dst", "shares": ["data"]}).json()
    with session_scope() as session:
        run = CutoverRun(job_id=pairing["job_id"], pairing_id=pairing["id"], state=RunState.FAILED,
                         error="stage rename failed: access denied")
        session.add(run)
        session.flush()
        session.add_all([
            CutoverStage(cutover_run_id=run.id, position=1, name="preflight", state=RunState.SUCCEEDED,
                         progress=1.0, message="ok"),
            CutoverStage(cutover_run_id=run.id, position=2, name="source_identity", state=RunState.FAILED,
                         progress=0.5, message="access denied")])
        run_id = run.id
        assert session.get(Pairing, pairing["id"]).shares == ["data"]
    [listed] = client.get("/api/jobs/cut/cutovers", headers=AUTH).json()
    assert listed["state"] == "failed" and listed["error"] == "stage rename failed: access denied"
    assert [(s["name"], s["state"], s["progress"]) for s in listed["stages"]] == [
        ("preflight", "succeeded", 1.0), ("source_identity", "failed", 0.5)]
    assert client.get(f"/api/jobs/cut/cutovers/{run_id}", headers=AUTH).json() == listed
    missing = client.get("/api/jobs/cut/cutovers/999", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["detail"] == "cutover run 999 not found in job 'cut'"


# --- a whole migration through the API ---------------------------------------------------------

def driver_exits(pid: int, timeout: float) -> bool:
    """Wait until the driver process (the API's child, reaped by the API) is gone."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return not Path(f"/proc/{pid}").exists()


def stop_driver(pid: int) -> None:
    """Stop a driver this test started (its own process group: it and its workers)."""
    if not driver_exits(pid, timeout=0):
        os.killpg(pid, signal.SIGTERM)
        driver_exits(pid, timeout=30)


def test_inventory_transfer_reconciliation_and_logs_through_the_api(samba_factory, monkeypatch, tmp_path, request):
    """Two lab smbd servers, the embedded defaults: the transfer is driven by a real
    ``sms transfer drive`` process that starts its own ``sms-worker``."""
    src, dst = samba_factory("src"), samba_factory("dst")
    with LabTree(src.address, "data") as lab:
        lab.mkdir("reports")
        for number in range(6):
            lab.write_file(f"reports\\r{number}.txt", f"report {number}\n".encode() * (number + 1))
        lab.write_file("top.txt", b"top\n")
    with make_client(monkeypatch, tmp_path, SMS_BATCH_MAX_FILES="3", SMS_WORKER_CONCURRENCY="1") as client:
        assert client.post("/api/jobs", json={"name": "lab"}, headers=AUTH).status_code == 201
        for name, samba, role in (("src", src, "source"), ("dst", dst, "destination")):
            added = client.post("/api/jobs/lab/servers", headers=AUTH, json={
                "name": name, "role": role, "kind": "smb-only", "address": samba.address,
                "username": MIGRATION_USER, "password": MIGRATION_PASSWORD})
            assert added.status_code == 201, added.text

        report = client.post("/api/jobs/lab/inventory", headers=AUTH, json={"scan_files": False})
        assert report.status_code == 200, report.text
        assert report.json()["error_count"] == 0 and report.json()["scans_queued"] == 0
        [server] = report.json()["servers"]
        assert server["name"] == "src" and "data" in server["shares"]
        inventory = client.get("/api/jobs/lab/inventory", headers=AUTH).json()
        assert inventory["state"] == "inventory" and inventory["counts"]["servers"] == 1
        [data] = [share for share in inventory["servers"][0]["shares"] if share["name"] == "data"]
        assert data["path"] and data["security_descriptor"] and data["scan"]["state"] == "not scanned"

        # Again with the file scan, published by the API to a real orchestrator worker.
        scanner = start_local_worker(1)
        request.addfinalizer(scanner.stop)
        report = client.post("/api/jobs/lab/inventory", headers=AUTH, json={})
        assert report.status_code == 200 and report.json()["scans_queued"] >= 1, report.text
        [server] = report.json()["servers"]
        assert wait_for_scans(server["scans_started"], timeout=120, alive=scanner.alive)
        scanner.stop()
        inventory = client.get("/api/jobs/lab/inventory", headers=AUTH).json()
        [data] = [share for share in inventory["servers"][0]["shares"] if share["name"] == "data"]
        assert data["scan"]["state"] == "complete" and data["scan"]["files"] == 7
        assert data["scan"]["directories"] >= 1 and data["scan"]["errors"] == 0
        assert inventory["counts"]["files"] >= 7 and inventory["counts"]["scan_errors"] == 0

        pairing = client.post("/api/jobs/lab/pairings", headers=AUTH,
                              json={"source": "src", "destination": "dst", "shares": ["data"]})
        assert pairing.status_code == 201 and pairing.json()["shares"] == ["data"]
        started = client.post("/api/jobs/lab/transfers", headers=AUTH, json={"checksum": "sha256", "retries": 0})
        assert started.status_code == 202, started.text
        [run_id] = started.json()["run_ids"]
        driver = started.json()["driver_pid"]
        request.addfinalizer(lambda: stop_driver(driver))
        again = client.post("/api/jobs/lab/transfers", headers=AUTH, json={})
        assert again.status_code == 409 and "has not finished" in again.json()["detail"]

        deadline = time.monotonic() + 240
        while True:
            progress = client.get(f"/api/jobs/lab/transfers/{run_id}", headers=AUTH).json()
            if progress["state"] not in ("pending", "running") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert progress["state"] == "succeeded", (progress, Path(started.json()["driver_log"]).read_text())
        assert progress["files_copied"] == 7 and progress["batches"]["done"] >= 3
        reconciliation = client.get(f"/api/jobs/lab/transfers/{run_id}/reconciliation", headers=AUTH).json()
        assert reconciliation["clean"] is True
        [share] = reconciliation["shares"]
        assert share["files"] == 7 and share["verified"] == 7 and share["missing"] == 0
        listed = client.get("/api/jobs/lab/transfers", headers=AUTH).json()
        assert [run["id"] for run in listed] == [run_id]

        log = client.get(f"/api/jobs/lab/transfers/{run_id}/logs/transfer.csv", headers=AUTH)
        assert log.status_code == 200 and log.headers["content-type"].startswith("text/csv")
        assert f'filename="transfer-run-{run_id}.csv"' in log.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(log.text)))
        files = {row["path"]: row for row in rows if row["type"] == "file"}
        assert set(files) == {"top.txt"} | {f"reports\\r{n}.txt" for n in range(6)}
        assert all(row["result"] == "verified" and row["hash_algorithm"] == "sha256" for row in files.values())
        errors = client.get(f"/api/jobs/lab/transfers/{run_id}/logs/errors.csv", headers=AUTH)
        assert errors.status_code == 200 and list(csv.DictReader(io.StringIO(errors.text))) == []
        ended = client.post(f"/api/jobs/lab/transfers/{run_id}/cancel", headers=AUTH)
        assert ended.status_code == 409 and "already ended" in ended.json()["detail"]
        with LabTree(dst.address, "data") as lab:
            assert b"".join(lab.read_chunks("reports\\r5.txt")) == b"report 5\n" * 6
        for answer in (report, started, log):
            assert MIGRATION_PASSWORD not in answer.text
        assert driver_exits(driver, timeout=60), "the driver did not exit after its run ended"


def test_serving_app_runs_the_lease_reaper(monkeypatch, tmp_path, redis_url):
    """``create_app(reaper=True)`` (what ``sms serve`` builds) re-dispatches a batch whose
    worker's lease expired: the row returns to queued and the message reaches Redis."""
    prefix = f"apitest{uuid.uuid4().hex[:8]}"
    values = {"SMS_STATE_DIR": str(tmp_path / "state"), "SMS_API_TOKEN": TOKEN, "SMS_BROKER_URL": redis_url,
              "SMS_QUEUE_PREFIX": prefix, "SMS_BATCH_LEASE_SECONDS": "5"}
    use_settings(monkeypatch, **values)
    settings = get_settings()
    upgrade_to_head(settings.database_url)
    queue = settings.destination_queue("dst")
    with session_scope() as session:
        job = Job(name="reap")
        session.add(job)
        session.flush()
        source = Server(job_id=job.id, name="src", role="source", kind="smb-only", address="a", username="u")
        destination = Server(job_id=job.id, name="dst", role="destination", kind="smb-only", address="b",
                             username="u")
        session.add_all([source, destination])
        session.flush()
        pairing = Pairing(job_id=job.id, source_server_id=source.id, destination_server_id=destination.id)
        share = Share(server_id=source.id, name="data")
        session.add_all([pairing, share])
        session.flush()
        run = TransferRun(job_id=job.id, pairing_id=pairing.id, state=RunState.RUNNING)
        session.add(run)
        session.flush()
        batch = Batch(run_id=run.id, share_id=share.id, state=BatchState.RUNNING, lease_owner="dead-worker",
                      lease_expires_at=utcnow() - timedelta(seconds=30), queue=queue,
                      task_name="proxy_worker.tasks.probe_batch", dispatched_at=utcnow() - timedelta(minutes=5))
        session.add(batch)
        session.flush()
        batch_id = batch.id
    broker = redis.Redis.from_url(redis_url)
    try:
        with TestClient(create_app(settings, reaper=True)) as test_client:
            assert test_client.get("/api/health").status_code == 200
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with session_scope() as session:
                    row = session.get(Batch, batch_id)
                    if row.state == BatchState.QUEUED:
                        break
                time.sleep(0.3)
            assert row.state == BatchState.QUEUED and row.lease_owner is None, row.state
            deadline = time.monotonic() + 10
            while broker.llen(queue) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert broker.llen(queue) == 1
    finally:
        broker.delete(queue)
