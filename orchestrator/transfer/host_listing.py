"""Re-runs compared on the file servers' own listings, not over SMB, where that is sound.

Why. A re-run must look at every entry of both shares. Over SMB the servers do most of
that work: Samba spends, per entry listed, two stats, a read of the DOS attributes and
an open and close of the entry (measured with strace; docs/benchmarks.md, session 5),
whatever the client asks for, and a re-run lists both shares. On a Samba server managed
over SSH, the host's own python3 lists the same folders for a small part of that
(20,000 entries: ~0.08 s, against ~0.5 s of smbd per share on the lab machine). It also sees more: Samba
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

The hosts do the per-entry work, each its own, in parallel: each sends one summary per
folder (``orchestrator.hosts.samba_host_listing``: the newest ctime and a SHA-256 of
the entries' names, kinds, sizes and last-write times), which the orchestrator compares
with the digest its records give (``expected_digest``, computed while the hosts list). The
destination's newest ctime is compared with its one clock; the source's entries are
held to the clocks of their records' runs, so the source also lists one by one the
entries changed since the earliest clock any run recorded (``earliest_source_limit``):
an entry not among them is older than any record's clock.

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
from orchestrator.hosts.samba_host_listing import folder_digest, folder_entry_line

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
                  source_prune: list[str], destination_prune: list[str], *, scan: bool,
                  changed_since: int | None = None) -> HostListings:
    """Read both servers' clocks and, with ``scan``, list ``share`` on each (at once, in two
    threads); the source's entries changed at or after ``changed_since`` (``earliest_source_limit``)
    are listed one by one. A side that cannot be listed (no management access, an error on
    the host, VFS modules or a filesystem that refuse it) is None, with a note; nothing raises."""
    from orchestrator.hosts import HostError

    def one(adapter, name: str, prune: list[str], side: str,
            since: int | None) -> tuple[HostListing | None, str | None]:
        try:
            listing = adapter.list_share(name, prune=prune, clock_only=not scan, changed_since=since)
        except HostError as exc:
            return None, f"{side}: {exc}"
        if listing.refusal:
            return None, f"{side}: {listing.refusal}"
        return listing, None

    with ThreadPoolExecutor(2, thread_name_prefix="sms-host-listing") as executor:
        source = executor.submit(one, source_adapter, share, source_prune, "source", changed_since)
        destination = executor.submit(one, destination_adapter, destination_share, destination_prune,
                                      "destination", None)
    listings = HostListings(source.result()[0], destination.result()[0])
    listings.notes = [note for note in (source.result()[1], destination.result()[1]) if note]
    return listings


def recorded_clocks(session: Session, job_id: int, share_id: int,
                    runs: set[int] | None = None) -> dict[int, tuple[int | None, int | None]]:
    """run id -> (source clock, destination clock) that runs ``runs`` (all the job's, when
    None) recorded for the share: the clocks read before listing (the earliest, if a
    resumed run recorded twice), the destination's replaced by the one read at the run's
    end when there is one; a side not read is None."""
    clocks: dict[int, tuple[int | None, int | None]] = {}
    ends: dict[int, int] = {}
    for kind, detail in session.execute(select(Event.kind, Event.detail).where(
            Event.job_id == job_id, Event.kind.in_((EVENT_HOST_LISTING, EVENT_HOST_CLOCK_END)))
            .order_by(Event.id)):
        run_id = detail.get("run_id")
        if runs is not None and run_id not in runs:
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


def earliest_source_limit(session: Session, job_id: int, share_id: int) -> int | None:
    """The lowest of ``source_limits`` over every run of the job that recorded the share's
    source clock (None when none did): a source entry changed before it is older than the
    limit of any record's run, so a re-run's host listing lists one by one only the
    entries changed at or after it (``changed_on_host`` needs no others)."""
    return min(source_limits(recorded_clocks(session, job_id, share_id)).values(), default=None)


def changed_on_host(listing: HostListing, limits: dict[int, int], path: str, origin: int) -> bool:
    """True when the source host shows entry ``path`` changed (its ctime) since the run
    ``origin`` that recorded it read its clock (``limits``: ``source_limits``): a new
    security descriptor, attribute or stream, which over SMB look unchanged on Samba.
    False where the listing or the clock cannot tell (the SMB comparison's verdict stands).
    ``listing`` was asked for the entries changed since ``earliest_source_limit``."""
    change = listing.changed.get(path)
    limit = limits.get(origin)
    return change is not None and limit is not None and change >= limit


@dataclass
class RecordedFolders:
    """What the previous run's records say each folder of a share holds, made while the
    hosts list the share (``recorded_folders``), so that only the comparison with their
    summaries waits for them (``clean_folders``).

    ``folders``: folder -> (the paths of its entries, the digest a host's summary of it
    gives when it holds them as recorded, or None when it cannot be clean: ``expected_digest``).
    ``limits``: ``source_limits`` of the runs that made the records; ``destination_clock``:
    the one the previous run read on the destination (None: nothing is clean).
    """

    folders: dict[str, tuple[list[str], str | None]]
    limits: dict[int, int]
    destination_clock: int | None


def recorded_folders(session: Session, job_id: int, share_id: int, previous_run: int,
                     previous: dict[str, tuple], verifying: bool) -> RecordedFolders:
    """``RecordedFolders`` of the share from ``previous``, the records of ``previous_run``:
    path -> (is folder, size, last-write time, change time, attributes, record id, holds
    a verified hash, creation time, last-access time, run that wrote the record). With
    ``verifying``, a file whose record holds no verified hash keeps its folder from
    being clean (it must be dispatched to be hashed)."""
    clocks = recorded_clocks(session, job_id, share_id, {before[9] for before in previous.values()} | {previous_run})
    limits = source_limits(clocks)
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
    folders = {folder: (paths, expected_digest(folder, paths, previous, limits, verifying))
               for folder, paths in children.items()}
    return RecordedFolders(folders, limits, clocks.get(previous_run, (None, None))[1])


def clean_folders(recorded: RecordedFolders, previous: dict[str, tuple],
                  listings: HostListings) -> dict[str, list[str]]:
    """The folders nobody changed since the previous run, each with the paths of its
    entries (the module's docstring says when a folder is clean): both hosts' summaries
    (``facts.FolderSummary``) show the digest its records give, the destination's
    newest ctime is older than the previous run's clock there, and none of the source's
    entries changed one by one since the clock of its record's run."""
    if recorded.destination_clock is None:
        return {}
    destination_before = recorded.destination_clock - CLOCK_MARGIN_NS
    stale = set()
    for path, change in listings.source.changed.items():
        before = previous.get(path)
        if before is not None and change >= recorded.limits.get(before[9], 0):
            stale.add(path.rpartition("\\")[0])
    source, destination = listings.source.folders, listings.destination.folders
    clean: dict[str, list[str]] = {}
    for folder, (paths, digest) in recorded.folders.items():
        here, there = source.get(folder), destination.get(folder)
        if digest is not None and here is not None and there is not None and here.digest == digest \
                and there.digest == digest and there.newest_change < destination_before and folder not in stale:
            clean[folder] = paths
    return clean


def expected_digest(folder: str, paths: list[str], previous: dict[str, tuple], limits: dict[int, int],
                    verifying: bool) -> str | None:
    """The digest a host's summary of ``folder`` gives when it holds exactly the entries of
    its records ``paths`` as recorded (``samba_host_listing.folder_entry_line``); None when
    the folder cannot be clean: a record's run read no source clock (``limits``), a name
    is not UTF-8, or a file has no verified hash while ``verifying``."""
    start = len(folder) + 1 if folder else 0
    lines: list[bytes] = []
    try:
        for path in paths:
            before = previous[path]
            if before[9] not in limits:
                return None
            if before[0]:
                lines.append(folder_entry_line(path[start:].encode(), b"d", 0, before[2]))
            elif verifying and not before[6]:
                return None
            else:
                lines.append(folder_entry_line(path[start:].encode(), b"f", before[1], before[2]))
    except UnicodeEncodeError:
        return None
    return folder_digest(lines)
