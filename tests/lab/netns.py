"""A network-namespace lab: file servers with their own network, name, smbd and sshd.

``NetnsLab`` builds, in the root namespace, a bridge of its own with an address from
198.18.0.0/15 (the range reserved for network benchmarks) and, per host, a network
namespace joined to the bridge by a veth pair (``eth0`` inside). Each lab takes its own
/24 of that range, reserved with a lock file, so parallel sessions never collide. A host
gets its own host name (a process started with ``unshare --uts`` holds its UTS namespace
and every daemon of the host is started inside it with ``nsenter``), a *management
address* that never moves (its sshd listens there), and on request:

- a real smbd with its own smb.conf (``bind interfaces only = no``, so it serves
  addresses added later without a restart; ``acl_xattr streams_xattr``; signing
  mandatory; the migration account of ``tests.lab.samba``);
- a real sshd with its own host key, root logging in with the lab's client key only; the
  lab's known_hosts file holds every host's key, so clients check keys as in production.

``start_dhcp_server`` runs a DHCP server (Debian's dnsmasq-base, ``dnsmasq --no-daemon
--port=0``: DHCP only, no DNS, no router or name server offered) in the client namespace,
which plays the network's router, handing out a range of the lab's /24; it is stopped by
pid with the lab.

A *client* namespace stands for the users: ``client_read`` / ``client_write`` /
``client_python`` run Python (the venv's interpreter, smbprotocol) inside it, with the
account's password passed on standard input, never in argv.

Everything is torn down by ``destroy()``: daemons by the pids in their pid files, the
holder processes by pid, any process left inside one of our namespaces by the pid the
kernel lists for that namespace, then each namespace, veth and the bridge by name. This
module must never touch an address outside 198.18.0.0/15, an interface or namespace it
did not create, or a process it did not start.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.fixtures import unavailable
from tests.lab.samba import (
    MIGRATION_PASSWORD,
    MIGRATION_USER,
    LabUnavailable,
    _alive,
    ensure_system_user,
    short_socket_directory,
)
from tests.lab.sshd import KEYS_PARENT, SSHD, _keygen

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
SUBNET_LOCK_DIR = Path("/tmp/sms-lab-netns")
REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT = "client"

# Run inside the client namespace: reads a JSON request on stdin (it carries the
# password), does one SMB operation with smbprotocol, prints a JSON answer.
_CLIENT_SNIPPET = r"""
import base64, json, sys
import common  # keeps impacket's scripts off sys.path
import smbclient
from smbprotocol.exceptions import SMBOSError, SMBResponseException
req = json.load(sys.stdin)
unc = "\\\\" + req["address"] + "\\" + req["share"] + ("\\" + req["path"] if req["path"] else "")
try:
    smbclient.register_session(req["address"], username=req["username"], password=req["password"],
                               require_signing=True, connection_timeout=req["timeout"])
    if req["op"] == "read":
        with smbclient.open_file(unc, mode="rb") as f:
            out = {"ok": True, "data": base64.b64encode(f.read()).decode()}
    elif req["op"] == "write":
        with smbclient.open_file(unc, mode="wb") as f:
            f.write(base64.b64decode(req["data"]))
        out = {"ok": True}
    else:
        out = {"ok": True, "names": sorted(smbclient.listdir(unc))}
except SMBResponseException as exc:
    out = {"ok": False, "status": exc.status, "error": str(exc)}
except SMBOSError as exc:
    out = {"ok": False, "status": exc.ntstatus, "error": str(exc)}
except Exception as exc:
    out = {"ok": False, "status": None, "error": f"{type(exc).__name__}: {exc}"}
finally:
    smbclient.reset_connection_cache()
print(json.dumps(out))
"""


class ClientError(RuntimeError):
    """An SMB operation of the lab client failed; ``status`` is the NTSTATUS (or None)."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LabUnavailable(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _reserve_subnet() -> tuple[ipaddress.IPv4Network, object]:
    """A /24 of 198.18.0.0/15 that no lab holds and no root-namespace address is in."""
    SUBNET_LOCK_DIR.mkdir(exist_ok=True)
    subnets = list(LAB_RANGE.subnets(new_prefix=24))
    start = secrets.randbelow(len(subnets))
    for offset in range(len(subnets)):
        subnet = subnets[(start + offset) % len(subnets)]
        lock = open(SUBNET_LOCK_DIR / str(subnet.network_address), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        used = json.loads(_ip("-j", "addr", "show", "to", str(subnet)).stdout or "[]")
        if any(link.get("addr_info") for link in used):
            lock.close()
            continue
        return subnet, lock
    raise LabUnavailable("no free /24 in 198.18.0.0/15")


def _listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.3)
        return probe.connect_ex((address, port)) == 0


def _pid_from(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return None


def _stop_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM each pid, wait, SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class NetnsHost:
    """One host of the lab: its namespace, interface, name, addresses and daemons."""

    name: str
    namespace: str
    veth: str  # root-namespace end of the veth pair; "eth0" inside
    hostname: str
    management_address: str
    root: Path
    interface: str = "eth0"
    holder: subprocess.Popen | None = None
    smb_conf: Path | None = None
    netbios_name: str | None = None
    shares: dict[str, Path] = field(default_factory=dict)
    sshd_pid_file: Path | None = None
    sockets: Path | None = None  # smbd's short socket directory (tests.lab.samba)

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's network and UTS namespaces."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-u", "--", *argv]

    def run(self, argv: list[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside this host (as the lab's root, not over SSH)."""
        result = subprocess.run(self.exec_argv(argv), capture_output=True, text=True, input=input)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)} failed: {result.stderr.strip()}")
        return result

    def addresses(self) -> list[str]:
        """IPv4 addresses on the host's ``eth0`` right now."""
        links = json.loads(self.run(["ip", "-j", "-4", "addr", "show", "dev", self.interface]).stdout or "[]")
        return [info["local"] for link in links for info in link.get("addr_info", [])]

    def smbd_pids(self) -> list[int]:
        """Pids of this host's smbd and samba-dcerpcd, from their pid files."""
        if self.smb_conf is None:
            return []
        return [pid for f in (self.smb_conf.parent / "pid").glob("*.pid") if (pid := _pid_from(f))]


class NetnsLab:
    """A bridge, host namespaces with smbd and sshd, and a client namespace.

    ``add_host(name)`` creates a namespace; ``start_samba`` and ``start_sshd`` start its
    daemons; ``add_address`` gives it a further address (a service address that may move).
    ``destroy()`` removes everything; the lab is also a context manager.
    """

    def __init__(self, root: Path):
        if os.geteuid() != 0:
            raise LabUnavailable("network namespaces need root")
        for tool in ("ip", "nsenter", "unshare", "smbd", "smbpasswd", "arping", "ssh-keygen"):
            if not shutil.which(tool):
                raise LabUnavailable(f"{tool} is not installed")
        if not os.path.exists(SSHD):
            raise LabUnavailable("sshd is not installed")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = f"sms{secrets.token_hex(3)}"
        self.bridge = f"{self.tag}b"
        self.subnet, self._subnet_lock = _reserve_subnet()
        self._hosts_made = 0
        self.hosts: dict[str, NetnsHost] = {}
        self._keys_dir: Path | None = None
        self.client_key: Path | None = None
        self.known_hosts = self.root / "known_hosts"
        self.known_hosts.write_text("")
        self._dhcp_server: subprocess.Popen | None = None
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.address(1)}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self.client = self.add_host(CLIENT, hostname="client")
        except BaseException:
            self.destroy()
            raise

    # --- addressing --------------------------------------------------------------------
    def address(self, number: int) -> str:
        """The lab address ``number`` (1..254) in the lab's /24; 1 is the bridge's."""
        if not 0 < number < 255:
            raise ValueError("host number must be 1..254")
        return str(self.subnet.network_address + number)

    @property
    def bridge_address(self) -> str:
        """The root namespace's address on the bridge (where the orchestrator speaks from)."""
        return self.address(1)

    # --- hosts ---------------------------------------------------------------------------
    def add_host(self, name: str, *, hostname: str | None = None) -> NetnsHost:
        """A new namespace joined to the bridge, with its management address and host name."""
        index = self._hosts_made
        self._hosts_made += 1
        host = NetnsHost(
            name=name,
            namespace=f"{self.tag}-{name}",
            veth=f"{self.tag}v{index}",
            hostname=hostname or name,
            management_address=self.address(10 + index),
            root=self.root / name,
        )
        host.root.mkdir(parents=True, exist_ok=True)
        self.hosts[name] = host
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.interface, "netns", host.namespace)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.management_address}/{self.subnet.prefixlen}",
            "dev", host.interface)
        _ip("-n", host.namespace, "link", "set", host.interface, "up")
        host.holder = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, "unshare", "--uts", "sh", "-c",
             'hostname "$1" && exec sleep infinity', "sh", host.hostname],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            probe = subprocess.run(["nsenter", "-t", str(host.holder.pid), "-u", "hostname"],
                                   capture_output=True, text=True)
            if probe.stdout.strip() == host.hostname:
                return host
            if host.holder.poll() is not None:
                break
            time.sleep(0.02)
        raise LabUnavailable(f"could not give namespace {host.namespace} the host name {host.hostname}")

    def add_address(self, host: NetnsHost, address: str) -> None:
        """Add a (service) address to the host's eth0, announced with a gratuitous ARP."""
        if ipaddress.ip_address(address) not in self.subnet:
            raise ValueError(f"{address} is not in the lab's subnet {self.subnet}")
        host.run(["ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", host.interface])
        host.run(["arping", "-q", "-U", "-c", "1", "-I", host.interface, address], check=False)

    # --- daemons -------------------------------------------------------------------------
    def start_samba(self, host: NetnsHost, netbios_name: str, shares: tuple[str, ...] = ("data",),
                    timeout: float = 15.0) -> Path:
        """Start the host's smbd with the given shares (read-write); returns its smb.conf."""
        r = host.root / "samba"
        for sub in ("private", "state", "cache", "pid", "log", "shares"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        host.sockets = host.sockets or short_socket_directory()
        host.smb_conf = r / "smb.conf"
        host.netbios_name = netbios_name
        lines = [
            "[global]",
            f"netbios name = {netbios_name}",
            "server role = standalone server",
            "workgroup = LAB",
            "disable netbios = yes",
            "load printers = no",
            "disable spoolss = yes",
            "printcap name = /dev/null",
            "bind interfaces only = no",
            "smb ports = 445",
            f"private dir = {r / 'private'}",
            f"lock directory = {host.sockets / 'lock'}",
            f"state directory = {r / 'state'}",
            f"cache directory = {r / 'cache'}",
            f"pid directory = {r / 'pid'}",
            f"ncalrpc dir = {host.sockets / 'ncalrpc'}",
            f"log file = {r / 'log' / 'log.%m'}",
            "max log size = 10000",
            f"passdb backend = tdbsam:{r / 'private' / 'passdb.tdb'}",
            "server signing = mandatory",
            "server min protocol = SMB2_10",
            "vfs objects = acl_xattr streams_xattr",
            "map acl inherit = yes",
            "store dos attributes = yes",
            f"admin users = {MIGRATION_USER}",
            "usershare path =",
        ]
        for share in shares:
            path = r / "shares" / share
            path.mkdir(parents=True, exist_ok=True)
            host.shares[share] = path
            lines += ["", f"[{share}]", f"path = {path}", "read only = no"]
        host.smb_conf.write_text("\n".join(lines) + "\n")
        ensure_system_user(MIGRATION_USER)
        subprocess.run(["smbpasswd", "-c", str(host.smb_conf), "-s", "-a", MIGRATION_USER],
                       input=f"{MIGRATION_PASSWORD}\n{MIGRATION_PASSWORD}\n", text=True,
                       check=True, capture_output=True)
        host.run(["smbd", "-D", "-s", str(host.smb_conf)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _listening(host.management_address, 445):
                return host.smb_conf
            time.sleep(0.05)
        raise LabUnavailable(f"smbd of {host.name} did not listen on {host.management_address}:445")

    def _client_keys(self) -> Path:
        if self.client_key is None:
            self.client_key = self.root / "client_ed25519"
            _keygen(self.client_key, "netns-lab-client")
            KEYS_PARENT.mkdir(mode=0o755, exist_ok=True)
            self._keys_dir = Path(tempfile.mkdtemp(prefix="netns-", dir=KEYS_PARENT))
            authorized = self._keys_dir / "authorized_keys"
            shutil.copyfile(self.client_key.with_suffix(".pub"), authorized)
            os.chmod(authorized, 0o600)
        return self._keys_dir / "authorized_keys"

    def start_sshd(self, host: NetnsHost, timeout: float = 10.0) -> None:
        """Start the host's sshd on its management address, port 22; root by the lab key."""
        authorized = self._client_keys()
        r = host.root / "sshd"
        r.mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o700)
        host_key = r / "host_ed25519"
        if not host_key.exists():
            _keygen(host_key, f"netns-lab-{host.name}")
            public = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
            with self.known_hosts.open("a") as known:
                known.write(f"{host.management_address} {public}\n")
        host.sshd_pid_file = r / "sshd.pid"
        conf = r / "sshd_config"
        conf.write_text("\n".join([
            f"ListenAddress {host.management_address}:22",
            f"HostKey {host_key}",
            f"PidFile {host.sshd_pid_file}",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "AllowUsers root",
            f"AuthorizedKeysFile {authorized}",
            "StrictModes yes",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "",
        ]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host.run([SSHD, "-f", str(conf), "-E", str(r / "sshd.log")])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.sshd_pid_file.exists() and _listening(host.management_address, 22):
                return
            time.sleep(0.05)
        raise LabUnavailable(f"sshd of {host.name} did not listen on {host.management_address}:22")

    def stop_sshd(self, host: NetnsHost) -> None:
        """Stop the host's sshd and every SSH session in the host's namespace, by pid.

        The listener's pid is in its pid file; its sessions are the other sshd processes
        the kernel lists in this (our own) namespace.
        """
        pids = [pid] if host.sshd_pid_file is not None and (pid := _pid_from(host.sshd_pid_file)) else []
        for text in _ip("netns", "pids", host.namespace, check=False).stdout.split():
            with contextlib.suppress(OSError):
                if text.isdigit() and os.readlink(f"/proc/{text}/exe") == SSHD:
                    pids.append(int(text))
        _stop_pids(sorted(set(pids)))
        if host.sshd_pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                host.sshd_pid_file.unlink()

    def start_dhcp_server(self, first: int, last: int, timeout: float = 10.0) -> Path:
        """Serve DHCP on the lab's network from the client namespace: lab addresses
        ``first``..``last``, 2-minute leases; returns dnsmasq's lease file."""
        if self._dhcp_server is not None:
            raise RuntimeError("the lab's DHCP server is already running")
        if not shutil.which("dnsmasq"):
            raise LabUnavailable("dnsmasq is not installed (Debian: dnsmasq-base)")
        folder = self.root / "dnsmasq"
        folder.mkdir(exist_ok=True)
        leases, log = folder / "leases", folder / "log"
        self._dhcp_server = subprocess.Popen(self.client.exec_argv([
            "dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--bind-interfaces",
            f"--interface={self.client.interface}", f"--listen-address={self.client.management_address}",
            f"--dhcp-range={self.address(first)},{self.address(last)},{self.subnet.netmask},2m",
            "--dhcp-option=3", "--dhcp-option=6", f"--dhcp-leasefile={leases}", f"--pid-file={folder / 'pid'}",
            f"--log-facility={log}", "--log-dhcp"]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and "DHCP, IP range" in log.read_text(errors="replace"):
                return leases
            if self._dhcp_server.poll() is not None:
                raise LabUnavailable(f"dnsmasq stopped: {self._dhcp_server.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)
        raise LabUnavailable("dnsmasq did not start serving DHCP")

    # --- the users' side -----------------------------------------------------------------
    def client_python(self, code: str, stdin: str = "", timeout: float = 120.0) -> str:
        """Run a Python snippet in the client namespace with the venv's interpreter; stdout."""
        result = subprocess.run(
            self.client.exec_argv([sys.executable, "-c", code]),
            input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        if result.returncode != 0:
            raise RuntimeError(f"client snippet failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def _client_smb(self, op: str, address: str, share: str, path: str, *, data: bytes = b"",
                    username: str = MIGRATION_USER, password: str = MIGRATION_PASSWORD,
                    timeout: int = 30) -> dict:
        request = {"op": op, "address": address, "share": share, "path": path.replace("/", "\\"),
                   "username": username, "password": password, "timeout": timeout,
                   "data": base64.b64encode(data).decode()}
        answer = json.loads(self.client_python(_CLIENT_SNIPPET, json.dumps(request)).strip().splitlines()[-1])
        if not answer["ok"]:
            raise ClientError(f"{op} \\\\{address}\\{share}\\{path}: {answer['error']}", answer["status"])
        return answer

    def client_read(self, address: str, share: str, path: str, **kwargs) -> bytes:
        """The bytes of ``\\\\address\\share\\path`` read by a user in the client namespace."""
        return base64.b64decode(self._client_smb("read", address, share, path, **kwargs)["data"])

    def client_write(self, address: str, share: str, path: str, data: bytes, **kwargs) -> None:
        """Write a file as a user in the client namespace (ClientError when refused)."""
        self._client_smb("write", address, share, path, data=data, **kwargs)

    def client_list(self, address: str, share: str, path: str = "", **kwargs) -> list[str]:
        """Names in a folder of a share, listed from the client namespace."""
        return self._client_smb("list", address, share, path, **kwargs)["names"]

    # --- teardown ------------------------------------------------------------------------
    def destroy(self) -> None:
        """Stop every process of the lab by pid, delete namespaces, veths and the bridge by name."""
        if self._dhcp_server is not None:
            _stop_pids([self._dhcp_server.pid])
            self._dhcp_server.wait(timeout=5)
            self._dhcp_server = None
        for host in self.hosts.values():
            pids = host.smbd_pids()
            if host.sshd_pid_file is not None and (pid := _pid_from(host.sshd_pid_file)):
                pids.append(pid)
            _stop_pids(pids)
        for host in self.hosts.values():
            # Whatever still runs inside our namespace was started by this lab (forked children).
            listed = _ip("netns", "pids", host.namespace, check=False).stdout.split()
            leftovers = [int(p) for p in listed if p.isdigit()]
            if host.holder is not None:
                leftovers.append(host.holder.pid)
            _stop_pids(leftovers, timeout=2.0)
            if host.holder is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.holder.wait(timeout=2)
            _ip("netns", "del", host.namespace, check=False)
            _ip("link", "del", host.veth, check=False)
            if host.sockets is not None:
                shutil.rmtree(host.sockets, ignore_errors=True)
        _ip("link", "del", self.bridge, check=False)
        if self._keys_dir is not None:
            shutil.rmtree(self._keys_dir, ignore_errors=True)
            self._keys_dir = None
        if self._subnet_lock is not None:
            self._subnet_lock.close()
            self._subnet_lock = None

    def __enter__(self) -> "NetnsLab":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


@pytest.fixture
def netns_lab(tmp_path):
    """A fresh ``NetnsLab`` (bridge and client namespace only); destroyed after the test."""
    try:
        lab = NetnsLab(tmp_path / "netns")
    except LabUnavailable as exc:
        unavailable(str(exc))
    try:
        yield lab
    finally:
        lab.destroy()
