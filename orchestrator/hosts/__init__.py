"""Host adapters: how the orchestrator reads a file server and recreates shares on it.

``HostAdapter`` (in ``base``) is the one interface; ``SambaSshHost``, ``WindowsWinRmHost``
and ``SmbOnlyHost`` implement it; ``facts`` holds the dataclasses they return. This
package must never persist anything: storing facts is the inventory's job.
"""

from orchestrator.hosts.base import (
    AuthenticationFailed,
    CommandFailed,
    HostAdapter,
    HostError,
    HostKeyMismatch,
    HostKeyUnknown,
    HostUnreachable,
    InsecureTransport,
    ManagementUnavailable,
    ShareExists,
    ShareRejected,
    UnexpectedOutput,
)

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "HostAdapter",
    "HostError",
    "HostKeyMismatch",
    "HostKeyUnknown",
    "HostUnreachable",
    "InsecureTransport",
    "ManagementUnavailable",
    "ShareExists",
    "ShareRejected",
    "UnexpectedOutput",
]
