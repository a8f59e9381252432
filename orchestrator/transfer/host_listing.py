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
with the digest the previous run's records give. That run kept it (``FolderDigestWriter``,
``common.models.FolderDigest``) with the ids of the folder's files' records, so a re-run
reads a few hundred rows (``stored_folders``), not every record; where it kept none, the
digests are computed from its records while the hosts list (``recorded_folders``,
``expected_digest``). The destination's newest ctime is compared with its one clock; the
source's entries are held to the clocks of their records' runs (to the previous run's
one clock, when it kept digests: ``stored_folders`` says why), so the source also lists
one by one the entries changed since the lowest of those clocks (``listing_threshold``):
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

import sys
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import exists, insert, select
from sqlalchemy.orm import Session

from common.models import Event, FolderDigest
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
    query = select(Event.kind, Event.detail).where(
        Event.job_id == job_id, Event.kind.in_((EVENT_HOST_LISTING, EVENT_HOST_CLOCK_END))).order_by(Event.id)
    if runs is not None:  # the job's other runs' events are left in the database (they add up)
        query = query.where(Event.detail["run_id"].as_integer().in_(sorted(runs)))
    for kind, detail in session.execute(query):
        run_id = detail.get("run_id")
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
    limit of any record's run."""
    return min(source_limits(recorded_clocks(session, job_id, share_id)).values(), default=None)


def listing_threshold(session: Session, job_id: int, share_id: int, previous_run: int) -> int | None:
    """The change time from which a re-run's host listing of the source lists entries one
    by one (``HostListing.changed``): the previous run's own source limit when that run
    kept folder digests (``stored_folders``: it held every record of the share to it),
    else ``earliest_source_limit`` (``changed_on_host`` needs no older entries)."""
    if _has_digests(session, previous_run, share_id):
        limit = source_limits(recorded_clocks(session, job_id, share_id, {previous_run})).get(previous_run)
        if limit is not None:
            return limit
    return earliest_source_limit(session, job_id, share_id)


def _has_digests(session: Session, run_id: int, share_id: int) -> bool:
    return session.scalar(select(exists().where(
        FolderDigest.run_id == run_id, FolderDigest.share_id == share_id, FolderDigest.path == "")))


@dataclass
class RecordedFolder:
    """What a run recorded directly inside one folder of a share (``common.models.FolderDigest``):
    the digest a host's summary of the folder gives when it holds those entries as
    recorded (None: it cannot be clean), the ids of its files' records and their sizes'
    sum, and the algorithm all of them hold a verified hash of (None: not known)."""

    digest: str | None
    file_ids: array = field(default_factory=lambda: array("q"))
    file_bytes: int = 0
    hash_algorithm: str | None = None


@dataclass
class RecordedFolders:
    """What the previous run recorded in each folder of a share, made while the hosts
    list the share (``stored_folders`` or ``recorded_folders``), so that only the
    comparison with their summaries waits for them (``clean_folders``).

    ``destination_clock``: the clock the previous run read on the destination (None:
    nothing is clean). A source entry is unchanged since its record while its ctime is
    older than ``limit`` of its record's run: ``source_limit`` for every record when the
    previous run kept folder digests (it held every record to its own clock), else
    ``limits`` (``source_limits`` of the records' runs).
    """

    folders: dict[str, RecordedFolder]
    destination_clock: int | None
    limits: dict[int, int] = field(default_factory=dict)
    source_limit: int | None = None

    def limit(self, origin: int | None) -> int | None:
        """The ctime below which a source entry recorded by run ``origin`` is unchanged."""
        return self.source_limit if self.source_limit is not None else self.limits.get(origin)


def stored_folders(session: Session, job_id: int, share_id: int, previous_run: int) -> RecordedFolders | None:
    """``RecordedFolders`` from the folder digests ``previous_run`` kept for the share (None
    when it kept none): a few hundred rows instead of every record.

    Why one limit stands for every record: that run held each source entry it recorded
    to that entry's own limit on its host listing (or wrote the record itself, from a
    listing made after its clock), so an entry whose ctime is still below that run's
    limit is unchanged since its record, and one changed since has a ctime above it."""
    rows = session.execute(select(FolderDigest.path, FolderDigest.digest, FolderDigest.file_ids,
                                  FolderDigest.file_bytes, FolderDigest.hash_algorithm).where(
        FolderDigest.run_id == previous_run, FolderDigest.share_id == share_id)).all()
    if not any(row.path == "" for row in rows):
        return None
    clocks = recorded_clocks(session, job_id, share_id, {previous_run})
    limit = source_limits(clocks).get(previous_run)
    if limit is None:
        return None
    folders = {row.path: RecordedFolder(row.digest, unpack_ids(row.file_ids), row.file_bytes, row.hash_algorithm)
               for row in rows}
    return RecordedFolders(folders, clocks[previous_run][1], source_limit=limit)


def recorded_folders(session: Session, job_id: int, share_id: int, previous_run: int,
                     previous: dict[str, tuple], algorithm: str | None) -> RecordedFolders:
    """``RecordedFolders`` of the share from ``previous``, the records of ``previous_run``
    (for a previous run that kept no folder digests): path -> (is folder, size,
    last-write time, change time, attributes, record id, holds a verified hash,
    creation time, last-access time, run that wrote the record). With a verifying
    ``algorithm``, a file whose record holds no verified hash keeps its folder from
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
    folders = {}
    for folder, paths in children.items():
        files = [previous[path] for path in paths if not previous[path][0]]
        folders[folder] = RecordedFolder(expected_digest(folder, paths, previous, limits, algorithm is not None),
                                         array("q", [before[5] for before in files]),
                                         sum(before[1] for before in files), algorithm)
    return RecordedFolders(folders, clocks.get(previous_run, (None, None))[1], limits)


def clean_folders(recorded: RecordedFolders, previous: dict[str, tuple], listings: HostListings,
                  algorithm: str | None) -> dict[str, RecordedFolder]:
    """The folders nobody changed since the previous run (the module's docstring says when
    a folder is clean), each with what that run recorded in it: both hosts' summaries
    (``facts.FolderSummary``) show its digest, the destination's newest ctime is older
    than the previous run's clock there, none of the source's entries listed one by one
    changed since the limit of its record's run (``previous`` holds the records loaded;
    with one ``source_limit`` for all, any entry listed is), and with a verifying
    ``algorithm`` all its files hold a verified hash of it."""
    if recorded.destination_clock is None:
        return {}
    destination_before = recorded.destination_clock - CLOCK_MARGIN_NS
    stale = set()
    for path, change in listings.source.changed.items():
        before = previous.get(path)
        limit = recorded.limit(None if before is None else before[9])
        if limit is not None and change >= limit:
            stale.add(path.rpartition("\\")[0])
    source, destination = listings.source.folders, listings.destination.folders
    clean: dict[str, RecordedFolder] = {}
    for folder, folder_records in recorded.folders.items():
        digest = folder_records.digest
        here, there = source.get(folder), destination.get(folder)
        if digest is not None and here is not None and there is not None and here.digest == digest \
                and there.digest == digest and there.newest_change < destination_before \
                and folder not in stale and algorithm in (None, folder_records.hash_algorithm):
            clean[folder] = folder_records
    return clean


def changed_on_host(listing: HostListing, recorded: RecordedFolders, path: str, origin: int) -> bool:
    """True when the source host shows entry ``path`` changed (its ctime) since the run
    ``origin`` that recorded it read its clock (``RecordedFolders.limit``): a new
    security descriptor, attribute or stream, which over SMB look unchanged on Samba.
    False where the listing or the clock cannot tell (the SMB comparison's verdict stands).
    ``listing`` was asked for the entries changed since ``listing_threshold``."""
    change = listing.changed.get(path)
    limit = recorded.limit(origin)
    return change is not None and limit is not None and change >= limit


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


def unpack_ids(packed: bytes) -> array:
    """Record ids kept packed (``FolderDigest.file_ids``: 64-bit little-endian) as an array."""
    ids = array("q")
    ids.frombytes(packed)
    if sys.byteorder != "little":
        ids.byteswap()
    return ids


def pack_ids(ids: array) -> bytes:
    """``unpack_ids``'s inverse."""
    if sys.byteorder != "little":
        ids = array("q", ids)
        ids.byteswap()
    return ids.tobytes()


class FolderDigestWriter:
    """Keeps, while a run walks a share, what it records directly inside each folder, and
    at the run's end stores it as the share's folder digests (``common.models.FolderDigest``)
    for the next run (``stored_folders``).

    A clean folder's digest is carried as it was (``carry``). A walked folder's is made
    from its unchanged files' details as the walk compared them (``walked``) and, at the
    end (``store``), the run's own records in it as the workers left them: folders, and
    the files the run copied. A record in a folder that did not arrive (failed, skipped
    as locked or changed, a folder whose metadata could not be applied) leaves that
    folder without a digest: it must be compared again next time.
    """

    def __init__(self, algorithm: str | None):
        self.algorithm = algorithm
        self.carried: dict[str, RecordedFolder] = {}
        # folder -> [entry lines of its unchanged files (None when a name in it cannot be
        # shown alike by the host), their record ids, their sizes' sum].
        self.walked_folders: dict[str, list] = {}

    def carry(self, folder: str, recorded: RecordedFolder) -> None:
        """``folder`` was clean: the next run compares it with what the previous run recorded."""
        self.carried[folder] = recorded

    def walked(self, folder: str, unchanged: list[tuple[str, int, int, int]], representable: bool) -> None:
        """``folder`` was listed and compared: ``unchanged`` holds its files found unchanged
        as (name, size, last-write time, id of the record referred to); ``representable``
        is False when an entry of it was refused."""
        try:
            lines = [folder_entry_line(name.encode(), b"f", size, last_write)
                     for name, size, last_write, _record in unchanged] if representable else None
        except UnicodeEncodeError:
            lines = None
        self.walked_folders[folder] = [lines, array("q", [record for *_details, record in unchanged]),
                                       sum(size for _name, size, _time, _record in unchanged)]

    def store(self, session: Session, run_id: int, share_id: int, records: list[tuple]) -> None:
        """Write the share's folder digests. ``records``: the run's own records of the share
        as (path, is folder, size, last-write time, id, arrived, holds a verified hash of
        the run's algorithm)."""
        invalid: set[str] = set()
        own: dict[str, list[tuple]] = {}
        for record in records:
            path = record[0]
            if not path:
                continue
            folder = path.rpartition("\\")[0]
            if not record[5]:
                invalid.add(folder)
            elif folder in self.walked_folders:
                own.setdefault(folder, []).append(record)
        rows = [{"run_id": run_id, "share_id": share_id, "path": folder,
                 "digest": None if folder in invalid else recorded.digest, "hash_algorithm": recorded.hash_algorithm,
                 "file_ids": pack_ids(recorded.file_ids), "file_bytes": recorded.file_bytes}
                for folder, recorded in self.carried.items()]
        for folder, walked in self.walked_folders.items():
            rows.append({"run_id": run_id, "share_id": share_id, "path": folder,
                         **self._walked_row(folder, walked, own.get(folder, []), folder in invalid)})
        session.execute(insert(FolderDigest.__table__), rows)

    def _walked_row(self, folder: str, walked: list, own: list[tuple], invalid: bool) -> dict:
        lines, ids, size = walked
        verified = self.algorithm is not None
        start = len(folder) + 1 if folder else 0
        for path, is_dir, record_size, last_write, record_id, _arrived, hashed in own:
            if not is_dir:
                ids.append(record_id)
                size += record_size
                verified = verified and hashed
            if lines is not None:
                try:
                    lines.append(folder_entry_line(path[start:].encode(), b"d" if is_dir else b"f",
                                                   0 if is_dir else record_size, last_write))
                except UnicodeEncodeError:
                    lines = None
        digest = None if lines is None or invalid else folder_digest(lines)
        return {"digest": digest, "hash_algorithm": self.algorithm if verified else None,
                "file_ids": pack_ids(ids), "file_bytes": size}
