"""Real smbd instances for tests and benchmarks: the lab's file servers.

Each ``SambaServer`` is an independent smbd (its own smb.conf, passdb, state, lock, pid
and log directories) bound to its own loopback address on port 445, with
``acl_xattr streams_xattr`` so NT security descriptors, alternate data streams and DOS
attributes persist, and SMB signing mandatory. A *migration account* that may read and
write everything (``admin users``) is added to every instance.

Addresses are taken from 127.77.0.0/16 and reserved with a lock file, so several test
sessions (or a benchmark beside a test run) on one machine never collide. Everything a
server starts is stopped by the pids in its pid directory; nothing is left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MIGRATION_USER = "smsmig"
MIGRATION_PASSWORD = "Mig-Passw0rd!"
ADDRESS_LOCK_DIR = Path("/tmp/sms-lab-addresses")


class LabUnavailable(RuntimeError):
    """A lab server cannot run on this machine (missing binary, not root ...)."""


def have_samba() -> bool:
    """True when smbd and smbpasswd are installed and we may bind loopback addresses."""
    return bool(shutil.which("smbd") and shutil.which("smbpasswd")) and os.geteuid() == 0


def ensure_system_user(name: str) -> None:
    """Create a Unix account without a home (smbd maps SMB users onto Unix users)."""
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


def _address_in_use(address: str, port: int = 445) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((address, port)) == 0


def reserve_loopback_address() -> tuple[str, object]:
    """Pick a free 127.77.x.y address and hold an exclusive lock on it.

    Returns the address and the open lock file; closing the file releases the address.
    """
    ADDRESS_LOCK_DIR.mkdir(exist_ok=True)
    start = os.getpid() % 60000
    for offset in range(60000):
        number = (start + offset) % 60000 + 2
        address = f"127.77.{number // 250}.{number % 250 + 2}"
        lock = open(ADDRESS_LOCK_DIR / address, "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if _address_in_use(address):
            lock.close()
            continue
        subprocess.run(["ip", "addr", "add", f"{address}/8", "dev", "lo"], capture_output=True)
        return address, lock
    raise LabUnavailable("no free loopback address in 127.77.0.0/16")


@dataclass
class Share:
    """One share of a lab server: its name, the directory behind it, extra smb.conf lines."""

    name: str
    path: Path
    options: dict[str, str] = field(default_factory=dict)


class SambaServer:
    """A running smbd of our own, reachable at ``address`` on port 445."""

    def __init__(self, name: str, root: Path | None = None, *, extra_global: dict | None = None):
        if not have_samba():
            raise LabUnavailable("smbd/smbpasswd not installed or not root")
        self.name = name
        self.root = Path(root or tempfile.mkdtemp(prefix=f"sms-lab-{name}-"))
        self.address, self._address_lock = reserve_loopback_address()
        self.conf = self.root / "smb.conf"
        self.shares: dict[str, Share] = {}
        self.users: dict[str, str] = {}
        self.extra_global = dict(extra_global or {})
        for sub in ("private", "state", "cache", "pid", "log", "shares"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.sockets = short_socket_directory()
        self._started = False

    # --- configuration -------------------------------------------------------------
    def add_share(self, name: str, path: Path | None = None, **options: str) -> Share:
        """Declare a share (before or after start; after start the config is reloaded)."""
        share_path = Path(path or self.root / "shares" / name)
        share_path.mkdir(parents=True, exist_ok=True)
        share = Share(name, share_path, {"read only": "no", **options})
        self.shares[name] = share
        if self._started:
            self.write_conf()
            self.reload()
        return share

    def write_conf(self) -> None:
        """Write smb.conf for the current shares."""
        r = self.root
        lines = [
            "[global]",
            f"netbios name = {self.name.upper()[:15]}",
            "server role = standalone server",
            "workgroup = LAB",
            "disable netbios = yes",
            "load printers = no",
            "disable spoolss = yes",
            "printcap name = /dev/null",
            f"interfaces = {self.address}",
            "bind interfaces only = yes",
            "smb ports = 445",
            f"private dir = {r / 'private'}",
            f"lock directory = {self.sockets / 'lock'}",
            f"state directory = {r / 'state'}",
            f"cache directory = {r / 'cache'}",
            f"pid directory = {r / 'pid'}",
            f"ncalrpc dir = {self.sockets / 'ncalrpc'}",
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
        lines += [f"{key} = {value}" for key, value in self.extra_global.items()]
        for share in self.shares.values():
            lines += ["", f"[{share.name}]", f"path = {share.path}"]
            lines += [f"{key} = {value}" for key, value in share.options.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def add_user(self, name: str, password: str) -> None:
        """Create a Unix account and its Samba password on this instance."""
        ensure_system_user(name)
        subprocess.run(
            ["smbpasswd", "-c", str(self.conf), "-s", "-a", name],
            input=f"{password}\n{password}\n",
            text=True,
            check=True,
            capture_output=True,
        )
        self.users[name] = password

    # --- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "SambaServer":
        """Start smbd (daemonised; it also starts samba-dcerpcd) and wait for port 445."""
        self.write_conf()
        self.add_user(MIGRATION_USER, MIGRATION_PASSWORD)
        subprocess.run(["smbd", "-D", "-s", str(self.conf)], check=True, capture_output=True)
        self._started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _address_in_use(self.address):
                return self
            time.sleep(0.05)
        self.stop()
        raise LabUnavailable(f"smbd {self.name} did not listen on {self.address}:445")

    def reload(self) -> None:
        """Ask the running smbd to re-read smb.conf."""
        subprocess.run(
            ["smbcontrol", "-s", str(self.conf), "smbd", "reload-config"],
            capture_output=True,
        )

    def restart(self, downtime: float = 0.0, timeout: float = 15.0) -> None:
        """Kill every daemon of this server with its children (by their process groups,
        led by the pids in the pid directory; the address stays reserved), stay down
        ``downtime`` seconds, start smbd again on the same address: every session is cut."""
        groups = set()
        for pid in self.pids():  # each daemon leads its own group: its children go too
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    groups.add(pid)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        _wait_until_gone(list(groups), 5)
        time.sleep(downtime)
        subprocess.run(["smbd", "-D", "-s", str(self.conf)], check=True, capture_output=True)
        deadline = time.monotonic() + timeout
        while not _address_in_use(self.address):
            if time.monotonic() > deadline:
                raise LabUnavailable(f"smbd {self.name} did not come back on {self.address}:445")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """Pids of the daemons this server started (smbd and samba-dcerpcd) that still run.

        A pid file can outlive its daemon (samba-dcerpcd's after a restart), and pids are
        reused during a long test run: a pid counts only while its process was started with
        this server's smb.conf, so stopping a server never signals somebody else's process."""
        found = []
        marker = str(self.conf).encode()
        for pid_file in (self.root / "pid").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text().split()[0])
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        return found

    def stop(self) -> None:
        """Stop every daemon of this server by pid, wait until each is gone, and release
        its address. The daemons are waited on by the pids found before signalling them:
        smbd removes its pid file while it shuts down, before it has exited."""
        daemons = self.pids()
        for pid in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not _wait_until_gone(daemons, 5):
            for pid in daemons:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_until_gone(daemons, 5)
        self._started = False
        if self._address_lock is not None:
            subprocess.run(
                ["ip", "addr", "del", f"{self.address}/8", "dev", "lo"], capture_output=True
            )
            self._address_lock.close()
            self._address_lock = None

    def destroy(self) -> None:
        """Stop and remove every file of this server."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.sockets, ignore_errors=True)

    def __enter__(self) -> "SambaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()


def short_socket_directory() -> Path:
    """A new directory with a short path for an smbd's unix sockets (its lock directory holds
    msg.sock/, its ncalrpc dir the RPC pipes): a socket path longer than 107 bytes cannot be
    bound, and pytest's temporary paths (longer still under pytest-xdist) get close to it,
    so RPC silently died (NetBIOSTimeout) or smbd did not start. The caller removes it."""
    directory = Path(tempfile.mkdtemp(prefix="smb", dir="/tmp"))
    for sub in ("lock", "ncalrpc"):
        (directory / sub).mkdir()
    return directory


def _wait_until_gone(pids: list[int], seconds: float) -> bool:
    """Wait up to ``seconds`` until none of ``pids`` runs; True when none does."""
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    return False
