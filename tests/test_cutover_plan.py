"""The cutover plan's own checks and the reversible smb.conf edits (no host needed)."""

from __future__ import annotations

import pytest

from orchestrator.cutover import smbconf
from orchestrator.cutover.plan import AddressMove, CutoverPlan, netbios_name_problem

CONF = """# an administrator's comment
[global]
\tnetbios name = FS1
\tworkgroup = LAB

[data]
\tpath = /srv/data
\twriteable = yes
\tcomment = a long \\
\t  comment

[Team Docs]
\tpath = /srv/docs
"""


def plan(**overrides) -> CutoverPlan:
    values = dict(addresses=[AddressMove("198.18.0.21", 24, "eth0", "eth0")], source_new_name="FS1-OLD",
                  source_new_address="198.18.0.31", source_new_prefix_length=24, source_new_interface="eth0")
    values.update(overrides)
    return CutoverPlan(**values)


def test_a_good_plan_round_trips_through_json():
    good = plan()
    assert good.problems() == []
    assert CutoverPlan.from_json(good.to_json()) == good


@pytest.mark.parametrize("overrides, expected", [
    ({"addresses": []}, "no address to move"),
    ({"source_new_address": "198.18.0.21"}, "is one of the addresses to move"),
    ({"source_new_address": "fe80::1"}, "not IPv4"),
    ({"source_new_address": "127.0.0.5"}, "cannot be given to a server"),
    ({"source_new_prefix_length": 40}, "prefix length 40"),
    ({"source_new_name": "A-NAME-LONGER-THAN-15"}, "not a NetBIOS computer name"),
    ({"addresses": [AddressMove("198.18.0.21", 24, "eth0", "eth0")] * 2}, "listed twice"),
    ({"maintenance_hosts": []}, "maintenance_hosts is empty"),
])
def test_plan_problems(overrides, expected):
    assert any(expected in problem for problem in plan(**overrides).problems())


def test_netbios_names():
    assert netbios_name_problem("FS1-OLD") is None
    assert "only digits" in netbios_name_problem("2024")
    assert "hyphen" in netbios_name_problem("FS1-")
    assert netbios_name_problem("FS.1") is not None


def test_marked_lines_win_and_come_off_exactly():
    edited = smbconf.add_marked(CONF, "run-7", "global", "netbios name", "FS1-OLD")
    edited = smbconf.add_marked(edited, "run-7", "data", "read only", "yes")
    edited = smbconf.add_marked(edited, "run-7", "Team Docs", "hosts allow", "198.18.0.1")
    # Appended at the end of each section (after the continued comment line), under a marker.
    assert "\tworkgroup = LAB\n# sms-cutover run-7: netbios name\n\tnetbios name = FS1-OLD\n\n[data]" in edited
    assert "\t  comment\n# sms-cutover run-7: read only\n\tread only = yes\n" in edited
    assert edited.endswith("# sms-cutover run-7: hosts allow\n\thosts allow = 198.18.0.1\n")
    # Setting again replaces the run's own line; another run's lines are left alone.
    again = smbconf.add_marked(edited, "run-7", "data", "read only", "no")
    assert again.count("read only") == 2 and "read only = no" in again
    other = smbconf.add_marked(edited, "run-8", "data", "read only", "yes")
    assert smbconf.remove_marked(other, "run-7") == smbconf.add_marked(CONF, "run-8", "data", "read only", "yes")
    # Removing by section or parameter takes only those lines; removing all gives the original back.
    only_global = smbconf.remove_marked(edited, "run-7", "global")
    assert "netbios name = FS1-OLD" not in only_global and "read only = yes" in only_global
    assert smbconf.remove_marked(edited, "run-7") == CONF


def test_add_marked_refuses_unknown_sections_and_multiline_values():
    with pytest.raises(ValueError, match="no section"):
        smbconf.add_marked(CONF, "run-1", "missing", "read only", "yes")
    with pytest.raises(ValueError, match="one line"):
        smbconf.add_marked(CONF, "run-1", "data", "comment", "a\n[evil]")
    assert smbconf.sections(CONF) == ["global", "data", "Team Docs"]


def test_a_section_ending_in_a_continued_line_is_closed_first():
    text = "[data]\n\tpath = /srv\n\tcomment = x \\\n"
    edited = smbconf.add_marked(text, "run-2", "data", "read only", "yes")
    assert edited == "[data]\n\tpath = /srv\n\tcomment = x \\\n\n# sms-cutover run-2: read only\n\tread only = yes\n"


# --- the stage machine's bookkeeping (database only, no host) -------------------------------

@pytest.fixture
def pairing_db(tmp_path, monkeypatch):
    """A SQLite job database with one Samba source/destination pairing; (url, pairing id)."""
    from common.db import session_scope
    from common.settings import reset_settings_cache
    from orchestrator.database import upgrade_to_head
    from orchestrator.jobs import SambaManagement, add_server, create_job
    from orchestrator.transfer.planning import create_pairing

    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path / "state"))
    reset_settings_cache()
    url = f"sqlite:///{tmp_path / 'sms.sqlite'}"
    upgrade_to_head(url)
    with session_scope(url) as session:
        job = create_job(session, "bookkeeping")
        servers = [add_server(session, job, name=name, role=role, kind="samba", address=address,
                              username="smsmig", password="not-used",
                              samba=SambaManagement(ssh_user="root", known_hosts=str(tmp_path / "known_hosts"),
                                                    ssh_host="198.18.0.10", key_file=str(tmp_path / "key")))
                   for name, role, address in (("fs1", "source", "198.18.0.21"),
                                               ("fs2", "destination", "198.18.0.12"))]
        pairing_id = create_pairing(session, *servers, shares=["data"]).id
    yield url, pairing_id
    reset_settings_cache()


def test_create_cutover_makes_seven_pending_stages_and_refuses_a_second_run(pairing_db):
    from common.db import session_scope
    from common.models import Pairing, RunState
    from orchestrator.cutover.stages import STAGES, CutoverError, create_cutover

    url, pairing_id = pairing_db
    with session_scope(url) as session:
        pairing = session.get(Pairing, pairing_id)
        with pytest.raises(CutoverError, match="not valid"):
            create_cutover(session, pairing, plan(source_new_name="bad name"))
        run = create_cutover(session, pairing, plan())
        assert [(s.position, s.name, s.state) for s in run.stages] == [
            (i, name, RunState.PENDING) for i, (name, _) in enumerate(STAGES, start=1)]
        assert CutoverPlan.from_json(run.options["plan"]) == plan()
        with pytest.raises(CutoverError, match="not finished"):
            create_cutover(session, pairing, plan())


def test_run_cutover_refuses_a_running_run_without_takeover(pairing_db):
    from common.db import session_scope
    from common.models import CutoverRun, Pairing, RunState
    from orchestrator.cutover.stages import CutoverError, create_cutover, run_cutover

    url, pairing_id = pairing_db
    with session_scope(url) as session:
        run = create_cutover(session, session.get(Pairing, pairing_id), plan())
        run.state = RunState.RUNNING
        run_id = run.id
    with pytest.raises(CutoverError, match="takeover"):
        run_cutover(run_id, delta=None, url=url)
    with session_scope(url) as session:
        session.get(CutoverRun, run_id).state = RunState.SUCCEEDED
    with pytest.raises(CutoverError, match="succeeded"):
        run_cutover(run_id, delta=None, url=url)


def test_a_dhcp_plan_needs_no_prefix_length():
    dhcp = plan(source_new_address="dhcp", source_new_prefix_length=0)
    assert dhcp.problems() == [] and dhcp.source_new_address_by_dhcp
    assert CutoverPlan.from_json(dhcp.to_json()) == dhcp
    assert any("give no prefix length" in problem
               for problem in plan(source_new_address="dhcp", source_new_prefix_length=24).problems())
    assert any("is not an IP address" in problem for problem in plan(source_new_address="DHCP?").problems())
