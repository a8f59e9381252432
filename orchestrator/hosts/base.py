"""The one host-adapter interface, and the errors every adapter raises.

Inventory, transfer (share creation) and cutover talk to a file server only through a
``HostAdapter``: Samba on Linux over SSH (``samba_ssh``), Windows Server over WinRM
(``windows_winrm``) or any SMB server without management access (``smb_only``). Each
method returns the dataclasses of ``orchestrator.hosts.facts``.

Errors are typed and worded for an administrator (which host, what failed, what to do).
An error must never carry a credential: messages are built from host names, commands
and the server's own error text, never from a password or a key.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

from orchestrator.hosts.facts import (
    HostListing,
    HostIdentity,
    LocalPrincipals,
    NetworkAdapter,
    ShareCreation,
    ShareFacts,
    Volume,
)


class HostError(Exception):
    """Base class of every host-adapter error; ``host`` names the server."""

    def __init__(self, host: str, message: str):
        super().__init__(f"{host}: {message}")
        self.host = host


class HostUnreachable(HostError):
    """The host did not answer (refused, timed out, no route, name not resolved)."""


class AuthenticationFailed(HostError):
    """The host refused the credentials (wrong user, password or key)."""


class HostKeyUnknown(HostError):
    """The host's SSH key (or TLS certificate) is not trusted: not in known_hosts."""


class HostKeyMismatch(HostError):
    """The host presented a key different from the one in known_hosts: possible impostor."""


class InsecureTransport(HostError):
    """The requested connection would send credentials or data in the clear; refused."""


class ManagementUnavailable(HostError):
    """The adapter has no management access to this host, so this fact cannot be known."""


class CommandFailed(HostError):
    """A management command ran on the host and failed.

    ``command`` is the command as run (never containing a credential), ``exit_status``
    its exit status and ``stderr`` what it printed on standard error.
    """

    def __init__(self, host: str, command: str, exit_status: int, stderr: str):
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(host, f"command {command!r} failed with exit status {exit_status}: {detail}")
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr


class UnexpectedOutput(HostError):
    """A command succeeded but printed something the adapter cannot read."""


class ShareExists(HostError):
    """A share of that name already exists on the host and replacing it was not asked for.

    ``share`` is the name, ``path`` the existing share's folder when the host reports it.
    """

    def __init__(self, host: str, share: str, path: str | None = None):
        where = f" (folder {path})" if path else ""
        super().__init__(
            host,
            f"a share named {share!r} already exists{where}; nothing was changed (ask to replace it to update it)",
        )
        self.share = share
        self.path = path


class ShareRejected(HostError):
    """The share cannot be recreated on this host as given (kind of share, name or value
    the host cannot represent); nothing was changed."""


class HostAdapter(abc.ABC):
    """Access to one file server's configuration: reading it, and (where the adapter has
    management access) creating folders and shares on it.

    Adapters connect lazily and are context managers; ``close()`` releases the
    connection. ``host`` is the name or address the adapter connects to.
    """

    host: str
    # Whether two of its reads (say ``shares`` and ``local_principals``) may run at once
    # from two threads; adapters on a connection that is not known to allow it say no.
    concurrent_reads = False

    @abc.abstractmethod
    def identity(self) -> HostIdentity:
        """Host name, DNS name and domain, SMB name, operating system name and version."""

    @abc.abstractmethod
    def network(self) -> list[NetworkAdapter]:
        """Network adapters with MAC, addresses and prefixes, gateways, DNS servers, DHCP."""

    @abc.abstractmethod
    def volumes(self) -> list[Volume]:
        """Mounted filesystems (Linux) or volumes (Windows) with filesystem, size and free space."""

    @abc.abstractmethod
    def shares(self) -> list[ShareFacts]:
        """Every share with every property and its share permissions."""

    @abc.abstractmethod
    def local_principals(self) -> LocalPrincipals:
        """Local users and groups with SIDs where known, members and enabled state."""

    def ensure_directory(self, path: str) -> bool:
        """Create the folder ``path`` (and its parents) unless it exists; True if created.

        Adapters without management access raise ``ManagementUnavailable``.
        """
        raise ManagementUnavailable(self.host, "this adapter cannot create folders on the host")

    def create_share(self, share: ShareFacts, path: str, *, replace: bool = False) -> ShareCreation:
        """Create a share named like ``share`` on folder ``path`` with its settings and share
        permissions (SIDs as given: translating them is the caller's job).

        An existing share of that name raises ``ShareExists`` unless ``replace``, which
        updates it in place. Adapters without management access raise
        ``ManagementUnavailable``.
        """
        raise ManagementUnavailable(self.host, "this adapter cannot create shares on the host")

    def list_share(self, share: str, *, prune: Iterable[str] = (), clock_only: bool = False,
                   changed_since: int | None = None) -> HostListing:
        """The server's clock and the folders of ``share`` as its own filesystem lists them
        (``facts.HostListing``); top-level names in ``prune`` (any case) are left out with everything
        under them; entries changed at or after ``changed_since`` (ns since 1970) are listed
        one by one. ``clock_only`` reads the clock alone (and where the share lives).

        Lets a re-run compare a share without listing it over SMB (orchestrator.transfer
        .host_listing). Adapters that cannot list a host's folders raise
        ``ManagementUnavailable``.
        """
        raise ManagementUnavailable(self.host, "this adapter cannot list folders on the host")

    def clock(self) -> int:
        """The host's own clock, in nanoseconds since 1970 (what stamps its files' ctimes).

        Adapters that cannot run a command on the host raise ``ManagementUnavailable``.
        """
        raise ManagementUnavailable(self.host, "this adapter cannot read the host's clock")

    def connect(self) -> None:
        """Connect now rather than at first use (the default adapter holds no connection)."""

    def close(self) -> None:
        """Release the connection to the host (the default adapter holds none)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
