"""Windows cutover over WinRM: the PowerShell it builds and the recorded answers it reads.

No Windows server runs in the lab, so this checks the scripts (quoting, validation, no
credential ever inside) and the parsers against recordings in Windows PowerShell 5.1's
``ConvertTo-Json`` shape (tests/data/winrm/cutover/). docs/cutover.md says what remains
unverified against a real server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cutover import windows
from orchestrator.cutover.plan import MAINTENANCE, NORMAL, READ_ONLY

DATA = Path(__file__).parent / "data" / "winrm" / "cutover"


def recording(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_ps_quote_doubles_every_kind_of_single_quote():
    assert windows.ps_quote("O'Brien") == "'O''Brien'"
    assert windows.ps_quote("a\u2019b") == "'a\u2019\u2019b'"
    assert windows.ps_quote("$(Remove-Item C:\\)") == "'$(Remove-Item C:\\)'"  # no expansion in '...'
    with pytest.raises(ValueError):
        windows.ps_quote("two\nlines")


def test_address_scripts_are_quoted_and_validated():
    script = windows.script_add_address("Ethernet 0'; Stop-Computer; '", "198.18.5.21", 24)
    assert "-InterfaceAlias 'Ethernet 0''; Stop-Computer; '''" in script
    assert "-IPAddress '198.18.5.21' -PrefixLength 24 -AddressFamily IPv4" in script
    assert script.endswith("| ConvertTo-Json -Depth 4")
    assert "-IPAddress '198.18.5.21' -Confirm:$false" in windows.script_remove_address("Ethernet0", "198.18.5.21")
    for bad in ("198.18.5.300", "fe80::1", "198.18.5.21; Stop-Computer"):
        with pytest.raises(ValueError):
            windows.script_add_address("Ethernet0", bad, 24)
    with pytest.raises(ValueError):
        windows.script_add_address("Ethernet0", "198.18.5.21", 33)
    assert "SendARP" in windows.script_arp_probe("198.18.5.31")


def test_name_and_domain_scripts_refuse_bad_names_and_carry_no_credential():
    assert windows.script_rename("FS1-OLD") == "Rename-Computer -NewName 'FS1-OLD' -Force -PassThru | ConvertTo-Json -Depth 4"
    join = windows.script_join("corp.example.com", "FS1")
    assert "Add-Computer -DomainName 'corp.example.com' -NewName 'FS1' -Options JoinWithNewName" in join
    assert "Remove-Computer -WorkgroupName 'WORKGROUP'" in windows.script_unjoin()
    for script in (join, windows.script_unjoin(), windows.script_rename("FS1")):
        assert "Credential" not in script and "Password" not in script
    for bad in ("FILESERVER-NUMBER-1", "FS 1", "12345", "-FS1", "FS1'"):
        with pytest.raises(ValueError):
            windows.script_rename(bad)
    with pytest.raises(ValueError):
        windows.script_join("corp.example.com; Stop-Computer", "FS1")


def test_share_scripts_quote_names():
    script = windows.script_share_security(["Finance", "R&D 'Docs'"])
    assert "Get-SmbShare -Name @('Finance', 'R&D ''Docs''')" in script
    set_script = windows.script_set_share_security("Finance", "O:BAG:BAD:(A;;FA;;;BA)")
    assert set_script.startswith("Set-SmbShare -Name 'Finance' -SecurityDescriptor 'O:BAG:BAD:(A;;FA;;;BA)' -Force")


def test_parse_addresses_and_new_address():
    assert windows.parse_ip_addresses(recording("ip_addresses_ipv4.json")) == {
        "Ethernet0": [("198.18.5.20", 24), ("198.18.5.21", 24)],
        "Loopback Pseudo-Interface 1": [("127.0.0.1", 8)],
    }
    windows.parse_new_address(recording("new_ip_address.json"), "198.18.5.21")
    with pytest.raises(ValueError):
        windows.parse_new_address(recording("new_ip_address.json"), "198.18.5.22")


def test_parse_arp_probe():
    assert windows.parse_arp_probe(recording("arp_probe_answered.json")) is True
    assert windows.parse_arp_probe(recording("arp_probe_free.json")) is False
    with pytest.raises(ValueError):
        windows.parse_arp_probe("")


def test_parse_computer_and_change_info():
    assert windows.parse_computer(recording("computer_domain.json")) == {
        "name": "FS1", "domain": "corp.example.com", "part_of_domain": True}
    assert windows.parse_computer(recording("computer_workgroup.json"))["part_of_domain"] is False
    renamed = windows.parse_change_info(recording("rename_computer.json"), "Rename-Computer")
    assert renamed["NewComputerName"] == "FS1-OLD"
    assert windows.parse_change_info(recording("add_computer.json"), "Add-Computer")["ComputerName"] == "FS1-OLD"
    with pytest.raises(ValueError, match="did not succeed"):
        windows.parse_change_info(recording("remove_computer_failed.json"), "Remove-Computer")


def test_share_security_and_modes():
    shares = windows.parse_share_security(recording("share_security.json"))
    assert set(shares) == {"Finance", "R&D Docs"}
    original = shares["Finance"]["sddl"]
    read_only = windows.share_sddl_for(READ_ONLY, original)
    # Every allow entry reads only; the deny entry and the owner are kept.
    assert read_only == ("O:SYG:SYD:(A;;0x1200a9;;;BA)(D;;FA;;;S-1-5-21-1004336348-1177238915-682003330-1105)"
                         "(A;;0x1200a9;;;AU)(A;;0x1200a9;;;WD)")
    assert windows.parse_share_security(recording("set_share_security.json"))["Finance"]["sddl"] == read_only
    assert windows.share_sddl_for(NORMAL, original) == original
    assert windows.share_sddl_for(MAINTENANCE, original) == "O:BAG:BAD:(A;;FA;;;BA)"
    inherited = windows.read_only_sddl(shares["R&D Docs"]["sddl"])
    assert "(A;OICI;0x1200a9;;;S-1-5-21-1004336348-1177238915-682003330-1106)" in inherited
    with pytest.raises(ValueError):
        windows.share_sddl_for("closed", original)


def test_dhcp_scripts_and_answers():
    enable = windows.script_enable_dhcp("Ethernet 1'; Stop-Computer; '")
    assert enable.startswith("Set-NetIPInterface -InterfaceAlias 'Ethernet 1''; Stop-Computer; ''' "
                             "-AddressFamily IPv4 -Dhcp Enabled\n")
    assert "-PrefixOrigin Dhcp" in enable and enable.endswith("| ConvertTo-Json -Depth 4")
    disable = windows.script_disable_dhcp("Ethernet1")
    assert "ipconfig /release 'Ethernet1'" in disable and "-Dhcp Disabled" in disable
    assert windows.script_dhcp_client().startswith("Get-Service -Name Dhcp")
    # The leased address is the preferred one of origin Dhcp, not the autoconfiguration one.
    assert windows.parse_dhcp_address(recording("dhcp_enabled_addresses.json"), "Ethernet1") == ("198.18.5.140", 24)
    with pytest.raises(ValueError, match="no address from DHCP on Ethernet1"):
        windows.parse_dhcp_address(recording("dhcp_enabled_no_lease.json"), "Ethernet1")
    windows.parse_dhcp_disabled(recording("dhcp_disabled.json"))
    with pytest.raises(ValueError, match="still enabled"):
        windows.parse_dhcp_disabled(recording("dhcp_disabled.json").replace('"Dhcp":  0', '"Dhcp":  1'))
    assert windows.parse_dhcp_client_running(recording("dhcp_client_running.json")) is True
    assert windows.parse_dhcp_client_running(recording("dhcp_client_stopped.json")) is False
