"""The options of a transfer run, as both the orchestrator and the proxy workers read them.

A run's options are stored as JSON in ``TransferRun.options`` when the run is created and
never travel in a broker message: a proxy worker reads them from the job database with
the batch. ``TransferOptions`` validates them once (an unknown checksum choice is an
error, not a silent default) and turns them into the copy engine's ``CopyOptions``.

Security and scope follow SMS too: ``migrate_principals`` is what happens to the source's
local users and groups on a manageable destination (``rename`` a conflicting account -
the default -, ``merge`` with the destination's account of the same name, or ``skip``
the migration); ``max_duration`` (seconds, 0 = no limit) stops dispatching new batches
once a run has lasted that long; ``skip_system_folders`` leaves SMS's system folders at
a share's root (``SYSTEM_FOLDERS``) out of the copy and out of mirror deletes.

Checksum choices follow SMS's validation setting: ``none`` (data is still hashed as it
streams, with the fast algorithm, but the destination is not re-read), ``fast``
(xxh3-128, the measured default of common.smb.checksum, and the destination is re-read
and compared) or ``sha256`` (the same with SHA-256).

This module must never hold a credential and must never import the orchestrator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from common.smb.checksum import DEFAULT_ALGORITHM

if TYPE_CHECKING:  # the copy engine (smbprotocol's stack) is loaded by whoever copies
    from common.smb.copy import CopyOptions

CHECKSUM_CHOICES = ("none", "fast", "sha256")
_ALGORITHMS = {"none": DEFAULT_ALGORITHM, "fast": DEFAULT_ALGORITHM, "sha256": "sha256"}

PRINCIPAL_CHOICES = ("rename", "merge", "skip")
# Never copied by SMS, at a share's root (compared case-insensitively, as Windows does).
SYSTEM_FOLDERS = ("Windows", "Program Files", "Users", "System Volume Information",
                  "$Recycle.bin", "pagefile.sys")

DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY = 60.0

_SYSTEM_FOLDERS_FOLDED = frozenset(name.casefold() for name in SYSTEM_FOLDERS)


@dataclass(frozen=True)
class TransferOptions:
    """What a transfer run was asked to do.

    ``retries`` is how many more times a failed file is tried within its batch, waiting
    ``retry_delay`` seconds before each round (SMS: 3 retries, 60 s). ``share_map`` maps a
    source share name to the destination share it goes to (default: the same name).
    ``copy_sacl`` also copies SACLs (needs the privilege on both sides).
    ``migrate_principals``: rename | merge | skip (see the module docstring);
    ``max_duration``: seconds after which no new batch is dispatched (0: no limit);
    ``skip_system_folders``: leave ``SYSTEM_FOLDERS`` at share roots alone.
    ``recreate_shares``: recreate the source's shares on a manageable destination (off for
    a cutover's final delta: the source's shares are read-only for the cutover then, and
    that must not be copied; the destination's shares were checked at pre-flight).
    """

    checksum: str = "none"
    retries: int = DEFAULT_RETRIES
    retry_delay: float = DEFAULT_RETRY_DELAY
    copy_sacl: bool = False
    share_map: dict[str, str] = field(default_factory=dict)
    migrate_principals: str = "rename"
    max_duration: float = 0.0
    skip_system_folders: bool = True
    recreate_shares: bool = True

    def __post_init__(self) -> None:
        if self.migrate_principals not in PRINCIPAL_CHOICES:
            raise ValueError(f"migrate_principals must be one of {PRINCIPAL_CHOICES}, "
                             f"not {self.migrate_principals!r}")
        if self.max_duration < 0:
            raise ValueError("max_duration must be 0 (no limit) or more")
        if self.checksum not in CHECKSUM_CHOICES:
            raise ValueError(f"checksum must be one of {CHECKSUM_CHOICES}, not {self.checksum!r}")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.retry_delay < 0:
            raise ValueError("retry_delay must be 0 or more")

    @property
    def algorithm(self) -> str:
        """The hash algorithm the copy engine computes while copying."""
        return _ALGORITHMS[self.checksum]

    @property
    def verify(self) -> bool:
        """True when the destination is re-read and its hash compared with the source's."""
        return self.checksum != "none"

    @property
    def verified_algorithm(self) -> str | None:
        """The algorithm of the verified hashes this run asks of its records (None when it
        does not verify)."""
        return self.algorithm if self.verify else None

    def is_system_folder(self, path: str) -> bool:
        """True when ``path`` (share-relative) is one of SYSTEM_FOLDERS at the share's root
        or inside one, and this run skips them."""
        if not self.skip_system_folders:
            return False
        top = path.replace("/", "\\").strip("\\").split("\\", 1)[0].casefold()
        return top in _SYSTEM_FOLDERS_FOLDED

    def destination_share(self, source_share: str) -> str:
        """The destination share that ``source_share`` is copied into."""
        return self.share_map.get(source_share, source_share)

    def copy_options(self) -> CopyOptions:
        """The copy engine's options for these transfer options."""
        from common.smb.copy import CopyOptions

        return CopyOptions(checksum=self.algorithm, verify=self.verify,
                           skip_unchanged=True, copy_security=True, copy_sacl=self.copy_sacl)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``TransferRun.options``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "TransferOptions":
        """Options from ``TransferRun.options`` (unknown keys are an error)."""
        data = dict(data or {})
        known = {name: data.pop(name) for name in list(data) if name in cls.__dataclass_fields__}
        if data:
            raise ValueError(f"unknown transfer options: {sorted(data)}")
        return cls(**known)
