"""Share recreation on Windows over WinRM: the scripts, their escaping, and recorded outputs.

No Windows host can run here. The scripts are checked by reading them back with the rule
PowerShell's tokenizer applies to single-quoted strings (a quote character, ASCII or
U+2018..U+201B, doubled stands for itself; an undoubled one ends the string): every value
from the source must come back intact as a literal and nothing of it may be left in code
position. tests/data/winrm_shares/*.json are outputs in Windows PowerShell 5.1's
ConvertTo-Json shape (CRLF, two spaces after the colon, 5.1's nested indentation, enums
as integers, \\u0027-style escapes, the {"value": [...], "Count": n} array wrapper). The
adapter itself runs against real pywinrm pointed at a loopback address where nothing
listens.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator.hosts import ShareRejected
from orchestrator.hosts.facts import ShareAccessEntry, ShareFacts
from orchestrator.hosts.windows_shares import (
    PS_SINGLE_QUOTES,
    access_commands,
    create_share_script,
    ensure_directory_script,
    parse_create_share_output,
    parse_ensure_directory_output,
    ps_quote,
)
from orchestrator.hosts.windows_winrm import WindowsWinRmHost
from orchestrator.transfer.shares import recreate_shares
from tests.lab.samba import reserve_loopback_address

DATA = Path(__file__).parent / "data" / "winrm_shares"
HOSTILE_NAME = "O'Brien’s $(Stop-Computer) `whoami` ‘x‛‚y @{a} ''"
HOSTILE_DESCRIPTION = "It's \"quoted\" '' ‘’ $(Stop-Computer) `n\nsecond line; Remove-Item C:\\ -Recurse # end'"
HOSTILE_PATH = "E:\\Migrated\\O'Brien’s $(Stop-Computer)"
HOSTILE_ACCOUNT = "CORP\\O'Neil’s $(whoami) group"


def recorded(name: str) -> bytes:
    """A recorded output as pywinrm hands it over: bytes, CRLF line ends, UTF-8."""
    return (DATA / f"{name}.json").read_bytes()


def split_literals(script: str) -> tuple[str, list[str]]:
    """(the script with each single-quoted literal replaced by ``''``, the literals' values)."""
    code, literals, i = [], [], 0
    while i < len(script):
        char = script[i]
        if char not in PS_SINGLE_QUOTES:
            code.append(char)
            i += 1
            continue
        value, i = [], i + 1
        while True:
            if i >= len(script):
                raise AssertionError("unterminated single-quoted string")
            if script[i] in PS_SINGLE_QUOTES:
                if i + 1 < len(script) and script[i + 1] in PS_SINGLE_QUOTES:
                    value.append(script[i + 1])
                    i += 2
                    continue
                i += 1
                break
            value.append(script[i])
            i += 1
        literals.append("".join(value))
        code.append("''")
    return "".join(code), literals


def hostile_share(**overrides) -> ShareFacts:
    values = dict(
        name=HOSTILE_NAME, path="D:\\Shares\\x", description=HOSTILE_DESCRIPTION,
        folder_enumeration_mode="AccessBased", caching_mode="Documents", concurrent_user_limit=25,
        encrypt_data=True, continuously_available=False,
        access=[
            ShareAccessEntry(trustee="S-1-5-32-544", sid="S-1-5-32-544", access_type="Allow", right="Full"),
            ShareAccessEntry(trustee=HOSTILE_ACCOUNT, access_type="Allow", right="Change"),
            ShareAccessEntry(trustee="CORP\\Contractors", access_type="Deny", right="Full"),
        ],
    )
    values.update(overrides)
    return ShareFacts(**values)


@pytest.mark.parametrize("value", ["plain", "", "O'Brien", "’‘‚‛'", "''", "$(x) `y` \"z\"", "a\nb\r\nc", "ü€😀"])
def test_ps_quote_round_trips(value):
    quoted = ps_quote(value)
    code, literals = split_literals(quoted)
    assert (code, literals) == ("''", [value])


def test_ps_quote_refuses_nul():
    with pytest.raises(ValueError):
        ps_quote("a\0b")


def test_create_script_keeps_hostile_values_in_literals():
    script, notes = create_share_script(hostile_share(), HOSTILE_PATH, replace=False)
    code, literals = split_literals(script)
    for value in (HOSTILE_NAME, HOSTILE_PATH, HOSTILE_DESCRIPTION, HOSTILE_ACCOUNT):
        assert value in literals
    for fragment in ("Stop-Computer", "whoami", "Remove-Item", "O'Brien", "second line"):
        assert fragment not in code
    assert notes == []
    # the commands the brief asks for, with every setting SMS captures
    assert "New-SmbShare -Name $name -Path $path @settings" in code
    for key in ("Description", "FolderEnumerationMode", "CachingMode", "ConcurrentUserLimit",
                "EncryptData", "ContinuouslyAvailable"):
        assert f"{key} = " in code
    assert "ConcurrentUserLimit = 25" in code and "EncryptData = $true" in code
    assert "ContinuouslyAvailable = $false" in code and "$replace = $false" in code
    assert "AccessBased" in literals and "Documents" in literals
    # every existing entry (New-SmbShare's default Everyone: Read too) is revoked first
    revoke = code.index("Revoke-SmbShareAccess")
    grants = [line.strip() for line in code.splitlines() if line.strip().startswith(("Grant-", "Block-"))]
    assert all(code.index(line) > revoke for line in grants)
    assert grants == [  # deny first: stopping half-way never leaves more access than the source gave
        "Block-SmbShareAccess -Name $name -AccountName (Resolve-Account '') -Force | Out-Null",
        "Grant-SmbShareAccess -AccessRight Full -Name $name -AccountName (Resolve-Account '') -Force | Out-Null",
        "Grant-SmbShareAccess -AccessRight Change -Name $name -AccountName (Resolve-Account '') -Force | Out-Null",
    ]
    assert "S-1-5-32-544" in literals and "CORP\\Contractors" in literals
    assert "Unblock-SmbShareAccess" in code  # existing deny entries are removed too
    assert "Set-SmbPathAcl" not in code
    assert code.rstrip().endswith("} | ConvertTo-Json -Depth 4\n}")


def test_replace_and_path_acl_options():
    script, _ = create_share_script(hostile_share(), HOSTILE_PATH, replace=True, path_acl_from_share=True)
    code, _ = split_literals(script)
    assert "$replace = $true" in code
    assert "Set-SmbShare -Name $name -Force @settings" in code
    assert "Remove-SmbShare -Name $name -Force" in code  # same name on another folder: recreated
    assert "Set-SmbPathAcl -ShareName $name" in code


@pytest.mark.parametrize("name", ["a/b", "a\\b", "x*", "q?", "[x]", "a;b", "a,b", "a=b", "", "  ", "tab\there"])
def test_names_windows_refuses(name):
    with pytest.raises(ValueError, match="cannot be used on Windows"):
        create_share_script(hostile_share(name=name), "E:\\x", replace=False)


def test_nul_in_a_value_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        create_share_script(hostile_share(description="a\0b"), "E:\\x", replace=False)


def test_access_approximations_are_reported():
    samba_read_only = ShareFacts(
        name="ro", path="/srv/ro", properties={"path": "/srv/ro", "read only": "Yes", "valid users": "alice"},
        access=[
            ShareAccessEntry(trustee="S-1-1-0", sid="S-1-1-0", access_type="Allow", right="Full", mask=0x001F01FF),
            ShareAccessEntry(trustee="S-1-5-32-546", sid="S-1-5-32-546", access_type="Deny", right="Change",
                             mask=0x001301FF),
            ShareAccessEntry(trustee="S-1-5-11", sid="S-1-5-11", access_type="Allow", right="Custom", mask=0x00000001),
        ],
    )
    lines, notes = access_commands(samba_read_only)
    assert [line.split(" -Name")[0] for line in lines] == ["Block-SmbShareAccess", "Grant-SmbShareAccess -AccessRight Read"]
    assert any("reduced to Read" in n for n in notes)
    assert any("widened to Full" in n for n in notes)
    assert any("S-1-5-11" in n and "left out" in n for n in notes)
    custom = ShareFacts(name="c", path="/c", access=[
        ShareAccessEntry(trustee="S-1-1-0", sid="S-1-1-0", access_type="Allow", right="Custom", mask=0x001F01BF)])
    lines, notes = access_commands(custom)
    assert "-AccessRight Change" in lines[0] and any("approximated as Change" in n for n in notes)
    _, notes = create_share_script(samba_read_only, "E:\\ro", replace=False)
    assert any("valid users = alice" in n for n in notes)
    _, notes = access_commands(ShareFacts(name="none", path="/n"))
    assert any("no share permission entries" in n for n in notes)


def test_ensure_directory_script():
    code, literals = split_literals(ensure_directory_script(HOSTILE_PATH))
    assert literals == [HOSTILE_PATH]
    assert "[System.IO.Directory]::CreateDirectory($path)" in code
    assert "Test-Path -LiteralPath $path" in code


def test_parse_created_share():
    action, existing, share = parse_create_share_output(recorded("create_share_created"))
    assert (action, existing) == ("created", None)
    assert share.name == "O'Brien’s $(Files)"
    assert share.path == "E:\\Migrated\\O'Brien’s $(Files)"
    assert share.description == "Finance & Payroll <confidential> 'quoted'"
    assert (share.folder_enumeration_mode, share.caching_mode, share.encrypt_data, share.concurrent_user_limit,
            share.continuously_available) == ("AccessBased", "Documents", True, 25, False)
    assert [(a.trustee, a.access_type, a.right) for a in share.access] == [
        ("FS02\\Contractors", "Deny", "Full"),
        ("BUILTIN\\Administrators", "Allow", "Full"),
        ("FS02\\Finance", "Allow", "Change"),
        ("Everyone", "Allow", "Read"),
    ]
    assert share.sddl.startswith("O:SYG:SYD:(D;;FA;;;")


def test_parse_exists_wrapped_and_directory_outputs():
    assert parse_create_share_output(recorded("create_share_exists")) == ("exists", "D:\\Old\\Finance", None)
    action, _, share = parse_create_share_output(recorded("create_share_updated_wrapped"))
    assert action == "updated" and share.name == "Projects" and share.description is None
    assert [(a.trustee, a.right) for a in share.access] == [("Everyone", "Read")]
    assert parse_ensure_directory_output(recorded("ensure_directory_created")) is True
    assert parse_ensure_directory_output(recorded("ensure_directory_existed")) is False
    for garbage in (b"", b"[]", b'{"Action": "deleted"}', b'{"Created": "yes"}', b"<html>"):
        with pytest.raises(ValueError):
            parse_create_share_output(garbage) if b"Created" not in garbage else parse_ensure_directory_output(garbage)


def test_adapter_refuses_before_the_network_and_reports_unreachable():
    address, lock = reserve_loopback_address()  # nothing listens there
    try:
        host = WindowsWinRmHost(address, username="mig", password="S3cret-pw", operation_timeout=5)
        with pytest.raises(ShareRejected) as caught:
            host.create_share(hostile_share(name="bad/name"), "E:\\x")
        assert "cannot be used on Windows" in str(caught.value)
        share = hostile_share(name="Finance", path="D:\\Shares\\Finance")
        [outcome] = recreate_shares(host, host, [share], {"D:\\Shares": "E:\\Migrated"})
        assert outcome.status == "failed"
        assert outcome.destination_path == "E:\\Migrated\\Finance"
        assert outcome.reason.startswith("folder E:\\Migrated\\Finance could not be created on ")
        assert "did not answer" in outcome.reason and "S3cret-pw" not in outcome.reason
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/8", "dev", "lo"], capture_output=True)
        lock.close()
