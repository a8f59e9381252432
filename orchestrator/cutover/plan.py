"""The cutover plan: which addresses move, the source's new name and address, the limits.

A plan is plain data stored with its cutover run (``CutoverRun.options["plan"]``), so a
resumed or rolled-back run acts on exactly what was planned. ``CutoverPlan.problems()``
checks what can be checked without a host (names, addresses, consistency); pre-flight
checks the rest against the live hosts.

The source's new address is a static IPv4 address with its prefix length, or ``DHCP``
(``"dhcp"``): the source then asks a DHCP server on its new interface at stage 4, and the
address it obtains is recorded in the run's state (``source_new_address`` there), which
later stages, resume and rollback use. This module must never talk to a host or hold a
credential.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field

# How a source share may be reached during and after cutover (see samba.py, windows.py).
NORMAL, READ_ONLY, MAINTENANCE = "normal", "read-only", "maintenance"
SHARE_MODES = (NORMAL, READ_ONLY, MAINTENANCE)
# ``source_new_address`` when the source gets its new address from a DHCP server.
DHCP = "dhcp"

_NETBIOS = re.compile(r"^[A-Za-z0-9-]{1,15}$")


def netbios_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a computer's NetBIOS name, or None when it can."""
    if not _NETBIOS.match(name or ""):
        return f"{name!r} is not a NetBIOS computer name (1-15 letters, digits or hyphens)"
    if name.isdigit():
        return f"{name!r} is only digits, which Windows refuses as a computer name"
    if name.startswith("-") or name.endswith("-"):
        return f"{name!r} starts or ends with a hyphen"
    return None


@dataclass(frozen=True)
class AddressMove:
    """One IPv4 address that leaves the source's interface for the destination's."""

    address: str
    prefix_length: int
    source_interface: str
    destination_interface: str


@dataclass
class CutoverPlan:
    """What a cutover does, decided before it starts.

    ``addresses``: the source's addresses users reach it at, and where each goes on the
    destination. ``source_new_name`` / ``source_new_address`` (with prefix and interface):
    the identity the source takes; ``source_new_address`` may be ``DHCP`` (prefix length
    then unused, 0). ``maintenance_hosts``: who may still connect to the
    source's shares afterwards (administrators; default 127.0.0.1 only).
    ``timeout_seconds`` bounds one call of ``run_cutover``, the final delta transfer
    included. ``override_reconciliation``
    lets pre-flight pass a transfer that does not reconcile clean (the operator accepts
    the loss). ``verify_files``: how many files per share verification reads in full.
    """

    addresses: list[AddressMove]
    source_new_name: str
    source_new_address: str
    source_new_prefix_length: int
    source_new_interface: str
    maintenance_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    timeout_seconds: int = 3600
    override_reconciliation: bool = False
    verify_files: int = 5

    @property
    def source_new_address_by_dhcp(self) -> bool:
        """True when the source gets its new address from a DHCP server."""
        return self.source_new_address == DHCP

    def to_json(self) -> dict:
        """Plain data for ``CutoverRun.options``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CutoverPlan":
        """The plan stored by ``to_json``."""
        values = dict(data)
        values["addresses"] = [AddressMove(**item) for item in values.get("addresses", [])]
        return cls(**values)

    def problems(self) -> list[str]:
        """Everything wrong with the plan that needs no host to see (empty when fine)."""
        found = []
        if not self.addresses:
            found.append("no address to move: the destination would not take the source's place")
        seen = set()
        for move in self.addresses:
            found += _address_problems(move.address, move.prefix_length, "address to move")
            if move.address in seen:
                found.append(f"address {move.address} is listed twice")
            seen.add(move.address)
            if not move.source_interface or not move.destination_interface:
                found.append(f"address {move.address} needs a source and a destination interface")
        if not self.source_new_address_by_dhcp:
            found += _address_problems(self.source_new_address, self.source_new_prefix_length,
                                       "source's new address")
        elif self.source_new_prefix_length:
            found.append("the source's new address comes from DHCP: give no prefix length (0)")
        if self.source_new_address in seen:
            found.append(f"the source's new address {self.source_new_address} is one of the addresses to move")
        if not self.source_new_interface:
            found.append("the source's new address needs an interface")
        problem = netbios_name_problem(self.source_new_name)
        if problem:
            found.append(f"source's new name: {problem}")
        if self.timeout_seconds <= 0:
            found.append("the timeout must be positive")
        if self.verify_files < 0:
            found.append("verify_files cannot be negative")
        if not self.maintenance_hosts:
            found.append("maintenance_hosts is empty: give at least one host (e.g. 127.0.0.1)")
        return found


def _address_problems(address: str, prefix_length: int, what: str) -> list[str]:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return [f"{what} {address!r} is not an IP address"]
    if parsed.version != 4:
        return [f"{what} {address} is not IPv4 (only IPv4 moves are supported)"]
    if not 0 < prefix_length <= 32:
        return [f"{what} {address}: prefix length {prefix_length} is not 1..32"]
    if parsed.is_loopback or parsed.is_unspecified or parsed.is_multicast:
        return [f"{what} {address} cannot be given to a server"]
    return []
