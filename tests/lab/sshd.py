"""A real sshd for tests: the management channel to lab Samba hosts.

``SshServer`` runs ``/usr/sbin/sshd -f CONF`` with its own host key, its own sshd_config
(listening on a reserved 127.77.x.y loopback address and a free port), its own
authorized_keys file and pid file. Root may log in with the fixture's client key only
(``PermitRootLogin prohibit-password``); a separate unprivileged test user of this
server's own (created with useradd, deleted at stop) logs in with a password the fixture
sets with chpasswd. The fixture hands out a known_hosts file
holding the server's host key, so clients check it as they would in production.

It must never touch the machine's own sshd, its host keys or /etc/ssh, and it stops
only the sshd it started, by the pid in its own pid file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.fixtures import unavailable
from tests.lab.samba import LabUnavailable, _alive, reserve_loopback_address

SSHD = "/usr/sbin/sshd"
# StrictModes refuses an authorized_keys file under a world-writable directory such as
# /tmp, so the key file lives in a root-owned directory of ours under /run.
KEYS_PARENT = Path("/run/sms-lab-sshd")
TEST_USER_PREFIX = "smsssh"


@dataclass
class SshEndpoint:
    """How a client reaches the lab sshd (everything a host adapter needs)."""

    host: str
    port: int
    known_hosts: Path
    host_public_key: str  # "ssh-ed25519 AAAA..."
    client_key: Path  # private key (OpenSSH format, no passphrase) authorised for root
    client_public_key: Path
    root_user: str
    user: str  # unprivileged, password login only
    password: str


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((address, port)) == 0


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


class SshServer:
    """An sshd of our own; ``start()`` returns its ``SshEndpoint``, ``stop()`` kills it."""

    def __init__(self, root: Path):
        if os.geteuid() != 0 or not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
            raise LabUnavailable("sshd/ssh-keygen not installed or not root")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.address, self._address_lock = reserve_loopback_address()
        self.port = _free_port(self.address)
        self.conf = self.root / "sshd_config"
        self.pid_file = self.root / "sshd.pid"
        self.log_file = self.root / "sshd.log"
        self.endpoint: SshEndpoint | None = None
        self._keys_dir: Path | None = None
        self.user = f"{TEST_USER_PREFIX}{secrets.token_hex(4)}"
        self._user_created = False

    def _create_test_user(self, password: str) -> None:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", self.user],
            check=True,
            capture_output=True,
        )
        self._user_created = True
        subprocess.run(
            ["chpasswd"], input=f"{self.user}:{password}\n", text=True, check=True, capture_output=True
        )

    def start(self, timeout: float = 10.0) -> SshEndpoint:
        """Write keys and config, start sshd and wait until it accepts connections."""
        host_key = self.root / "host_ed25519"
        client_key = self.root / "client_ed25519"
        _keygen(host_key, "lab-sshd-host")
        _keygen(client_key, "lab-sshd-client")
        KEYS_PARENT.mkdir(mode=0o755, exist_ok=True)
        self._keys_dir = Path(tempfile.mkdtemp(prefix="keys-", dir=KEYS_PARENT))
        authorized = self._keys_dir / "authorized_keys"
        shutil.copyfile(client_key.with_suffix(".pub"), authorized)
        os.chmod(authorized, 0o600)
        host_public = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
        known_hosts = self.root / "known_hosts"
        known_hosts.write_text(f"[{self.address}]:{self.port} {host_public}\n")
        password = secrets.token_urlsafe(18)
        self._create_test_user(password)
        self.conf.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}:{self.port}",
                    f"HostKey {host_key}",
                    f"PidFile {self.pid_file}",
                    "UsePAM no",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "PermitEmptyPasswords no",
                    f"AllowUsers root {self.user}",
                    "AuthorizedKeysFile none",
                    "StrictModes yes",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "PrintMotd no",
                    "LogLevel VERBOSE",
                    # Debian's bash reads ~/.bashrc for a command run by sshd only in a
                    # top-level shell (SHLVL below 2). This machine's root .bashrc starts
                    # pyenv (about 0.1 s of CPU in ~170 processes) for every command, which
                    # no file server does: the lab's commands skip it.
                    "SetEnv SHLVL=1",
                    "Match User root",
                    f"    AuthorizedKeysFile {authorized}",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        result = subprocess.run(
            [SSHD, "-f", str(self.conf), "-E", str(self.log_file)], capture_output=True, text=True
        )
        if result.returncode != 0:
            self.stop()
            raise LabUnavailable(f"sshd did not start: {result.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid_file.exists() and _listening(self.address, self.port):
                self.endpoint = SshEndpoint(
                    host=self.address,
                    port=self.port,
                    known_hosts=known_hosts,
                    host_public_key=host_public,
                    client_key=client_key,
                    client_public_key=client_key.with_suffix(".pub"),
                    root_user="root",
                    user=self.user,
                    password=password,
                )
                return self.endpoint
            time.sleep(0.05)
        self.stop()
        raise LabUnavailable(f"sshd did not listen on {self.address}:{self.port}")

    def pid(self) -> int | None:
        """The pid of the listening sshd, from its own pid file."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().split()[0])
        return None

    def stop(self) -> None:
        """Stop the sshd by pid (its sessions end with it) and release the address."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._keys_dir is not None:
            shutil.rmtree(self._keys_dir, ignore_errors=True)
            self._keys_dir = None
        if self._user_created:
            subprocess.run(["userdel", self.user], capture_output=True)
            self._user_created = False
        if self._address_lock is not None:
            subprocess.run(
                ["ip", "addr", "del", f"{self.address}/8", "dev", "lo"], capture_output=True
            )
            self._address_lock.close()
            self._address_lock = None


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory) -> SshEndpoint:
    """A running lab sshd for the whole session; see ``SshEndpoint`` for what it gives."""
    try:
        server = SshServer(tmp_path_factory.mktemp("sshd"))
    except LabUnavailable as exc:
        unavailable(str(exc))
    try:
        endpoint = server.start()
    except LabUnavailable as exc:
        unavailable(str(exc))
    yield endpoint
    server.stop()
