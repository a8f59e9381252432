"""Cutover through the API (``/api/jobs/{job}/cutovers``) and the plan parsing of the CLI.

No namespace lab here (tests/test_cutover_netns.py drives a real cutover through the CLI
and the service): the source's SSH management points at a loopback port nothing listens
on, so pre-flight fails when it connects. That exercises, with a real job database and a
real ``sms cutover run|resume --wait`` driver process started by the API: plan (random
name, refused plans, a second plan of the same pairing), start, pre-flight failure with
its reason and the automatic rollback, resume, operator rollback, status, the states in
which each is refused, the token, and that no password ever comes back.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from common.settings import get_settings
from orchestrator.api import create_app
from orchestrator.cutover.plan import AddressMove, netbios_name_problem
from orchestrator.cutover.service import parse_address, parse_move, random_source_name
from orchestrator.cutover.stages import CutoverError
from orchestrator.database import upgrade_to_head
from tests.lab.services import free_port
from tests.transfer_support import use_settings

pytestmark = pytest.mark.timeout(120)

TOKEN = "cutover-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMB_SECRET = "Smb-Secret-Cutover-1!"
SSH_SECRET = "Ssh-Secret-Cutover-2!"
ADDRESS = "198.18.254.21"  # never configured anywhere: pre-flight stops before any change


@pytest.fixture
def api(monkeypatch, tmp_path):
    """An API client on a fresh job database with a job, two Samba servers and a pairing."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_API_TOKEN=TOKEN)
    upgrade_to_head(get_settings().database_url)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    with TestClient(create_app(get_settings())) as client:
        assert client.post("/api/jobs", json={"name": "j"}, headers=AUTH).status_code == 201
        for name, role in (("fs1", "source"), ("fs2", "destination")):
            body = {"name": name, "role": role, "kind": "samba", "address": ADDRESS if role == "source" else
                    "198.18.254.12", "username": "mig", "password": SMB_SECRET,
                    "samba": {"ssh_user": "root", "known_hosts": str(known_hosts), "ssh_host": "127.0.0.1",
                              "ssh_port": free_port(), "ssh_password": SSH_SECRET}}
            answer = client.post("/api/jobs/j/servers", json=body, headers=AUTH)
            assert answer.status_code == 201, answer.text
        answer = client.post("/api/jobs/j/pairings", json={"source": "fs1", "destination": "fs2",
                                                            "shares": ["data"]}, headers=AUTH)
        assert answer.status_code == 201, answer.text
        yield client


def plan_body(**overrides) -> dict:
    body = {"source": "fs1",
            "addresses": [{"address": ADDRESS, "prefix_length": 24, "source_interface": "eth0",
                           "destination_interface": "eth0"}],
            "source_new_address": "198.18.254.31", "source_new_prefix_length": 24, "timeout_seconds": 60}
    body.update(overrides)
    return body


def wait_until_stopped(client: TestClient, cutover_id: int, before: str | None = None,
                       timeout: float = 60) -> dict:
    """Poll the status until the driver process has stopped the run (failed or done) at
    another time than ``before`` (the end of an earlier attempt)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/api/jobs/j/cutovers/{cutover_id}/status", headers=AUTH)
        assert answer.status_code == 200, answer.text
        status = answer.json()
        if status["state"] not in ("pending", "running") and status["ended_at"] not in (None, before):
            return status
        assert time.monotonic() < deadline, f"the cutover did not stop: {status}"
        time.sleep(0.3)


def test_cutover_endpoints_need_the_token(api):
    assert api.post("/api/jobs/j/cutovers", json=plan_body()).status_code == 401
    assert api.get("/api/jobs/j/cutovers/1/status",
                   headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert api.post("/api/jobs/j/cutovers/1/rollback").status_code == 401


def test_plan_start_preflight_failure_resume_and_rollback(api):
    texts = []
    # Refused plans: the service's reason, as a 400; input errors as 422; unknown job 404.
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(source_new_name="bad name!"), headers=AUTH)
    assert answer.status_code == 400 and "NetBIOS" in answer.json()["detail"]
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(source_new_address=ADDRESS), headers=AUTH)
    assert answer.status_code == 400 and "is one of the addresses to move" in answer.json()["detail"]
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(source="fs9"), headers=AUTH)
    assert answer.status_code == 400 and "no server 'fs9'" in answer.json()["detail"]
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(source_new_address="dhcp"), headers=AUTH)
    assert answer.status_code == 400 and "comes from DHCP: give no prefix length" in answer.json()["detail"]
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(source_new_prefix_length=None), headers=AUTH)
    assert answer.status_code == 400 and "needs its prefix length (or use dhcp)" in answer.json()["detail"]
    assert api.post("/api/jobs/j/cutovers", json=plan_body(addresses=[]), headers=AUTH).status_code == 422
    assert api.post("/api/jobs/nope/cutovers", json=plan_body(), headers=AUTH).status_code == 404

    # A plan: pending, seven pending stages, a random new name for the source.
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(), headers=AUTH)
    assert answer.status_code == 201, answer.text
    texts.append(answer.text)
    planned = answer.json()
    cutover_id = planned["id"]
    assert planned["state"] == "pending" and (planned["source"], planned["destination"]) == ("fs1", "fs2")
    assert [stage["state"] for stage in planned["stages"]] == ["pending"] * 7
    assert planned["plan"]["source_new_name"].startswith("SMS-")
    assert planned["plan"]["source_new_interface"] == "eth0"
    assert planned["plan"]["maintenance_hosts"] == ["127.0.0.1"]
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(), headers=AUTH)
    assert answer.status_code == 409 and f"cutover run {cutover_id}" in answer.json()["detail"]
    answer = api.post(f"/api/jobs/j/cutovers/{cutover_id}/resume", headers=AUTH)
    assert answer.status_code == 409 and "has not started" in answer.json()["detail"]
    assert api.get("/api/jobs/j/cutovers/999/status", headers=AUTH).status_code == 404

    # Start: a driver process runs pre-flight, which cannot reach the source's SSH port.
    answer = api.post(f"/api/jobs/j/cutovers/{cutover_id}/start", headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert answer.json()["driver_pid"] > 0
    status = wait_until_stopped(api, cutover_id)
    texts.append(str(status))
    stages = {stage["name"]: stage for stage in status["stages"]}
    assert status["state"] == "failed"
    assert status["error"].startswith("stage preflight failed: HostUnreachable")
    assert "rolled back (pre-flight failed): nothing had changed" in status["error"]
    assert stages["preflight"]["state"] == "failed" and "127.0.0.1" in stages["preflight"]["message"]
    assert all(stage["state"] == "pending" for name, stage in stages.items() if name != "preflight")
    assert status["delta"] is None
    answer = api.post(f"/api/jobs/j/cutovers/{cutover_id}/start", headers=AUTH)
    assert answer.status_code == 409 and "resume it or roll it back" in answer.json()["detail"]
    events = api.get("/api/jobs/j", headers=AUTH).json()["events"]
    kinds = [event["kind"] for event in events]
    assert kinds.count("cutover.failed") == 1 and "cutover.rolled_back" in kinds

    # Resume: pre-flight again (the failed stage), same outcome; the older view agrees.
    # A resume may replace the plan's timeout.
    answer = api.post(f"/api/jobs/j/cutovers/{cutover_id}/resume", json={"takeover": False, "timeout_seconds": 45},
                      headers=AUTH)
    assert answer.status_code == 202, answer.text
    status = wait_until_stopped(api, cutover_id, before=status["ended_at"])
    assert status["state"] == "failed" and status["error"].startswith("stage preflight failed")
    assert status["plan"]["timeout_seconds"] == 45
    kinds = [event["kind"] for event in api.get("/api/jobs/j", headers=AUTH).json()["events"]]
    assert kinds.count("cutover.failed") == 2 and "cutover.resumed" in kinds
    shown = api.get(f"/api/jobs/j/cutovers/{cutover_id}", headers=AUTH).json()
    assert shown["state"] == "failed" and len(shown["stages"]) == 7

    # The operator rolls back: complete (nothing had changed), the run is cancelled for good.
    answer = api.post(f"/api/jobs/j/cutovers/{cutover_id}/rollback", headers=AUTH)
    assert answer.status_code == 200, answer.text
    texts.append(answer.text)
    assert answer.json()["failures"] == []
    assert answer.json()["cutover"]["state"] == "cancelled"
    assert "rolled back (asked by the operator)" in answer.json()["cutover"]["error"]
    for action in ("start", "resume", "rollback"):
        assert api.post(f"/api/jobs/j/cutovers/{cutover_id}/{action}", headers=AUTH).status_code == 409
    # A new plan of the pairing is allowed once the old run is finished with.
    assert api.post("/api/jobs/j/cutovers", json=plan_body(source_new_name="FS1-OLD"),
                    headers=AUTH).json()["plan"]["source_new_name"] == "FS1-OLD"
    assert not any(secret in text for text in texts for secret in (SMB_SECRET, SSH_SECRET))
    log = (get_settings().state_dir / "logs" / f"cutover-{cutover_id}.log").read_text()
    assert "pre-flight" in log.lower() or "preflight" in log.lower()
    assert SSH_SECRET not in log and SMB_SECRET not in log


def test_a_dhcp_plan_through_the_api(api):
    answer = api.post("/api/jobs/j/cutovers", json=plan_body(source_new_address="dhcp", source_new_prefix_length=None),
                      headers=AUTH)
    assert answer.status_code == 201, answer.text
    planned = answer.json()
    assert (planned["plan"]["source_new_address"], planned["plan"]["source_new_prefix_length"]) == ("dhcp", 0)
    assert planned["source_new_address"] is None  # not leased before stage 4


def test_plan_parsing_of_the_cli():
    assert parse_move("198.18.5.21/24:eth0=ens1") == AddressMove("198.18.5.21", 24, "eth0", "ens1")
    assert parse_address("198.18.5.31/23") == ("198.18.5.31", 23)
    assert parse_address("DHCP") == parse_address("dhcp") == ("dhcp", 0)
    for bad in ("198.18.5.21:eth0=eth0", "198.18.5.21/24", "198.18.5.21/24:eth0", "x/24:a=b"):
        with pytest.raises(CutoverError):
            parse_move(bad)
    with pytest.raises(CutoverError, match="prefix length"):
        parse_address("198.18.5.31")
    names = {random_source_name() for _ in range(20)}
    assert len(names) == 20 and all(netbios_name_problem(name) is None for name in names)
