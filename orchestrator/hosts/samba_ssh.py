"""Samba on Linux, managed over SSH: the host adapter for Linux Samba sources.

Connects with paramiko (key or password) and checks the server's host key against a
known_hosts file given by the caller (a key not in it, or a different key, is refused;
keys are never learnt automatically). It then runs read-only commands:

- identity: ``hostname``, ``hostname -f``, /etc/os-release, Samba's netbios name and
  workgroup (``testparm``);
- network: ``ip -j addr``, ``ip -j route``, ``ip -j -6 route``, /etc/resolv.conf;
- volumes: ``findmnt --df -J -b`` (real filesystems, as df shows them);
- shares: ``testparm -s -v`` (every share with the effective value of every share-level
  parameter: its own, else the one [global] sets, else Samba's default),
  ``sharesec --view-all`` and ``sharesec SHARE --viewsddl`` (share permissions);
- local principals: ``pdbedit -L -v``, ``net groupmap list verbose``, ``getent``.

For a Samba instance with its own smb.conf, pass ``smb_conf``: every Samba tool then
gets ``-s CONF``. The account must be allowed to read Samba's passdb and share ACLs
(root, typically with a key). Every command argument is quoted with shlex; a password is
never put on a command line, in a log or in an exception.

It changes the host only when asked to: ``ensure_directory`` (``mkdir -p``) and
``create_share`` (share permissions with ``sharesec``, the share in Samba's registry with
``net conf import`` or in smb.conf through a locked, testparm-checked swap, then
``smbcontrol smbd reload-config``; see orchestrator/hosts/samba_shares.py and
docs/share-recreation.md). Reading facts never changes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
import socket
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from orchestrator.hosts import samba_host_listing, samba_shares
from orchestrator.hosts.samba_host_listing import parse_testparm
from orchestrator.hosts.base import (
    AuthenticationFailed,
    CommandFailed,
    HostAdapter,
    HostKeyMismatch,
    HostKeyUnknown,
    HostUnreachable,
    ShareExists,
    ShareRejected,
    UnexpectedOutput,
)
from orchestrator.hosts.facts import (
    FolderSummary,
    GroupMember,
    HostIdentity,
    HostListing,
    IpAddress,
    LocalGroup,
    LocalPrincipals,
    LocalUser,
    NetworkAdapter,
    ShareAccessEntry,
    ShareCreation,
    ShareFacts,
    Volume,
)

# Access masks behind what sharesec prints (Samba's source3/lib/util_sd.c): a standard
# name for an exact match, else letters when they cover every bit, else the hex mask.
SHARESEC_RIGHTS = {"READ": 0x001200A9, "CHANGE": 0x001301FF, "FULL": 0x001F01FF}
SHARESEC_ACE_FLAGS = {"OI": 0x01, "CI": 0x02, "NP": 0x04, "IO": 0x08, "I": 0x10, "SA": 0x40, "FA": 0x80}
SHARESEC_LETTERS = {"R": 0x00120089, "W": 0x00120116, "X": 0x001200A0, "D": 0x00010000, "P": 0x00040000, "O": 0x00080000}
# Filesystems findmnt --df still lists that hold no data worth migrating.
NON_DATA_FILESYSTEMS = {"devtmpfs", "squashfs", "overlay", "nsfs", "proc", "sysfs"}
# Samba's [global]-only sections that are not shares.
NOT_SHARES = {"global"}
SPECIAL_SECTIONS = {"homes", "printers", "print$", "ipc$"}
CSC_TO_CACHING_MODE = {
    "manual": "Manual",
    "documents": "Documents",
    "programs": "Programs",
    "disable": "None",
}


class _RejectUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising our typed error with the key's fingerprint."""

    def missing_host_key(self, client, hostname, key):
        """Refuse the connection: the server's key is not in known_hosts."""
        raise HostKeyUnknown(
            hostname,
            f"SSH host key {key.get_name()} {key.fingerprint} is not in the known_hosts file; "
            "verify it out of band and add it before inventory",
        )


# The host listing of a share (``SambaSshHost.list_share``): the clock first (every later
# change carries a later ctime), then HOST_LISTING_PROGRAM (sent on standard input), run
# by the host's python3 on the output of testparm: where the share lives, its VFS
# modules and the filesystem type (``parse_share_listing`` decides from them whether the
# listing can be trusted), then, for a scan, the summary of every folder (one line per
# folder rather than one per entry: the hosts do the per-entry work, each its own, in
# parallel). Its complaints go to standard error, which fails the listing. Arguments:
# the program's (share, smb.conf or '', "scan" or "clock", threshold, names to leave
# out). Never spliced into.
LIST_SHARE_SCRIPT = r"""
date +%s%N
program=$(cat)
command -v python3 >/dev/null 2>&1 || exit 67
testparm -s ${2:+"$2"} 2>/dev/null | exec python3 -I -S -c "$program" "$@"
"""
HOST_LISTING_PROGRAM = Path(samba_host_listing.__file__).read_bytes()
KEEPALIVE_SECONDS = 30
# Commands run at once on one connection (``SambaSshHost._runs_at_once``); sshd allows 10
# sessions per connection by default (MaxSessions).
CONCURRENT_COMMANDS = 4
_LIST_SHARE_FAILURES = {65: "no such share in the host's Samba configuration",
                        66: "the share's folder cannot be read on the host",
                        67: "python3 is not installed on the host"}
# VFS modules that keep everything SMB shows of an entry in the entry's own inode (its
# data, stat, extended attributes: DOS attributes, NT ACL, streams), so that any change
# SMB could see moves its ctime. Others (catia or fruit renaming names, streams_depot or
# xattr_tdb keeping data elsewhere, shadow_copy2 adding snapshots) refuse the listing.
LISTING_VFS_MODULES = {"acl_xattr", "streams_xattr", "dfs_samba4", "recycle"}
# Local filesystems, whose ctimes come from this host's own clock (a network filesystem
# re-exported by Samba stamps changes with its server's clock).
LISTING_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "tmpfs", "f2fs", "jfs", "overlay"}


def parse_share_listing(output: bytes) -> HostListing:
    """A ``HostListing`` from ``LIST_SHARE_SCRIPT``'s output.

    A folder the host marked odd (a name in it SMB would show otherwise, or an entry gone
    while it was listed) is left out, and so is any folder whose path holds a backslash or
    bytes that are not UTF-8; so are their changed entries.
    """
    lines = output.split(b"\n", 4)
    if len(lines) < 4:
        raise ValueError(f"expected the clock, path, VFS modules and filesystem, got {output[:200]!r}")
    clock = int(lines[0])
    path, vfs, filesystem = (line.decode("utf-8", "replace").strip() for line in lines[1:4])
    refusal = None
    odd_modules = sorted(set(vfs.replace(",", " ").split()) - LISTING_VFS_MODULES)
    if odd_modules:
        refusal = f"VFS modules {', '.join(odd_modules)} may show or keep entries apart from the filesystem"
    elif filesystem not in LISTING_FILESYSTEMS:
        refusal = f"filesystem {filesystem or 'unknown'} is not a local filesystem known to keep ctimes"
    listing = HostListing(clock, path, refusal)
    folder: str | None = None
    for record in lines[4].split(b"\0") if len(lines) > 4 else ():
        if record.startswith(b"D "):
            newest, digest, odd, relative = record[2:].split(b" ", 3)
            folder = None
            if odd == b"0" and b"\\" not in relative:
                try:
                    folder = relative.decode("utf-8").replace("/", "\\")
                except UnicodeDecodeError:
                    continue
                listing.folders[folder] = FolderSummary(int(newest), digest.decode())
        elif record.startswith(b"C "):
            ctime, name = record[2:].split(b" ", 1)
            if folder is not None:
                listing.changed[f"{folder}\\{name.decode()}" if folder else name.decode()] = int(ctime)
        elif record:
            raise ValueError(f"unexpected record {record[:200]!r}")
    return listing


def parse_parameter_scopes(text: str) -> set[str]:
    """Names of share-level ([local]) parameters from ``testparm --show-all-parameters``."""
    local: set[str] = set()
    in_local = False
    for line in text.splitlines():
        if line.startswith("["):
            in_local = line.strip() == "[local]"
        elif in_local and "=" in line:
            local.add(line.split("=", 1)[0].strip())
    return local


def parse_sharesec_view_all(text: str) -> dict[str, list[ShareAccessEntry]]:
    """Share permissions per share from ``sharesec --view-all`` (``ACL:SID:TYPE/FLAGS/MASK``)."""
    result: dict[str, list[ShareAccessEntry]] = {}
    current: list[ShareAccessEntry] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = result.setdefault(line[1:-1], [])
        elif line.startswith("ACL:") and current is not None:
            current.append(_parse_sharesec_ace(line[4:]))
    return result


def _parse_sharesec_ace(text: str) -> ShareAccessEntry:
    trustee, _, rest = text.rpartition(":")
    kind, flags, mask_text = rest.split("/", 2)
    mask = SHARESEC_RIGHTS.get(mask_text.upper())
    if mask is None and mask_text and set(mask_text) <= set(SHARESEC_LETTERS):
        mask = 0
        for letter in mask_text:
            mask |= SHARESEC_LETTERS[letter]
    if mask is None:
        try:
            mask = int(mask_text, 16)
        except ValueError:
            raise ValueError(f"sharesec printed an unknown access mask {mask_text!r}") from None
    right = {v: k.capitalize() for k, v in SHARESEC_RIGHTS.items()}.get(mask, "Custom")
    access_type = {"ALLOWED": "Allow", "DENIED": "Deny"}.get(kind.upper(), kind)
    sid = trustee if trustee.startswith("S-1-") else None
    return ShareAccessEntry(
        trustee=trustee, access_type=access_type, right=right, mask=mask, sid=sid, flags=_parse_ace_flags(flags)
    )


def _parse_ace_flags(text: str) -> int:
    """ACE flags as sharesec prints them: hex (``0x0``) or names joined by ``|`` (``OI|CI``)."""
    try:
        return int(text, 16)
    except ValueError:
        pass
    flags = 0
    for name in filter(None, text.split("|")):
        if name not in SHARESEC_ACE_FLAGS:
            raise ValueError(f"sharesec printed an unknown ACE flag {name!r}")
        flags |= SHARESEC_ACE_FLAGS[name]
    return flags


def parse_os_release(text: str) -> dict[str, str]:
    """Key/value pairs of /etc/os-release, values unquoted as a shell would."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value) if value.strip() else [""]
        values[key.strip()] = parts[0] if parts else ""
    return values


def parse_ip_json(addr_json: str, route_json: str, resolv_conf: str) -> list[NetworkAdapter]:
    """Adapters from ``ip -j addr`` and ``ip -j route`` (v4 and v6 merged) and resolv.conf."""
    links = json.loads(addr_json)
    routes = json.loads(route_json) if route_json.strip() else []
    dns = [
        line.split()[1]
        for line in resolv_conf.splitlines()
        if line.strip().startswith("nameserver") and len(line.split()) > 1
    ]
    gateways: dict[str, list[str]] = {}
    for route in routes:
        if route.get("dst") == "default" and route.get("gateway"):
            gateways.setdefault(route.get("dev", ""), []).append(route["gateway"])
    adapters = []
    for link in links:
        name = link.get("ifname", "")
        loopback = link.get("link_type") == "loopback"
        addresses = [
            IpAddress(
                address=info["local"],
                prefix_length=int(info["prefixlen"]),
                family="ipv4" if info.get("family") == "inet" else "ipv6",
                dhcp=bool(info.get("dynamic")) if info.get("family") == "inet" else None,
            )
            for info in link.get("addr_info", [])
            if "local" in info
        ]
        v4 = [a for a in addresses if a.family == "ipv4"]
        adapters.append(
            NetworkAdapter(
                name=name,
                mac_address=None if loopback else link.get("address"),
                addresses=addresses,
                gateways=gateways.get(name, []),
                dns_servers=[] if loopback else list(dns),
                dhcp=any(a.dhcp for a in v4) if v4 else None,
                loopback=loopback,
            )
        )
    return adapters


def parse_findmnt_df(text: str) -> list[Volume]:
    """Volumes from ``findmnt --df -J -b``, one per mount point, pseudo filesystems left out."""
    filesystems = json.loads(text).get("filesystems", [])
    volumes: dict[str, Volume] = {}
    for fs in filesystems:
        if fs.get("fstype") in NON_DATA_FILESYSTEMS or fs["target"] in volumes:
            continue
        volumes[fs["target"]] = Volume(
            mount_point=fs["target"],
            filesystem=fs.get("fstype"),
            size_bytes=_int_or_none(fs.get("size")),
            free_bytes=_int_or_none(fs.get("avail")),
            device=fs.get("source"),
        )
    return list(volumes.values())


def parse_pdbedit_verbose(text: str) -> list[dict[str, str]]:
    """Accounts of ``pdbedit -L -v``: a dict of ``Field: value`` per account."""
    accounts: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("---------------"):
            current = {}
            accounts.append(current)
        elif ":" in line and current is not None:
            key, _, value = line.partition(":")
            current[key.strip()] = value.strip()
    return accounts


def parse_groupmap_verbose(text: str) -> list[dict[str, str]]:
    """Mappings of ``net groupmap list verbose``: NT name plus SID, Unix gid/group, type, comment."""
    groups: list[dict[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(("\t", " ")):
            groups.append({"name": line.strip()})
        elif groups and ":" in line:
            key, _, value = line.partition(":")
            groups[-1][key.strip()] = value.strip()
    return groups


def parse_getent(text: str) -> list[list[str]]:
    """Colon-separated records of ``getent passwd`` / ``getent group``."""
    return [line.split(":") for line in text.splitlines() if line.strip()]


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("yes", "true", "1", "on")


def _readable(method):
    """Turn a parser's ValueError/KeyError into UnexpectedOutput naming the host."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ValueError, KeyError, IndexError) as exc:
            raise UnexpectedOutput(
                self._where, f"{method.__name__}: a command printed something unexpected: {exc!r}"
            ) from None

    return wrapper


class SambaSshHost(HostAdapter):
    """A Linux Samba server reached over SSH.

    ``known_hosts`` is required: the server's host key must be in it. Give ``password``
    or ``key_filename`` (a private key file; ``key_passphrase`` if it is encrypted).
    ``smb_conf`` selects an smb.conf other than the distribution's default.
    ``timeout`` bounds connecting and logging in, ``command_timeout`` each command's
    silence.
    """

    concurrent_reads = True  # each command is a session channel of its own (paramiko's transport is thread-safe)

    def __init__(
        self,
        host: str,
        *,
        username: str,
        known_hosts: str | Path,
        port: int = 22,
        password: str | None = None,
        key_filename: str | Path | None = None,
        key_passphrase: str | None = None,
        smb_conf: str | None = None,
        timeout: float = 15.0,
        command_timeout: float = 300.0,
    ):
        if password is None and key_filename is None:
            raise ValueError("give a password or a key file for SSH login")
        self.host = host
        self.port = port
        self.username = username
        self.known_hosts = Path(known_hosts)
        self._password = password
        self._key_filename = str(key_filename) if key_filename else None
        self._key_passphrase = key_passphrase
        self.smb_conf = smb_conf
        self.timeout = timeout
        self.command_timeout = command_timeout
        self._client: paramiko.SSHClient | None = None
        self._share_parameters: set[str] | None = None  # share-level parameter names, read once
        self._connecting = threading.Lock()  # connect() may be called from several threads

    # --- connection --------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}" if self.port != 22 else self.host

    def connect(self) -> None:
        """Open the SSH session (done on first use); typed errors for every failure."""
        with self._connecting:
            if self._client is None:
                self._connect()

    def _connect(self) -> None:
        if not self.known_hosts.is_file():
            raise HostKeyUnknown(self._where, f"known_hosts file {self.known_hosts} does not exist")
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(_RejectUnknownHost())
        try:
            # Small SSH packets go out at once (TCP_NODELAY): with Nagle's algorithm each
            # command waited out a delayed acknowledgement (40 ms per command, measured).
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.connect(
                self.host,
                sock=sock,
                port=self.port,
                username=self.username,
                password=self._password,
                key_filename=self._key_filename,
                passphrase=self._key_passphrase,
                timeout=self.timeout,
                banner_timeout=self.timeout,
                auth_timeout=self.timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyUnknown as exc:
            client.close()
            raise HostKeyUnknown(self._where, str(exc).split(": ", 1)[1]) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(
                self._where,
                f"SSH host key changed: known_hosts has {exc.expected_key.get_name()} "
                f"{exc.expected_key.fingerprint} but the server offered {exc.key.get_name()} "
                f"{exc.key.fingerprint}; someone may be impersonating the server, or it was "
                "reinstalled (then update known_hosts)",
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise AuthenticationFailed(
                self._where, f"SSH login as {self.username!r} was refused: check the password or key"
            ) from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            client.close()
            raise HostUnreachable(self._where, f"SSH connection refused or failed: {exc.strerror}") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise HostUnreachable(self._where, f"no SSH answer within {self.timeout:g} s") from None
        except socket.gaierror as exc:
            client.close()
            raise HostUnreachable(self._where, f"host name not resolved: {exc.strerror}") from None
        except OSError as exc:
            client.close()
            raise HostUnreachable(self._where, f"SSH connection failed: {exc.strerror or exc}") from None
        except paramiko.SSHException as exc:
            client.close()
            raise HostUnreachable(self._where, f"SSH handshake failed: {exc}") from None
        # Keep-alives every 30 s: a connection kept for a run's hours is neither dropped as
        # idle by a firewall nor, once dead, found out only by a command's timeout.
        client.get_transport().set_keepalive(KEEPALIVE_SECONDS)
        self._client = client

    def close(self) -> None:
        """Close the SSH session (after a connection under way in another thread)."""
        with self._connecting:
            if self._client is not None:
                self._client.close()
                self._client = None

    def run(self, argv: list[str], *, check: bool = True, input: bytes | None = None) -> tuple[int, str, str]:
        """Run one command (argv, each argument shell-quoted) and return (status, stdout, stderr).

        Runs in the C locale so outputs parse the same everywhere. With ``check`` a
        non-zero status raises ``CommandFailed``. ``input`` is written to the command's
        standard input (a file's new content, say; kept small).
        """
        status, out, err = self._execute(argv, check=check, input=input)
        return status, out.decode("utf-8", "replace"), err

    def _execute(self, argv: list[str], *, check: bool = True,
                 input: bytes | None = None) -> tuple[int, bytes, str]:
        """``run`` with the command's standard output as the bytes it printed."""
        transport = None if self._client is None else self._client.get_transport()
        if transport is not None and not transport.is_active():
            self.close()  # the server or the network dropped it (a run keeps its adapter for hours)
        self.connect()
        assert self._client is not None
        command = shlex.join(argv)
        try:
            channel = self._client.get_transport().open_session(timeout=self.timeout)
            channel.settimeout(self.command_timeout)
            # A command given no input reads /dev/null rather than waiting for an end of
            # input: paramiko sends a channel's EOF outside its lock, so an EOF sent just
            # as a quick command ends could follow the channel's close, and OpenSSH ends
            # the whole connection on an EOF for a closed channel (seen with commands run
            # at once: "ieof packet referred to nonexistent channel").
            channel.exec_command(f"LC_ALL=C LANG=C {command}" + ("" if input else " </dev/null"))
            if input:
                channel.sendall(input)
                channel.shutdown_write()
            err_chunks: list[bytes] = []
            reader = threading.Thread(target=_drain_stderr, args=(channel, err_chunks), daemon=True)
            reader.start()
            out = bytearray()
            while chunk := channel.recv(1 << 20):
                out += chunk
            reader.join()
            status = channel.recv_exit_status()
            channel.close()
        except (socket.timeout, TimeoutError):
            self.close()
            raise HostUnreachable(
                self._where, f"no output for {self.command_timeout:g} s from {command!r}; session closed"
            ) from None
        except (paramiko.SSHException, OSError) as exc:
            self.close()
            raise HostUnreachable(self._where, f"SSH session lost while running {command!r}: {exc}") from None
        stderr = b"".join(err_chunks).decode("utf-8", "replace")
        if check and status != 0:
            raise CommandFailed(self._where, command, status, stderr)
        return status, bytes(out), stderr

    def _output(self, argv: list[str]) -> str:
        return self.run(argv)[1]

    def _runs_at_once(self, commands: list[list[str]], *,
                      check: bool | list[bool] = True) -> list[tuple[int, str, str]]:
        """``run`` of each command, all at once on the one SSH connection (a session
        channel each, at most ``CONCURRENT_COMMANDS`` at a time, within sshd's default
        of 10 per connection): the host's tools take tens of milliseconds each
        (pdbedit, testparm, sharesec), which one after another add up on every run.
        ``check`` is ``run``'s, for all commands or one per command. Results in the
        commands' order; the first failure is raised."""
        checks = check if isinstance(check, list) else [check] * len(commands)
        self.connect()
        if len(commands) == 1:
            return [self.run(commands[0], check=checks[0])]
        with ThreadPoolExecutor(min(len(commands), CONCURRENT_COMMANDS), thread_name_prefix="sms-ssh") as pool:
            running = [pool.submit(self.run, argv, check=checked) for argv, checked in zip(commands, checks)]
        return [future.result() for future in running]

    def _samba(self, tool: str, *args: str) -> list[str]:
        """argv of a Samba tool with ``-s CONF`` when an smb.conf was given."""
        conf = ["-s", self.smb_conf] if self.smb_conf else []
        return [tool, *conf, *args]

    # --- facts -------------------------------------------------------------------
    @_readable
    def identity(self) -> HostIdentity:
        """Host name, FQDN and DNS domain, Samba netbios name and workgroup, OS release."""
        hostname = self._output(["hostname"]).strip()
        status, fqdn_out, _ = self.run(["hostname", "-f"], check=False)
        fqdn = fqdn_out.strip() if status == 0 and fqdn_out.strip() else None
        domain = fqdn.split(".", 1)[1] if fqdn and "." in fqdn else None
        release = parse_os_release(self._output(["cat", "/etc/os-release"]))
        globals_ = parse_testparm(self._output(self._samba("testparm", "-s", "-v"))).get("global", {})
        return HostIdentity(
            hostname=hostname,
            fqdn=fqdn,
            domain=globals_.get("realm") or domain,
            netbios_name=globals_.get("netbios name") or None,
            workgroup=globals_.get("workgroup") or None,
            part_of_domain=globals_.get("security", "").lower() in ("ads", "domain")
            or "member server" in globals_.get("server role", "").lower(),
            os_name=release.get("NAME"),
            os_version=release.get("VERSION") or release.get("VERSION_ID"),
        )

    @_readable
    def network(self) -> list[NetworkAdapter]:
        """Interfaces with MAC, addresses/prefixes (DHCP when the kernel marks them dynamic),
        default gateways per interface, and the resolver's name servers."""
        addr = self._output(["ip", "-j", "addr", "show"])
        routes = json.loads(self._output(["ip", "-j", "route", "show"]) or "[]")
        routes += json.loads(self._output(["ip", "-j", "-6", "route", "show"]) or "[]")
        _, resolv, _ = self.run(["cat", "/etc/resolv.conf"], check=False)
        return parse_ip_json(addr, json.dumps(routes), resolv)

    @_readable
    def volumes(self) -> list[Volume]:
        """Mounted data filesystems with type, size and space available (bytes)."""
        return parse_findmnt_df(
            self._output(["findmnt", "--df", "-J", "-b", "-o", "SOURCE,FSTYPE,SIZE,USED,AVAIL,TARGET"])
        )

    @_readable
    def shares(self) -> list[ShareFacts]:
        """Every share of smb.conf with the effective value of every share-level parameter,
        and its share permissions (SDDL and parsed entries)."""
        settings, scopes, permissions = (out for _status, out, _err in self._runs_at_once([
            self._samba("testparm", "-s", "-v"), ["testparm", "--show-all-parameters"],
            self._samba("sharesec", "--view-all")]))
        sections = parse_testparm(settings)
        share_level = parse_parameter_scopes(scopes)
        inherited = {k: v for k, v in sections.get("global", {}).items() if k in share_level}
        acls = parse_sharesec_view_all(permissions)
        names = [name for name in sections if name.lower() not in NOT_SHARES]
        descriptors = self._runs_at_once([self._samba("sharesec", name, "--viewsddl") for name in names],
                                         check=False) if names else []
        return [_share_from_parameters(name, {**inherited, **sections[name]}, acls.get(name, []),
                                       sddl.strip() if status == 0 else None)
                for name, (status, sddl, _err) in zip(names, descriptors)]

    @_readable
    def local_principals(self) -> LocalPrincipals:
        """Samba accounts (pdbedit) and the groups they belong to, with members.

        Groups are those mapped to Windows groups (``net groupmap``) and every Unix group
        a Samba account belongs to; an unmapped Unix group has no SID.
        """
        listed, mappings, unix_groups = (out for _status, out, _err in self._runs_at_once([
            self._samba("pdbedit", "-L", "-v"), self._samba("net", "groupmap", "list", "verbose"),
            ["getent", "group"]]))
        accounts = parse_pdbedit_verbose(listed)
        names = [a["Unix username"] for a in accounts if a.get("Unix username")]
        passwd = {}
        if names:
            _, out, _ = self.run(["getent", "passwd", *names], check=False)
            passwd = {rec[0]: rec for rec in parse_getent(out) if len(rec) >= 4}
        users = []
        for account in accounts:
            name = account.get("Unix username", "")
            flags = account.get("Account Flags", "")
            users.append(
                LocalUser(
                    name=name,
                    sid=account.get("User SID") or None,
                    enabled="D" not in flags.strip("[]"),
                    full_name=account.get("Full Name") or None,
                    description=account.get("Account desc") or None,
                    unix_id=_int_or_none(passwd[name][2]) if name in passwd else None,
                )
            )
        mapped = {g.get("Unix group", ""): g for g in parse_groupmap_verbose(mappings)}
        primary: dict[str, list[str]] = {}
        for name, rec in passwd.items():
            primary.setdefault(rec[3], []).append(name)
        groups = []
        samba_users = set(names)
        for rec in parse_getent(unix_groups):
            if len(rec) < 4:
                continue
            unix_name, gid = rec[0], rec[2]
            members = list(dict.fromkeys(primary.get(gid, []) + [m for m in rec[3].split(",") if m]))
            mapping = mapped.pop(unix_name, None)
            if mapping is None and not samba_users.intersection(members):
                continue
            groups.append(
                LocalGroup(
                    name=mapping["name"] if mapping else unix_name,
                    sid=mapping.get("SID") if mapping else None,
                    description=mapping.get("Comment") if mapping else None,
                    unix_id=_int_or_none(gid),
                    unix_name=unix_name,
                    members=[
                        GroupMember(
                            name=m,
                            sid=next((u.sid for u in users if u.name == m), None),
                            object_class="User",
                            source="Samba" if m in samba_users else "Unix",
                        )
                        for m in members
                    ],
                )
            )
        for mapping in mapped.values():  # mapped to a gid that getent does not know
            groups.append(
                LocalGroup(
                    name=mapping["name"],
                    sid=mapping.get("SID"),
                    description=mapping.get("Comment"),
                    unix_id=_int_or_none(mapping.get("Unix gid")),
                    unix_name=mapping.get("Unix group") or None,
                )
            )
        return LocalPrincipals(users=users, groups=groups)

    # --- share creation (transfer) -------------------------------------------------
    def ensure_directory(self, path: str) -> bool:
        """Create folder ``path`` with its parents (``mkdir -p``) unless it exists; True if created."""
        if self.run(["test", "-d", path], check=False)[0] == 0:
            return False
        self.run(["mkdir", "-p", "--", path])
        return True

    def config_file(self) -> str:
        """The smb.conf Samba reads: ``smb_conf`` if given, else the CONFIGFILE ``smbd -b`` names."""
        if self.smb_conf:
            return self.smb_conf
        for line in self._output(["smbd", "-b"]).splitlines():
            if line.strip().startswith("CONFIGFILE:"):
                return line.split(":", 1)[1].strip()
        raise UnexpectedOutput(self._where, "smbd -b did not name the configuration file (CONFIGFILE)")

    def create_share(self, share: ShareFacts, path: str, *, replace: bool = False) -> ShareCreation:
        """Create (or with ``replace`` update) share ``share.name`` on folder ``path``.

        Parameters: see ``samba_shares.carried_parameters``. The share permissions are
        stored first (``sharesec --force``, before the share exists), so the share never
        appears with Samba's default Everyone: Full. Then the share's section is written:
        to Samba's registry with ``net conf import`` (one transaction) when Samba reads
        shares from the registry and the share is not already a section of smb.conf; else
        into smb.conf itself (``samba_shares.EDIT_CONF_SCRIPT``: locked, checked with
        testparm, previous file kept as ``smb.conf.sms-previous``, swapped in with a
        rename). Finally ``smbcontrol smbd reload-config``.

        A share whose section (in smb.conf or the registry) and permissions already are
        what would be written (a re-run, nothing changed on the source) is left alone:
        nothing is written, nothing reloaded, ``action`` "unchanged".
        """
        if share.share_type not in (None, "disk"):
            raise ShareRejected(
                self._where, f"share {share.name!r} is a {share.share_type} share; only disk shares are recreated"
            )
        if share.name.lower() in SPECIAL_SECTIONS | NOT_SHARES:
            raise ShareRejected(
                self._where, f"share name {share.name!r} names a special section of smb.conf on Samba; rename it"
            )
        try:
            samba_shares.check_share_name(share.name)
        except ValueError as exc:
            raise ShareRejected(self._where, str(exc)) from None
        conf_path = self.config_file()
        reads = [["cat", "--", conf_path], self._samba("testparm", "-s", "-v"),
                 self._samba("sharesec", share.name, "--viewsddl"),
                 self._samba("net", "conf", "showshare", share.name)]
        if self._share_parameters is None:
            reads.append(["testparm", "--show-all-parameters"])
        (_, conf_text, _), (_, settings, _), (sddl_status, current_sddl, _), (registry_status, registry_text, _), \
            *scopes = self._runs_at_once(reads, check=[True, True, False, False, True][:len(reads)])
        if "\ufffd" in conf_text:
            raise ShareRejected(self._where, f"{conf_path} is not UTF-8 text; add the share by hand")
        sections = parse_testparm(settings)
        global_parameters = sections.pop("global", {})
        if self._share_parameters is None:
            self._share_parameters = parse_parameter_scopes(scopes[0][1])
        inherited = {k: v for k, v in global_parameters.items() if k in self._share_parameters}
        existing = next((sections[n] for n in sections if n.lower() == share.name.lower()), None)
        in_file = samba_shares.section_span(conf_text, share.name) is not None
        if (existing is not None or in_file) and not replace:
            raise ShareExists(self._where, share.name, (existing or {}).get("path"))
        try:
            params, notes = samba_shares.carried_parameters(
                share, known=self._share_parameters, inherited=inherited
            )
            section = samba_shares.section_text(share.name, path, params)
            acl_arguments, acl_notes = samba_shares.sharesec_arguments(share)
        except ValueError as exc:
            raise ShareRejected(self._where, f"share {share.name!r}: {exc}") from None
        registry = not in_file and samba_shares.uses_registry_shares(conf_text, global_parameters)
        in_registry = registry and registry_status == 0
        if existing is not None and not in_file:
            if not in_registry:
                raise ShareRejected(
                    self._where,
                    f"share {share.name!r} is defined outside {conf_path} (an included file); update it there",
                )
        new_text = samba_shares.splice_section(conf_text, share.name, section)
        same_permissions = acl_arguments is None or (
            acl_arguments[0] == "--setsddl" and sddl_status == 0 and current_sddl.strip() == acl_arguments[1])
        if same_permissions and (in_file and new_text == conf_text or in_registry and registry_text == section):
            return ShareCreation(name=share.name, path=path, action="unchanged", notes=notes + acl_notes)
        if acl_arguments is not None:
            self.run(self._samba("sharesec", share.name, "--force", *acl_arguments))
        if registry:
            self.run(["sh", "-c", samba_shares.IMPORT_REGISTRY_SCRIPT, "sh", share.name, *self._samba("net")],
                     input=section.encode("utf-8"))
            notes.append("written to Samba's registry (net conf)")
        else:
            expected = hashlib.sha256(conf_text.encode("utf-8")).hexdigest()
            self.run(["sh", "-c", samba_shares.EDIT_CONF_SCRIPT, "sh", conf_path, expected, "testparm"],
                     input=new_text.encode("utf-8"))
            notes.append(f"written to {conf_path} (previous version kept as {conf_path}.sms-previous)")
        self.run(self._samba("smbcontrol", "smbd", "reload-config"))
        action = "updated" if existing is not None or in_file else "created"
        return ShareCreation(name=share.name, path=path, action=action, notes=notes + acl_notes)

    # --- host listing (re-runs) ------------------------------------------------------
    @_readable
    def clock(self) -> int:
        """The host's clock (``date +%s%N``), in nanoseconds since 1970."""
        return int(self._output(["date", "+%s%N"]))

    def list_share(self, share: str, *, prune: Iterable[str] = (), clock_only: bool = False,
                   changed_since: int | None = None) -> HostListing:
        """The server's clock, then where ``share`` lives, then (unless ``clock_only``) the
        summary of every folder under it, made on the host by its python3
        (``LIST_SHARE_SCRIPT`` running ``HOST_LISTING_PROGRAM``, one command).

        The listing can stand in for an SMB listing only where the filesystem moves an
        entry's ctime whenever SMB could see a change (``parse_share_listing``); otherwise
        ``refusal`` says why. A share the host does not know, a folder the host could not
        read or a host without python3 raises ``CommandFailed`` (the caller then lists over
        SMB).
        """
        argv = ["sh", "-c", LIST_SHARE_SCRIPT, "sh", share, self.smb_conf or "", "clock" if clock_only else "scan",
                "-" if changed_since is None else str(changed_since), *prune]
        status, out, stderr = self._execute(argv, check=False, input=HOST_LISTING_PROGRAM)
        if status != 0 or stderr.strip():
            raise CommandFailed(self._where, f"list share {share!r}", status,
                                stderr or _LIST_SHARE_FAILURES.get(status, ""))
        try:
            return parse_share_listing(out)
        except ValueError as exc:
            raise UnexpectedOutput(self._where, f"listing of share {share!r}: {exc}") from None


def _drain_stderr(channel: paramiko.Channel, chunks: list[bytes]) -> None:
    """Collect a command's standard error until it ends (or the channel times out)."""
    try:
        while chunk := channel.recv_stderr(65536):
            chunks.append(chunk)
    except (socket.timeout, OSError):
        return


def _share_from_parameters(
    name: str, properties: dict[str, str], access: list[ShareAccessEntry], sddl: str | None
) -> ShareFacts:
    """A ShareFacts from a share's effective smb.conf parameters (Samba defaults otherwise)."""
    lower = name.lower()
    if _bool(properties.get("printable")) or lower == "printers":
        share_type = "printer"
    elif lower == "ipc$":
        share_type = "ipc"
    else:
        share_type = "disk"
    encrypt = properties.get("smb encrypt", properties.get("server smb encrypt", "default")).lower()
    return ShareFacts(
        name=name,
        path=properties.get("path") or None,
        description=properties.get("comment") or None,
        share_type=share_type,
        special=lower in SPECIAL_SECTIONS or _bool(properties.get("administrative share")) is True,
        temporary=False,
        folder_enumeration_mode="AccessBased"
        if _bool(properties.get("access based share enum"))
        else "Unrestricted",
        caching_mode=CSC_TO_CACHING_MODE.get(properties.get("csc policy", "manual").lower()),
        continuously_available=False,
        encrypt_data=encrypt in ("required", "mandatory", "force"),
        concurrent_user_limit=int(properties.get("max connections", "0") or 0),
        properties=properties,
        sddl=sddl or None,
        access=access,
    )
