"""Re-runs compared on the file servers' own listings, not over SMB, where that is sound.

Why. A re-run must look at every entry of both shares. Over SMB the servers do most of
that work: Samba spends, per entry listed, two stats, a read of the DOS attributes and
an open and close of the entry (measured with strace; docs/benchmarks.md, session 5),
whatever the client asks for, and a re-run lists both shares. On a Samba server managed
over SSH, ``find`` lists the same folders for a small part of that (20,000 entries:
~0.05 s, against ~0.5 s of smbd per share on the lab machine). It also sees more: Samba
reports an entry's modification time as its SMB change time (measured: a chmod leaves
the SMB change time alone), so over SMB a security descriptor set without a write looks
unchanged; on the host it moves the entry's ctime (Samba keeps descriptors, DOS
attributes and streams in the inode's extended attributes:
``samba_ssh.LISTING_VFS_MODULES``), which makes its folder not clean and the entry
dispatched (``changed_on_host``): the worker then sets the descriptor even though the
engine skips the unchanged data.

How. Every run of a pairing whose two servers are Samba managed over SSH reads, for each
share, each server's clock before it lists anything (``EVENT_HOST_LISTING`` records both
clocks); a re-run also lists both shares on the hosts (``read_listings``). A folder is
**clean** (``clean_folders``) when, on both servers, it holds exactly the entries the
previous run recorded in it, each of the same type, size (files) and last-write time, and
each with a ctime older than the clock read before that information was taken:

- on the source, the clock of the run that wrote the entry's record (a file unchanged
  for ten runs refers to the record of the run that copied it; its listing came after
  that clock, so a ctime older than it means nothing changed since the record was made);
- on the destination, the clock the previous run read once it had written everything
  (``EVENT_HOST_CLOCK_END``; the one it read before listing, if it stopped before the
  end): that run either found the entry as recorded or wrote it as recorded. Not seen
  therefore: an attribute or security descriptor someone else changes on a destination
  entry during the run that writes it, after the write (the SMB comparison would see the
  attribute on the next run, not the descriptor).

A clean folder is neither listed over SMB nor compared entry by entry: its files are
recorded unchanged by reference and its folders as unchanged. Every folder that is not
clean is listed over SMB on both sides and compared as before (only those: the walks
start at the top-most folders that are not clean). A change that could escape the host
listing makes folders not clean, never clean: a name SMB shows otherwise (mangled,
mapped, hidden, vetoed, a link) differs from the recorded one; a clock read late is
covered by ``CLOCK_MARGIN_NS``. Not covered: a server whose clock is stepped back more
than the margin between two runs, and share settings that change what SMB shows of
unchanged files (say ``hide dot files``) between two runs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Event
from orchestrator.hosts.facts import HostListing

EVENT_HOST_LISTING = "transfer.host_listing"
EVENT_HOST_CLOCK_END = "transfer.host_clock_end"
# A change made just after a clock was read may carry a ctime a little older than the
# clock: the kernel stamps files with its coarse clock, at most one tick (10 ms at 100 Hz)
# behind the clock ``date`` reads. Entries changed within this margin before a clock are
# never taken as clean.
CLOCK_MARGIN_NS = 50_000_000


@dataclass
class HostListings:
    """Both servers' clocks and (on a re-run) listings of one share; ``source`` or
    ``destination`` None where the host could not be listed (``notes`` say why)."""

    source: HostListing | None = None
    destination: HostListing | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Both sides listed, and both listings can stand in for SMB listings."""
        return (self.source is not None and self.destination is not None and bool(self.source.folders)
                and bool(self.destination.folders))


def read_listings(source_adapter, destination_adapter, share: str, destination_share: str,
                  source_prune: list[str], destination_prune: list[str], *, scan: bool) -> HostListings:
    """Read both servers' clocks and, with ``scan``, list ``share`` on each (at once, in two
    threads). A side that cannot be listed (no management access, an error on the host,
    VFS modules or a filesystem that refuse it) is None, with a note; nothing raises."""
    from orchestrator.hosts import HostError

    def one(adapter, name: str, prune: list[str], side: str) -> tuple[HostListing | None, str | None]:
        try:
            listing = adapter.list_share(name, prune=prune, clock_only=not scan)
        except HostError as exc:
            return None, f"{side}: {exc}"
        if listing.refusal:
            return None, f"{side}: {listing.refusal}"
        return listing, None

    with ThreadPoolExecutor(2, thread_name_prefix="sms-host-listing") as executor:
        source = executor.submit(one, source_adapter, share, source_prune, "source")
        destination = executor.submit(one, destination_adapter, destination_share, destination_prune,
                                      "destination")
    listings = HostListings(source.result()[0], destination.result()[0])
    listings.notes = [note for note in (source.result()[1], destination.result()[1]) if note]
    return listings


def recorded_clocks(session: Session, job_id: int, share_id: int,
                    runs: set[int]) -> dict[int, tuple[int | None, int | None]]:
    """run id -> (source clock, destination clock) that runs ``runs`` recorded for the share:
    the clocks read before listing (the earliest, if a resumed run recorded twice), the
    destination's replaced by the one read at the run's end when there is one; a side
    not read is None."""
    clocks: dict[int, tuple[int | None, int | None]] = {}
    ends: dict[int, int] = {}
    for kind, detail in session.execute(select(Event.kind, Event.detail).where(
            Event.job_id == job_id, Event.kind.in_((EVENT_HOST_LISTING, EVENT_HOST_CLOCK_END)))
            .order_by(Event.id)):
        run_id = detail.get("run_id")
        if run_id not in runs:
            continue
        if kind == EVENT_HOST_CLOCK_END:
            ends[run_id] = detail.get("destination_clock")
        elif detail.get("share_id") == share_id and run_id not in clocks:
            clocks[run_id] = (detail.get("source_clock"), detail.get("destination_clock"))
    return {run_id: (source, ends.get(run_id) or destination) for run_id, (source, destination) in clocks.items()}


def source_limits(clocks: dict[int, tuple[int | None, int | None]]) -> dict[int, int]:
    """run id -> the ctime below which a source entry whose record that run made has not
    changed since (its source clock less the margin), from ``recorded_clocks``; runs that
    read no source clock are left out."""
    return {run: source - CLOCK_MARGIN_NS for run, (source, _destination) in clocks.items() if source}


def changed_on_host(listing: HostListing, limits: dict[int, int], path: str, origin: int) -> bool:
    """True when the source host shows entry ``path`` changed (its ctime) since the run
    ``origin`` that recorded it read its clock (``limits``: ``source_limits``): a new
    security descriptor, attribute or stream, which over SMB look unchanged on Samba.
    False where the listing or the clock cannot tell (the SMB comparison's verdict stands)."""
    parent, _, name = path.rpartition("\\")
    entry = listing.folders.get(parent, {}).get(name)
    limit = limits.get(origin)
    return entry is not None and limit is not None and entry[3] >= limit


def clean_folders(previous: dict[str, tuple], listings: HostListings, limits: dict[int, int],
                  destination_clock: int | None, verifying: bool) -> dict[str, list[str]]:
    """The folders nobody changed since the previous run, each with the paths of its
    entries (the module's docstring says when a folder is clean).

    ``previous``: the previous run's records, path -> (is folder, size, last-write time,
    change time, attributes, record id, holds a verified hash, creation time, last-access
    time, run that wrote the record). ``limits``: ``source_limits`` of the runs that
    wrote them; ``destination_clock``: the one the previous run read on the destination.
    With ``verifying``, a file whose record holds no verified hash keeps its folder from
    being clean (it must be dispatched to be hashed).
    """
    if destination_clock is None:
        return {}
    destination_before = destination_clock - CLOCK_MARGIN_NS
    children: dict[str, list[str]] = {"": []}
    for path, before in previous.items():
        if path:
            parent = path.rpartition("\\")[0]
            entries = children.get(parent)
            if entries is None:
                entries = children[parent] = []
            entries.append(path)
            if before[0] and path not in children:
                children[path] = []
    source, destination = listings.source.folders, listings.destination.folders
    clean: dict[str, list[str]] = {}
    for folder, paths in children.items():
        here, there = source.get(folder), destination.get(folder)
        if here is None or there is None or len(here) != len(paths) or len(there) != len(paths):
            continue
        start = len(folder) + 1 if folder else 0
        for path in paths:
            name = path[start:]
            before = previous[path]
            mine, theirs = here.get(name), there.get(name)
            if mine is None or theirs is None:
                break
            is_dir = before[0]
            if mine[0] is not is_dir or theirs[0] is not is_dir or mine[2] != before[2] \
                    or theirs[2] != before[2]:
                break
            if not is_dir and (mine[1] != before[1] or theirs[1] != before[1]
                               or (verifying and not before[6])):
                break
            if mine[3] >= limits.get(before[9], 0) or theirs[3] >= destination_before:
                break
        else:
            clean[folder] = paths
    return clean
