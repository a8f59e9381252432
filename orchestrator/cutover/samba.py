"""Cutover operations on a Linux Samba server, over SSH (through ``SambaSshHost.run``).

What the cutover stages need from a Samba host, each step idempotent so a resumed or
rolled-back cutover can run it again:

- IPv4 addresses per interface (``ip -j -4 addr``); add one (``ip addr add``, then a
  gratuitous ARP, ``arping -U -c 2 -I IF IP``, so neighbours update their caches at
  once instead of after about a minute); remove one (``ip addr del``); check that an
  address is free (duplicate address detection, ``arping -D``);
- an address from DHCP (Debian's isc-dhcp-client): ``dhclient -1 -v`` on the interface,
  with its pid file, lease file and script in ``sms-cutover/`` under Samba's state
  directory (per Samba instance); the address obtained is the lease file's last
  ``fixed-address``, read back with ``ip -j -4 addr``. The script given to dhclient
  (``-sf``) only adds, renews and removes the leased address: Debian's own
  dhclient-script flushes every address labelled with the interface on release or
  expiry (``ip -4 addr flush dev IF label IF``), which would take the management address
  and the restored addresses with it, and it rewrites resolv.conf and routes, which a
  server keeping its static configuration must not get. Released with ``dhclient -r``;
- the NetBIOS name: read from ``testparm``; changed by a reversible edit of smb.conf
  (``orchestrator.cutover.smbconf``), keeping the machine SID (Samba keeps one SID per
  name: ``net getlocalsid``, then ``net -n NEW setlocalsid`` before the edit), then
  ``smbcontrol all reload-config`` and a restart of samba-dcerpcd's workers (a running
  rpcd worker keeps the old name);
- share access: normal, read-only (``read only = yes``) or maintenance (read-only, and
  only the given hosts may connect: ``hosts deny = ALL`` + ``hosts allow``); sessions on
  the share are closed (``smbcontrol smbd close-share``) so clients reconnect under the
  new rules.

smb.conf is edited safely: read with its SHA-256, changed in memory, written to a sibling
file with the original's mode and owner, checked with ``testparm``, and moved into place
only if the original has not changed meanwhile. After each edit the effective value is
read back with ``testparm`` (an ``include`` could override it). Registry configuration
(``net conf``) is not supported.

This module must never delete a file of a share, change a line of smb.conf it did not add,
or put a credential on a command line.
"""

from __future__ import annotations

import hashlib
import json
import re

from orchestrator.cutover import smbconf
from orchestrator.cutover.plan import MAINTENANCE, NORMAL, READ_ONLY, SHARE_MODES
from orchestrator.hosts.base import CommandFailed, UnexpectedOutput
from orchestrator.hosts.samba_ssh import SambaSshHost

DEFAULT_SMB_CONF = "/etc/samba/smb.conf"
DHCP_CLIENT = "dhclient"
_LEASED = re.compile(r"^\s*fixed-address\s+([0-9.]+)\s*;", re.MULTILINE)

# dhclient's script (-sf): only the leased IPv4 address is set, renewed or removed; no
# flush, no routes, no resolv.conf (see the module docstring). dhclient passes the lease
# in environment variables (dhclient-script(8)).
DHCLIENT_SCRIPT = r"""#!/bin/sh
# Written by sms-migrate's cutover: keeps only the leased address on the interface.
case "$reason" in
    PREINIT)
        ip link set dev "$interface" up ;;
    BOUND|RENEW|REBIND|REBOOT)
        if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
            ip -4 addr del "$old_ip_address/$old_subnet_mask" dev "$interface" 2>/dev/null
        fi
        ip -4 addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" \
            valid_lft "$new_dhcp_lease_time" preferred_lft "$new_dhcp_lease_time" ;;
    EXPIRE|FAIL|RELEASE|STOP)
        if [ -n "$old_ip_address" ]; then
            ip -4 addr del "$old_ip_address/$old_subnet_mask" dev "$interface" 2>/dev/null
        fi ;;
esac
exit 0
"""
_SID = re.compile(r"\bS-1-5-21-\d+-\d+-\d+\b")

# Replace smb.conf with stdin, atomically, only if it still has the expected SHA-256 and
# the new text passes testparm. $1 = smb.conf, $2 = expected SHA-256.
_REPLACE_CONF = r"""
set -eu
conf=$1; expected=$2; new=$conf.sms-cutover-new
cp -p -- "$conf" "$new"
cat > "$new"
if ! out=$(testparm -s -- "$new" 2>&1 >/dev/null); then
    rm -f -- "$new"; printf 'testparm rejected the edited smb.conf: %s\n' "$out" >&2; exit 4
fi
actual=$(sha256sum -- "$conf" | cut -d' ' -f1)
if [ "$actual" != "$expected" ]; then
    rm -f -- "$new"; echo "smb.conf changed while cutover was editing it; try again" >&2; exit 3
fi
mv -f -- "$new" "$conf"
"""


def leased_address(lease_file_text: str) -> str | None:
    """The address of dhclient's latest lease (the last ``fixed-address`` of its lease file)."""
    found = _LEASED.findall(lease_file_text or "")
    return found[-1] if found else None


def parse_ip_addresses(text: str) -> dict[str, list[tuple[str, int]]]:
    """{interface: [(address, prefix length)]} from ``ip -j -4 addr show``."""
    result: dict[str, list[tuple[str, int]]] = {}
    for link in json.loads(text or "[]"):
        result[link["ifname"]] = [
            (info["local"], int(info["prefixlen"]))
            for info in link.get("addr_info", [])
            if info.get("family") == "inet" and "local" in info
        ]
    return result


class SambaCutoverHost:
    """Cutover operations on one Samba server reached through a ``SambaSshHost``.

    ``name`` is how messages name the server. The smb.conf is the adapter's own
    (``host.smb_conf``) or the distribution's default.
    """

    def __init__(self, host: SambaSshHost, name: str | None = None):
        self.host = host
        self.name = name or host.host
        self.conf = host.smb_conf or DEFAULT_SMB_CONF

    @property
    def management_address(self) -> str:
        """Where the SSH session goes (must not be an address that moves)."""
        return self.host.host

    def _tool(self, tool: str, *args: str) -> list[str]:
        return [tool, "-s", self.conf, *args] if self.host.smb_conf else [tool, *args]

    def close(self) -> None:
        """Close the SSH session."""
        self.host.close()

    # --- addresses ---------------------------------------------------------------------
    def addresses(self) -> dict[str, list[tuple[str, int]]]:
        """IPv4 addresses per interface."""
        return parse_ip_addresses(self.host.run(["ip", "-j", "-4", "addr", "show"])[1])

    def has_address(self, address: str) -> bool:
        """True when ``address`` is on any interface of the host."""
        return any(address == a for pairs in self.addresses().values() for a, _ in pairs)

    def add_address(self, interface: str, address: str, prefix_length: int) -> None:
        """Add ``address/prefix`` to ``interface`` (unless there) and announce it by gratuitous ARP."""
        if not self.has_address(address):
            self.host.run(["ip", "addr", "add", f"{address}/{prefix_length}", "dev", interface])
        self.announce(interface, address)

    def announce(self, interface: str, address: str) -> None:
        """Two gratuitous ARPs for ``address`` so neighbours move it to this host at once."""
        self.host.run(["arping", "-q", "-U", "-c", "2", "-I", interface, address])

    def remove_address(self, interface: str, address: str, prefix_length: int) -> None:
        """Remove ``address/prefix`` from ``interface`` (nothing to do when absent)."""
        if self.has_address(address):
            self.host.run(["ip", "addr", "del", f"{address}/{prefix_length}", "dev", interface])

    def address_free(self, interface: str, address: str) -> bool:
        """True when nobody on ``interface``'s network answers for ``address`` (arping -D)."""
        status, _, stderr = self.host.run(
            ["arping", "-q", "-D", "-c", "2", "-w", "3", "-I", interface, address], check=False)
        if status not in (0, 1):
            raise CommandFailed(self.name, f"arping -D {address}", status, stderr)
        return status == 0

    # --- DHCP ----------------------------------------------------------------------------
    def dhcp_client_problem(self, interface: str) -> str | None:
        """Why the host cannot take an address by DHCP on ``interface``, or None when it can."""
        status, _, _ = self.host.run(["sh", "-c", 'command -v "$1"', "sh", DHCP_CLIENT], check=False)
        if status != 0:
            return f"{DHCP_CLIENT} is not installed on {self.name} (Debian: apt install isc-dhcp-client)"
        return None

    def _dhclient_files(self, interface: str) -> dict[str, str]:
        """dhclient's script, pid and lease files for ``interface``, under Samba's state directory."""
        folder = f"{self.effective('state directory')}/sms-cutover"
        return {"folder": folder, "script": f"{folder}/dhclient-script", "pid": f"{folder}/dhclient-{interface}.pid",
                "leases": f"{folder}/dhclient-{interface}.leases"}

    def _dhclient(self, files: dict[str, str], interface: str, *options: str) -> list[str]:
        self.host.run(["mkdir", "-p", "--", files["folder"]])
        self.host.run(["sh", "-c", 'cat > "$1" && chmod 0755 "$1"', "sh", files["script"]],
                      input=DHCLIENT_SCRIPT.encode())
        return [DHCP_CLIENT, *options, "-v", "-sf", files["script"], "-pf", files["pid"], "-lf", files["leases"],
                interface]

    def _leased(self, files: dict[str, str], interface: str) -> tuple[str, int] | None:
        """The latest lease's address and prefix when it is on ``interface`` (ip -j addr)."""
        status, text, _ = self.host.run(["cat", "--", files["leases"]], check=False)
        address = leased_address(text) if status == 0 else None
        on_interface = dict(self.addresses().get(interface, []))
        return (address, on_interface[address]) if address in on_interface else None

    def obtain_dhcp_address(self, interface: str) -> tuple[str, int]:
        """An address for ``interface`` from a DHCP server: (address, prefix length).

        dhclient asks once (``-1``; exit status 2 when no server answered) and stays in
        the background to renew the lease. A lease already held by our dhclient (a
        resumed stage) is kept, not asked for again.
        """
        files = self._dhclient_files(interface)
        running = self.host.run(["sh", "-c", 'kill -0 "$(cat -- "$1")"', "sh", files["pid"]], check=False)[0] == 0
        held = self._leased(files, interface) if running else None
        if held:
            return held
        status, _, stderr = self.host.run(self._dhclient(files, interface, "-1"), check=False)
        if status != 0:
            tail = " / ".join(line for line in stderr.splitlines()[-4:] if line.strip())
            raise CommandFailed(self.name, f"dhclient -1 {interface} (no DHCP lease: {tail})", status, stderr)
        held = self._leased(files, interface)
        if not held:
            raise UnexpectedOutput(self.name, f"dhclient reported a lease, but its address is not on {interface}")
        return held

    def release_dhcp_address(self, interface: str) -> None:
        """Release the lease of ``interface`` (``dhclient -r``: the DHCP server is told, our
        dhclient stops, its script removes the address); the address must be gone after."""
        files = self._dhclient_files(interface)
        held = self._leased(files, interface)
        self.host.run(self._dhclient(files, interface, "-r"))
        if held and self.has_address(held[0]):
            raise UnexpectedOutput(self.name, f"{held[0]} is still on {interface} after dhclient -r")

    # --- smb.conf ----------------------------------------------------------------------
    def _read_conf(self) -> tuple[str, str]:
        raw = self.host.run(["cat", "--", self.conf])[1]
        return raw, hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def _write_conf(self, text: str, expected_sha256: str) -> None:
        status, _, stderr = self.host.run(["sh", "-c", _REPLACE_CONF, "sms-cutover", self.conf, expected_sha256],
                                          input=text.encode("utf-8"), check=False)
        if status != 0:
            raise CommandFailed(self.name, f"replace {self.conf}", status, stderr)

    def _edit(self, change) -> None:
        """Apply ``change(text) -> text`` to smb.conf (no write when nothing changes)."""
        text, digest = self._read_conf()
        new = change(text)
        if new != text:
            self._write_conf(new, digest)

    def effective(self, parameter: str, section: str = "global") -> str:
        """A parameter's effective value as Samba reads the configuration (testparm)."""
        argv = ["testparm", "-s", f"--parameter-name={parameter}", self.conf]
        if section.lower() != "global":
            argv.insert(2, f"--section-name={section}")
        return self.host.run(argv)[1].strip()

    def reload(self) -> None:
        """Make the running smbd re-read smb.conf."""
        self.host.run(self._tool("smbcontrol", "all", "reload-config"))

    def share_names(self) -> set[str]:
        """Names of the shares smb.conf defines."""
        text, _ = self._read_conf()
        return {name for name in smbconf.sections(text) if name.lower() != "global"}

    # --- name ----------------------------------------------------------------------------
    def netbios_name(self) -> str:
        """The server's NetBIOS name as Samba uses it."""
        return self.effective("netbios name").upper()

    def machine_sid(self) -> str:
        """The local machine SID Samba holds for the current name."""
        out = self.host.run(self._tool("net", "getlocalsid"))[1]
        match = _SID.search(out)
        if not match:
            raise UnexpectedOutput(self.name, f"net getlocalsid printed no SID: {out.strip()!r}")
        return match.group(0)

    def rename(self, name: str, tag: str) -> None:
        """Give Samba the NetBIOS name ``name`` (marked with ``tag``), keeping the machine SID."""
        self._set_name(lambda text: smbconf.add_marked(text, tag, "global", "netbios name", name), name)

    def undo_rename(self, original: str, tag: str) -> None:
        """Remove ``tag``'s name change; the name must then be ``original`` again."""
        self._set_name(lambda text: smbconf.remove_marked(text, tag, "global", "netbios name"), original)

    def _set_name(self, change, expected: str) -> None:
        """Edit the name unless it is already ``expected``; then reload and restart the workers.

        The machine SID is stored for the new name (``net -n NAME setlocalsid``) before the
        edit, so a failure between the two never loses it; reloading again is harmless, so
        a resumed rename always ends with the running daemons using the name.
        """
        if self.netbios_name() != expected.upper():
            self.host.run(self._tool("net", "-n", expected.upper(), "setlocalsid", self.machine_sid()))
            self._edit(change)
            now = self.netbios_name()
            if now != expected.upper():
                raise UnexpectedOutput(
                    self.name, f"after editing {self.conf} Samba's NetBIOS name is {now!r}, not {expected!r} "
                    "(is it set again in an included file?)")
        self.reload()
        self.restart_rpc_workers()

    def restart_rpc_workers(self) -> None:
        """End samba-dcerpcd's rpcd_* workers so they start again with the new configuration.

        A running worker keeps answering srvsvc with the old name after reload-config
        (measured with Samba 4.17); samba-dcerpcd starts a fresh worker on the next call.
        Only the children of this instance's samba-dcerpcd (its pid file) are signalled.
        """
        pid_dir = self.effective("pid directory")
        status, out, _ = self.host.run(["cat", "--", f"{pid_dir}/samba-dcerpcd.pid"], check=False)
        pid = out.split()[0] if status == 0 and out.split() else ""
        if not pid.isdigit():
            return  # no samba-dcerpcd running: the next one reads the new configuration
        status, _, stderr = self.host.run(["pkill", "-TERM", "-P", pid], check=False)
        if status not in (0, 1):  # 1: no worker was running
            raise CommandFailed(self.name, f"pkill -TERM -P {pid}", status, stderr)

    # --- share access ------------------------------------------------------------------
    def share_snapshot(self, shares: list[str]) -> dict:
        """Nothing to keep: the share access is restored by removing the run's marked lines."""
        return {}

    def set_share_access(self, shares: list[str], mode: str, tag: str,
                         allowed_hosts: list[str] | None = None, snapshot: dict | None = None) -> None:
        """Put ``shares`` in ``mode``: normal (our lines removed), read-only or maintenance.

        Maintenance lets only ``allowed_hosts`` connect (default 127.0.0.1). Sessions on
        each share are closed afterwards so clients reconnect under the new rules.
        ``snapshot`` is not needed on Samba (the marked lines are the record).
        """
        if mode not in SHARE_MODES:
            raise ValueError(f"share mode must be one of {SHARE_MODES}")
        known = {s.lower(): s for s in self.share_names()}
        missing = [s for s in shares if s.lower() not in known]
        if missing:
            raise UnexpectedOutput(self.name, f"smb.conf defines no share {', '.join(missing)}")
        hosts = " ".join(allowed_hosts or ["127.0.0.1"])

        def change(text: str) -> str:
            for share in shares:
                section = known[share.lower()]
                text = smbconf.remove_marked(text, tag, section)
                if mode in (READ_ONLY, MAINTENANCE):
                    text = smbconf.add_marked(text, tag, section, "read only", "yes")
                if mode == MAINTENANCE:
                    text = smbconf.add_marked(text, tag, section, "hosts deny", "ALL")
                    text = smbconf.add_marked(text, tag, section, "hosts allow", hosts)
            return text

        self._edit(change)
        for share in shares:
            if mode != NORMAL and self.effective("read only", known[share.lower()]).lower() != "yes":
                raise UnexpectedOutput(self.name, f"share {share} is still writable after the edit")
        self.reload()
        for share in shares:
            self.host.run(self._tool("smbcontrol", "smbd", "close-share", known[share.lower()]))

    def share_available(self, share: str) -> bool:
        """True when Samba serves ``share`` (``available`` is not off)."""
        return self.effective("available", share).lower() in ("yes", "true", "1", "")
