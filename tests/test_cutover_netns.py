"""Cutover in network namespaces: real smbd and sshd per host, a bridge, a users' namespace.

Each test builds its own lab (tests/lab/netns.py): a source ``fs1`` (NetBIOS ``FS1``) and
a destination ``fs2`` in their own namespaces, each with smbd (shares ``data`` and
``docs``) and sshd on a management address that never moves, the source also serving
users at a service address; a client namespace reads and writes as the users do. Both
are registered as Samba servers managed over SSH with the lab's known_hosts; the
orchestrator (this process and the ``sms`` CLI, in the root namespace) and the proxy
workers it starts reach them through the lab's bridge, which has an address of the lab's
/24 in the root namespace.

A first transfer run of the transfer engine copies everything; a user then writes a file,
which only the cutover's final delta transfer (``EngineDeltaTransfer``: a real transfer
run through the embedded broker and local ``sms-worker`` processes) can bring over. The
first test wraps that delta to check, just before it runs, that a user can no longer
write to the source, and to inject a failure (the destination's sshd stops) while the
delta is reconciled; the rollback test drives the ``sms cutover`` CLI end to end. The
DHCP test gives the source its new address from a DHCP server on the lab's network
(dnsmasq in the client namespace) and rolls back; the timeout test lets the plan's limit
pass during the final delta, then resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
import pytest
import smbclient
from smbprotocol.exceptions import SMBOSError
from sqlalchemy import func, select

from common.db import session_scope
from common.models import (
    CutoverRun,
    CutoverStage,
    Event,
    FileRecord,
    FileState,
    Job,
    JobState,
    Pairing,
    RunState,
    Server,
    TransferRun,
)
from common.settings import get_settings
from common.smb.rpc import SrvsvcClient
from common.transfer_options import TransferOptions
from orchestrator.cutover.delta import EngineDeltaTransfer
from orchestrator.cutover.plan import AddressMove, CutoverPlan
from orchestrator.cutover.service import drive_cutover, rollback_cutover
from orchestrator.cutover.stages import (
    CutoverPairing,
    DeltaReconciliation,
    create_cutover,
)
from orchestrator.database import upgrade_to_head
from orchestrator.jobs import SambaManagement, add_server, create_job
from orchestrator.transfer.cli import drive_runs
from orchestrator.transfer.planning import cancel_run, create_pairing, create_run
from orchestrator.transfer.reconcile import reconcile
from tests.lab.fixtures import unavailable
from tests.lab.netns import ClientError, NetnsLab
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, LabUnavailable
from tests.transfer_support import sms, use_settings

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300),
              pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")]

SHARES = ("data", "docs")
FILES = {
    ("data", "report.txt"): b"quarterly report\r\n" * 50,
    ("data", "sub/deep.bin"): os.urandom(300_000),
    ("data", "sub/empty.txt"): b"",
    ("docs", "readme.md"): "# Übersicht\nnames in UTF-8\n".encode(),
}
LATE = ("data", "late.txt")
LATE_BYTES = b"written just before cutover"
STATUS_ACCESS_DENIED = 0xC0000022
DELTA_TIMEOUT = 20  # seconds: more than stage 2 needs before the transfer starts (workers up)


# --- reading and writing over SMB from the orchestrator's place ----------------------------

def _unc(address: str, share: str, path: str = "") -> str:
    return f"\\\\{address}\\{share}" + (f"\\{path.replace('/', chr(92))}" if path else "")


def smb_tree(address: str, share: str) -> dict[str, bytes | None]:
    """Every entry of a share: {relative path: bytes, or None for a folder}."""
    cache: dict = {}
    found: dict[str, bytes | None] = {}
    try:
        smbclient.register_session(address, username=MIGRATION_USER, password=MIGRATION_PASSWORD,
                                   require_signing=True, connection_cache=cache)
        pending = [""]
        while pending:
            folder = pending.pop()
            for entry in smbclient.scandir(_unc(address, share, folder), connection_cache=cache):
                relative = f"{folder}/{entry.name}" if folder else entry.name
                if entry.is_dir():
                    found[relative] = None
                    pending.append(relative)
                else:
                    with smbclient.open_file(entry.path, mode="rb", connection_cache=cache) as handle:
                        found[relative] = handle.read()
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    return found


def smb_write(address: str, share: str, path: str, data: bytes) -> None:
    """Write one file over SMB from this process (the orchestrator's place in the lab)."""
    cache: dict = {}
    try:
        smbclient.register_session(address, username=MIGRATION_USER, password=MIGRATION_PASSWORD,
                                   require_signing=True, connection_cache=cache)
        with smbclient.open_file(_unc(address, share, path), mode="wb", connection_cache=cache) as handle:
            handle.write(data)
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)


def files_of(tree: dict[str, bytes | None]) -> dict[str, bytes]:
    """The files of an ``smb_tree`` (folders and the destination's PreExistingData left out)."""
    return {path: data for path, data in tree.items()
            if data is not None and not path.startswith("PreExistingData")}


class ObservedDelta(EngineDeltaTransfer):
    """The real final delta, watched: before it runs, a user's write to each source share
    must be refused (the record keeps the NTSTATUS); ``on_reconcile`` runs once, after
    the first reconciliation (to inject a failure)."""

    def __init__(self, lab: NetnsLab, source: str, on_reconcile=None):
        super().__init__()
        self.lab, self.source, self.on_reconcile = lab, source, on_reconcile
        self.calls: list[str] = []

    def run(self, pairing: CutoverPairing, deadline: float) -> dict:
        self.calls.append("run")
        refused = {}
        for share in pairing.shares:
            with pytest.raises(ClientError) as caught:
                self.lab.client_write(self.source, share, "written-during-cutover.txt", b"lost?")
            refused[share] = caught.value.status
        return {**super().run(pairing, deadline), "user_write_refused": refused}

    def reconcile(self, pairing: CutoverPairing, record: dict) -> DeltaReconciliation:
        self.calls.append("reconcile")
        result = super().reconcile(pairing, record)
        if self.on_reconcile is not None:
            hook, self.on_reconcile = self.on_reconcile, None
            hook()
        return result


class SlowDelta(EngineDeltaTransfer):
    """The real final delta, whose first progress line (the transfer engine reports its
    destination's accounts before walking) is held until the cutover's deadline has
    passed: a delta that takes longer than the plan allows, whatever the machine's speed."""

    def __init__(self):
        super().__init__(progress=self._hold_first_line)
        self.deadline = float("inf")
        self.held: list[str] = []

    def run(self, pairing: CutoverPairing, deadline: float) -> dict:
        self.deadline = deadline
        return super().run(pairing, deadline)

    def _hold_first_line(self, line: str) -> None:
        if not self.held:
            self.held.append(line)
            time.sleep(max(0.0, self.deadline - time.monotonic()) + 0.5)


# --- the lab -------------------------------------------------------------------------------

class CutoverLab:
    """Two Samba hosts, a job database, a pairing with a clean first transfer run, a plan."""

    def __init__(self, lab: NetnsLab):
        self.lab = lab
        self.src = lab.add_host("src", hostname="fs1")
        self.dst = lab.add_host("dst", hostname="fs2")
        for host, name in ((self.src, "FS1"), (self.dst, "FS2")):
            lab.start_samba(host, name, shares=SHARES)
            lab.start_sshd(host)
        self.old_address = lab.address(21)
        self.new_address = lab.address(31)
        lab.add_address(self.src, self.old_address)
        for (share, relative), data in FILES.items():
            path = self.src.shares[share] / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.url = get_settings().database_url
        upgrade_to_head(self.url)
        with session_scope(self.url) as session:
            job = create_job(session, "cutover-lab")
            servers = []
            for host, role, address in ((self.src, "source", self.old_address),
                                        (self.dst, "destination", self.dst.management_address)):
                servers.append(add_server(
                    session, job, name=host.hostname, role=role, kind="samba", address=address,
                    username=MIGRATION_USER, password=MIGRATION_PASSWORD,
                    samba=SambaManagement(ssh_user="root", known_hosts=str(lab.known_hosts),
                                          ssh_host=host.management_address, key_file=str(lab.client_key),
                                          smb_conf=str(host.smb_conf))))
            # The transfer recreates the shares on the destination: source folders map to its own.
            mapping = {str(self.src.root / "samba" / "shares"): str(self.dst.root / "samba" / "shares")}
            self.pairing_id = create_pairing(session, servers[0], servers[1], shares=SHARES,
                                             path_mapping=mapping).id
            self.source_id = servers[0].id
        self.first_run_id = self.first_transfer()

    def first_transfer(self) -> int:
        """A first transfer run of the engine (local workers, embedded broker): everything."""
        with session_scope(self.url) as session:
            run_id = create_run(session, session.get(Pairing, self.pairing_id),
                                TransferOptions(checksum="fast", retries=1, retry_delay=0.5)).id
        states = drive_runs([run_id], quiet=True)
        with session_scope(self.url) as session:
            problems = [(r.relative_path, r.state.value, r.error_code, r.error_message) for r in session.scalars(
                select(FileRecord).where(FileRecord.run_id == run_id, FileRecord.state != FileState.VERIFIED))]
            error = session.get(TransferRun, run_id).error
            problems += [e.message for e in session.scalars(select(Event)) if e.level.value == "error"]
        assert states == {run_id: RunState.SUCCEEDED}, (error, problems)
        with session_scope(self.url) as session:
            assert reconcile(session, run_id).clean
        for share in SHARES:
            assert files_of(smb_tree(self.dst.management_address, share)) == \
                files_of(smb_tree(self.old_address, share))
        return run_id

    def transfer_runs(self) -> int:
        with session_scope(self.url) as session:
            return session.scalar(select(func.count()).select_from(TransferRun))

    def plan(self, **overrides) -> CutoverPlan:
        values = dict(
            addresses=[AddressMove(self.old_address, 24, "eth0", "eth0")],
            source_new_name="FS1-OLD",
            source_new_address=self.new_address,
            source_new_prefix_length=24,
            source_new_interface="eth0",
            maintenance_hosts=[self.lab.bridge_address],
            timeout_seconds=180,
        )
        values.update(overrides)
        return CutoverPlan(**values)

    def create(self, plan: CutoverPlan) -> int:
        with session_scope(self.url) as session:
            return create_cutover(session, session.get(Pairing, self.pairing_id), plan).id

    def delta(self, **kwargs) -> ObservedDelta:
        return ObservedDelta(self.lab, self.old_address, **kwargs)

    def stages(self, run_id: int) -> dict[str, CutoverStage]:
        with session_scope(self.url) as session:
            stages = session.scalars(select(CutoverStage).where(CutoverStage.cutover_run_id == run_id)).all()
            return {stage.name: stage for stage in stages}

    def job_state(self, run_id: int) -> JobState:
        """The phase of the job the cutover run belongs to."""
        with session_scope(self.url) as session:
            return session.get(Job, session.get(CutoverRun, run_id).job_id).state

    def run_row(self, run_id: int) -> CutoverRun:
        with session_scope(self.url) as session:
            return session.get(CutoverRun, run_id)

    def server_name(self, address: str) -> str:
        with SrvsvcClient(address, MIGRATION_USER, MIGRATION_PASSWORD) as client:
            return client.server_info(101).name

    def share_path(self, address: str, share: str) -> str:
        """The local path behind a share, as the server at ``address`` reports it (srvsvc)."""
        with SrvsvcClient(address, MIGRATION_USER, MIGRATION_PASSWORD) as client:
            path = {info.name: info.path for info in client.list_shares(2)}[share]
        return path.removeprefix("C:").replace("\\", "/")  # Samba shows C:\dir\... for /dir/...

    def machine_sid(self, host) -> str:
        return host.run(["net", "-s", str(host.smb_conf), "getlocalsid"]).stdout.split()[-1]


@pytest.fixture
def cutover_lab(netns_lab, tmp_path, monkeypatch):
    """A fresh ``CutoverLab`` in its own namespace lab (which the netns_lab fixture removes),
    on embedded settings of its own (SQLite job database and broker in tmp_path)."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_WORKER_CONCURRENCY="2")
    try:
        lab = CutoverLab(netns_lab)
    except LabUnavailable as exc:
        unavailable(str(exc))
    yield lab


def _conf_markers(host) -> list[str]:
    return [line for line in host.smb_conf.read_text().splitlines() if "sms-cutover" in line]


# --- the tests ------------------------------------------------------------------------------

def test_cutover_moves_identity_resumes_after_failure_and_users_see_the_same_data(cutover_lab):
    lab = cutover_lab
    client = lab.lab
    old, new = lab.old_address, lab.new_address
    before = {key: client.client_read(old, *key) for key in FILES}
    assert before == FILES
    # A user writes after the first transfer: only the final delta can bring it over.
    client.client_write(old, *LATE, LATE_BYTES)
    sids = {"src": lab.machine_sid(lab.src), "dst": lab.machine_sid(lab.dst)}

    # The destination's management (sshd) goes away while the delta is being reconciled:
    # stages 1-4 complete, stage 5 cannot reach the destination.
    delta = lab.delta(on_reconcile=lambda: client.stop_sshd(lab.dst))
    run_id = lab.create(lab.plan())
    assert drive_cutover(run_id, delta=delta) == RunState.FAILED
    stages = lab.stages(run_id)
    assert [stages[n].state for n in ("preflight", "final_delta_transfer", "delta_reconciliation",
                                      "source_identity")] == [RunState.SUCCEEDED] * 4, \
        {name: stage.message for name, stage in stages.items()}
    failed = stages["destination_identity"]
    assert failed.state == RunState.FAILED
    assert "HostUnreachable" in failed.message and lab.dst.management_address in failed.message
    assert stages["verification"].state == RunState.PENDING
    run = lab.run_row(run_id)
    assert run.state == RunState.FAILED and run.error.startswith("stage destination_identity failed")
    assert lab.job_state(run_id) == JobState.CUTOVER
    assert old not in lab.src.addresses() and new in lab.src.addresses()

    # Management comes back; resume continues at stage 5 and completes.
    client.start_sshd(lab.dst)
    assert drive_cutover(run_id, resume=True, delta=delta) == RunState.SUCCEEDED, lab.run_row(run_id).error
    assert delta.calls == ["run", "reconcile"]  # stages 2-3 were not repeated
    assert lab.transfer_runs() == 2  # the first run and one final delta
    stages = lab.stages(run_id)
    assert all(stage.state == RunState.SUCCEEDED and stage.progress == 1.0 for stage in stages.values())
    assert "read back" in stages["verification"].message
    assert lab.job_state(run_id) == JobState.DONE  # its only source is cut over

    # Users: the same bytes at the same address and share path, now from the destination.
    after = {key: client.client_read(old, *key) for key in FILES}
    assert after == FILES
    assert client.client_read(old, *LATE) == LATE_BYTES
    # ... and they go on working there: the source's read-only spell did not travel along.
    for share in SHARES:
        client.client_write(old, share, "after-cutover.txt", b"users write on the destination")
        assert (lab.dst.shares[share] / "after-cutover.txt").read_bytes() == b"users write on the destination"
    assert old in lab.dst.addresses() and old not in lab.src.addresses()
    assert lab.server_name(old) == "FS1"
    assert lab.share_path(old, "data") == str(lab.dst.shares["data"])
    # The final delta was a transfer run that copied only the late file and reconciled clean.
    record = lab.run_row(run_id).options["state"]["delta"]
    assert record["previous_transfer_run_id"] == lab.first_run_id
    assert (record["state"], record["files_copied"], record["files_skipped"], record["files_failed"]) == \
        ("succeeded", 1, len(FILES), 0)
    with session_scope(lab.url) as session:
        delta_report = reconcile(session, record["transfer_run_id"])
        copied = session.scalars(select(FileRecord.relative_path).where(
            FileRecord.run_id == record["transfer_run_id"], FileRecord.state == FileState.VERIFIED)).all()
    assert delta_report.clean and copied == ["late.txt"]
    assert "reconciles clean" in stages["delta_reconciliation"].message
    # Nothing a user tried to write while the source was read-only got lost: it was refused.
    refused_during_delta = record["user_write_refused"]
    assert refused_during_delta == {share: STATUS_ACCESS_DENIED for share in SHARES}
    assert not any((lab.src.shares[s] / "written-during-cutover.txt").exists() for s in SHARES)

    # The source: new name and address, every file intact, shares in maintenance.
    assert lab.server_name(new) == "FS1-OLD"
    for share in SHARES:
        tree = smb_tree(new, share)  # the orchestrator is a maintenance host
        assert {k: v for k, v in tree.items() if v is not None} == {
            rel: data for (s, rel), data in {**FILES, LATE: LATE_BYTES}.items()
            if s == share}
        with pytest.raises(ClientError) as refused:
            client.client_list(new, share)  # users are kept out
        assert refused.value.status == STATUS_ACCESS_DENIED
    with pytest.raises(SMBOSError) as refused_write:
        smb_write(new, "data", "x.txt", b"even a maintenance host cannot write")
    assert refused_write.value.ntstatus == STATUS_ACCESS_DENIED
    # Both kept their machine SID through the renames; the inventory knows the new address.
    assert {"src": lab.machine_sid(lab.src), "dst": lab.machine_sid(lab.dst)} == sids
    with session_scope(lab.url) as session:
        assert session.get(Server, lab.source_id).address == new
        kinds = [e.kind for e in session.scalars(select(Event).order_by(Event.id))]
    assert "cutover.stage_failed" in kinds and "cutover.resumed" in kinds and "cutover.succeeded" in kinds


def _sms_json(*args: str) -> dict:
    result = sms(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_cli_cutover_then_rollback_restores_the_source_name_address_and_share_access(cutover_lab, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # Rich wraps the CLI's lines at the terminal width
    lab = cutover_lab
    client = lab.lab
    old, new = lab.old_address, lab.new_address
    sids = {"src": lab.machine_sid(lab.src), "dst": lab.machine_sid(lab.dst)}
    client.client_write(old, *LATE, LATE_BYTES)
    planned = _sms_json("cutover", "plan", "--job", "cutover-lab", "--source", "fs1",
                        "--move", f"{old}/24:eth0=eth0", "--new-address", f"{new}/24",
                        "--maintenance-host", lab.lab.bridge_address, "--timeout", "180")
    run_id = planned["id"]
    assert planned["state"] == "pending" and planned["destination"] == "fs2"
    assert planned["plan"]["source_new_name"].startswith("SMS-")  # random when not given
    assert planned["plan"]["source_new_interface"] == "eth0"

    shown = sms("cutover", "run", str(run_id), "--wait")  # the human view, stage by stage
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    for position, title in ((2, "Final delta transfer, source read-only"), (6, "Verification at the old address"),
                            (7, "Done")):
        assert any(f"{position}. {title}: succeeded 100 %" in line for line in lines), shown.stdout
    assert any("final delta transfer:" in line and "succeeded" in line for line in lines), shown.stdout
    done = _sms_json("cutover", "status", str(run_id))
    assert done["state"] == "succeeded", done
    assert [stage["state"] for stage in done["stages"]] == ["succeeded"] * 7
    assert done["delta"]["files_copied"] == 1 and done["delta"]["state"] == "succeeded"
    assert lab.server_name(old) == "FS1" and old in lab.dst.addresses()
    assert lab.server_name(new) == planned["plan"]["source_new_name"]
    assert client.client_read(old, *LATE) == LATE_BYTES
    assert f"cutover run {run_id}: fs1 -> fs2, succeeded" in shown.stdout
    again = sms("cutover", "run", str(run_id), "--wait")
    assert again.returncode == 2 and "succeeded" in again.stdout  # refused: plan a new one

    rolled = _sms_json("cutover", "rollback", str(run_id))
    assert rolled["rollback_failures"] == []
    run = lab.run_row(run_id)
    assert run.state == RunState.CANCELLED and "rolled back" in run.error
    # The source is FS1 at its address again, serving its own shares, writable by users.
    assert old in lab.src.addresses() and new not in lab.src.addresses()
    assert old not in lab.dst.addresses()
    assert lab.server_name(old) == "FS1"
    assert lab.share_path(old, "data") == str(lab.src.shares["data"])
    client.client_write(old, "data", "after-rollback.txt", b"users write again")
    assert (lab.src.shares["data"] / "after-rollback.txt").read_bytes() == b"users write again"
    assert {key: client.client_read(old, *key) for key in FILES} == FILES
    # The destination has its own name back; no marked line is left in either smb.conf.
    assert lab.server_name(lab.dst.management_address) == "FS2"
    assert _conf_markers(lab.src) == [] and _conf_markers(lab.dst) == []
    assert {"src": lab.machine_sid(lab.src), "dst": lab.machine_sid(lab.dst)} == sids
    with session_scope(lab.url) as session:
        assert session.get(Server, lab.source_id).address == old
    refused = sms("cutover", "resume", str(run_id), "--wait")
    assert refused.returncode == 2 and "cancelled" in refused.stdout


def test_failing_preflight_stops_and_rolls_back_leaving_the_source_untouched(cutover_lab):
    lab = cutover_lab
    client = lab.lab
    old = lab.old_address
    # The address planned for the source is taken (by the users' namespace): pre-flight must see it.
    run_id = lab.create(lab.plan(source_new_address=client.client.management_address))
    delta = lab.delta()
    assert drive_cutover(run_id, delta=delta) == RunState.FAILED
    stages = lab.stages(run_id)
    assert stages["preflight"].state == RunState.FAILED
    assert "answers on the source's network" in stages["preflight"].message
    assert all(stages[name].state == RunState.PENDING for name in stages if name != "preflight")
    run = lab.run_row(run_id)
    assert "rolled back (pre-flight failed)" in run.error
    assert delta.calls == [] and lab.transfer_runs() == 1
    assert old in lab.src.addresses() and lab.server_name(old) == "FS1"
    client.client_write(old, "docs", "still-writable.txt", b"ok")
    assert _conf_markers(lab.src) == []


def test_preflight_refuses_a_transfer_that_does_not_reconcile(cutover_lab):
    lab = cutover_lab
    with session_scope(lab.url) as session:
        record = session.scalars(select(FileRecord).where(FileRecord.relative_path == "report.txt")).one()
        record.state = FileState.FAILED
    run_id = lab.create(lab.plan())
    assert drive_cutover(run_id, delta=lab.delta()) == RunState.FAILED
    message = lab.stages(run_id)["preflight"].message
    assert "does not reconcile clean" in message and "1 failed" in message
    assert lab.old_address in lab.src.addresses()
    lab.lab.client_write(lab.old_address, "data", "still-writable.txt", b"ok")


def _dhclients_in(host) -> list[int]:
    """Pids of dhclient processes running in the host's namespace."""
    listed = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout.split()
    found = []
    for pid in listed:
        with contextlib.suppress(OSError):
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "dhclient":
                found.append(int(pid))
    return found


def test_source_new_address_from_dhcp_then_rollback_gives_the_old_address_back(cutover_lab):
    lab = cutover_lab
    client = lab.lab
    old = lab.old_address
    pool = {client.address(number) for number in range(100, 120)}
    leases = client.start_dhcp_server(100, 119)
    client.client_write(old, *LATE, LATE_BYTES)
    resolv_conf = Path("/etc/resolv.conf").read_bytes()

    run_id = lab.create(lab.plan(source_new_address="dhcp", source_new_prefix_length=0))
    assert drive_cutover(run_id, delta=EngineDeltaTransfer()) == RunState.SUCCEEDED, lab.run_row(run_id).error
    state = lab.run_row(run_id).options["state"]
    leased = state["source_new_address"]
    assert leased in pool and state["source_new_prefix_length"] == 24
    assert leased in leases.read_text()  # the lab's DHCP server gave it
    stages = lab.stages(run_id)
    assert "a DHCP client is on the source" in stages["preflight"].message
    assert f"at {leased} (DHCP)" in stages["source_identity"].message
    assert f"the source answers as FS1-OLD at {leased}" in stages["verification"].message
    # The source: at its leased address under its new name, every file intact, shares in maintenance.
    assert leased in lab.src.addresses() and old not in lab.src.addresses()
    assert lab.src.management_address in lab.src.addresses()
    assert lab.server_name(leased) == "FS1-OLD"
    for share in SHARES:
        assert files_of(smb_tree(leased, share)) == {
            rel: data for (s, rel), data in {**FILES, LATE: LATE_BYTES}.items() if s == share}
        with pytest.raises(ClientError) as refused:
            client.client_list(leased, share)
        assert refused.value.status == STATUS_ACCESS_DENIED
    # The destination answers at the old address, with the user's late file.
    assert old in lab.dst.addresses() and lab.server_name(old) == "FS1"
    assert client.client_read(old, *LATE) == LATE_BYTES
    with session_scope(lab.url) as session:
        assert session.get(Server, lab.source_id).address == leased
    assert len(_dhclients_in(lab.src)) == 1  # it stays to renew the lease

    assert rollback_cutover(run_id) == []
    assert old in lab.src.addresses() and leased not in lab.src.addresses()
    assert lab.src.management_address in lab.src.addresses()
    assert old not in lab.dst.addresses() and lab.server_name(old) == "FS1"
    assert _dhclients_in(lab.src) == [] and leased not in leases.read_text()  # released to the server
    client.client_write(old, "data", "after-rollback.txt", b"users write again")
    assert (lab.src.shares["data"] / "after-rollback.txt").read_bytes() == b"users write again"
    assert "source released its DHCP lease" in lab.run_row(run_id).error
    with session_scope(lab.url) as session:
        assert session.get(Server, lab.source_id).address == old
    assert Path("/etc/resolv.conf").read_bytes() == resolv_conf  # the lab's DHCP never touched the machine


def test_the_plan_timeout_bounds_the_final_delta_and_a_resume_goes_on(cutover_lab):
    lab = cutover_lab
    client = lab.lab
    old = lab.old_address
    client.client_write(old, *LATE, LATE_BYTES)
    # A transfer run nobody drives blocks the final delta: the first call stops at stage 2.
    with session_scope(lab.url) as session:
        blocker = create_run(session, session.get(Pairing, lab.pairing_id), TransferOptions(checksum="fast")).id
    run_id = lab.create(lab.plan())
    delta = EngineDeltaTransfer()
    assert drive_cutover(run_id, delta=delta) == RunState.FAILED
    stages = lab.stages(run_id)
    assert stages["preflight"].state == RunState.SUCCEEDED
    assert "cannot start the final delta transfer" in stages["final_delta_transfer"].message
    with session_scope(lab.url) as session:
        cancel_run(session, blocker)

    # A resume whose limit passes while the delta runs: the stage fails, saying so.
    slow = SlowDelta()
    started = time.monotonic()
    assert drive_cutover(run_id, resume=True, delta=slow, timeout_seconds=DELTA_TIMEOUT) == RunState.FAILED
    assert slow.held and time.monotonic() - started < DELTA_TIMEOUT + 30  # stopped soon after the limit
    stage = lab.stages(run_id)["final_delta_transfer"]
    assert stage.state == RunState.FAILED and "cutover timed out during the final delta transfer" in stage.message
    run = lab.run_row(run_id)
    assert run.error.startswith("stage final_delta_transfer failed: cutover timed out")
    assert run.options["plan"]["timeout_seconds"] == DELTA_TIMEOUT
    with session_scope(lab.url) as session:
        runs = session.scalars(select(TransferRun).order_by(TransferRun.id)).all()
        stopped = runs[-1]
        assert [r.state for r in runs] == [RunState.SUCCEEDED, RunState.CANCELLED, RunState.COMPLETED_WITH_ERRORS]
        assert stopped.options["max_duration"] <= DELTA_TIMEOUT
        assert "maximum duration" in " ".join(e.message for e in session.scalars(
            select(Event).where(Event.kind == "transfer.max_duration")))
    assert old in lab.src.addresses()  # nothing of the identity moved
    with pytest.raises(ClientError):
        client.client_write(old, "data", "during.txt", b"refused: the source stays read-only")

    # Resumed with time enough: a new delta run finishes and the cutover completes.
    assert drive_cutover(run_id, resume=True, delta=delta, timeout_seconds=180) == RunState.SUCCEEDED, \
        lab.run_row(run_id).error
    record = lab.run_row(run_id).options["state"]["delta"]
    assert record["previous_transfer_run_id"] == stopped.id and record["state"] == "succeeded"
    assert client.client_read(old, *LATE) == LATE_BYTES
    assert {key: client.client_read(old, *key) for key in FILES} == FILES
