"""Celery tasks of the file scan: one task lists a batch of folders of one share.

``scan_directories`` runs on the orchestrator queue (``settings.orchestrator_queue``,
served by ``sms orchestrator-worker``). It reads the share and its server from the job
database, decrypts the SMB password there (a message carries only the share id, the
folders' paths, flags and ancestor ids, and the scan options), lists its folders over
the process's pooled SMB session with several listings in flight at once
(``list_folders``), stores them all in one transaction
(``orchestrator.inventory.scan.apply_listings``) and, once that has committed, publishes
the subfolders found, split into batches (``task_messages``) so that every worker
process gets a share of them; then it checks whether the scan is complete
(``finish_scan_if_done``). No process ever holds a whole share's listing.

A failure to reach or log on to the server, or to list a folder, is stored as that
folder's error (with the NTSTATUS name and an admin-readable message) and the scan of
everything else goes on. This module must never put a credential in a message, a log
line or an error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

from celery import shared_task
from celery.utils.log import get_task_logger

from common.db import after_commit, session_scope
from common.models import Server, Share
from common.settings import get_settings
from common.smb import fastpath as fp
from common.smb.connection import SmbEndpoint, close_pool, get_tree
from common.smb.errors import SmbFileError, status_name
from common.smb.walk import (
    LIST_ACCESS,
    DirEntry,
    list_to_the_end,
    own_id_from,
    own_id_query_body,
    parse_directory_buffer,
    query_directory_body,
)
from orchestrator.inventory.scan import (
    DirectoryTask,
    FolderListing,
    ListingError,
    ScanOptions,
    apply_listings,
    finish_scan_if_done,
)
from orchestrator.jobs import JobError, server_password

logger = get_task_logger(__name__)

SCAN_TASK = "orchestrator.inventory.scan_directories"
# A batch holds at most this many folders; the subfolders one batch finds are spread
# over at least FANOUT batches (when there are that many), so worker processes share them.
FOLDERS_PER_TASK = 64
FANOUT = 8
# Folder listings in flight at once on one SMB session.
LISTING_WINDOW = 16
# Output asked of a folder's first QUERY_DIRECTORY (4 credits: about 2,000 entries of
# 20-character names), then of the second, which normally just says "no more".
_FIRST_OUTPUT = 4 * 65536
_SECOND_OUTPUT = 65536
_DONE = (fp.STATUS_NO_MORE_FILES, fp.STATUS_NO_SUCH_FILE)

_HINTS = {
    "STATUS_ACCESS_DENIED": "the migration account may not read it: grant it read access",
    "STATUS_LOGON_FAILURE": "check the account name and password stored for the server",
    "STATUS_WRONG_PASSWORD": "check the password stored for the server",
    "STATUS_ACCOUNT_DISABLED": "the account is disabled on the server",
    "STATUS_BAD_NETWORK_NAME": "the share no longer exists on the server",
    "STATUS_OBJECT_NAME_NOT_FOUND": "it vanished while the scan ran",
    "STATUS_OBJECT_PATH_NOT_FOUND": "it vanished while the scan ran",
}


def _describe(path: str) -> str:
    return f"folder {path!r}" if path else "the share root"


def listing_error(endpoint: SmbEndpoint, path: str, status_name: str, what: str) -> ListingError:
    """A ListingError worded for an administrator: where, what failed, the NTSTATUS, what to do."""
    hint = _HINTS.get(status_name)
    if status_name == "STATUS_TRANSPORT_ERROR":
        hint = f"the SMB server {endpoint.host}:{endpoint.port} did not answer or dropped the connection"
    message = f"{endpoint.unc}: cannot {what} {_describe(path)} ({status_name})"
    return ListingError(status_name, f"{message}: {hint}" if hint else message)


def _first_query(channel: fp.FastChannel) -> tuple[int, int]:
    """(output length, credit charge) of a folder's first QUERY_DIRECTORY on ``channel``
    (64 KiB and one credit when the server does not grant multi-credit requests)."""
    if not channel.connection.supports_multi_credit:
        return _SECOND_OUTPUT, 1
    output = min(_FIRST_OUTPUT, channel.connection.max_transact_size)
    return output, -(-output // 65536)


def _list_pipelined(channel: fp.FastChannel, paths: Sequence[str]) -> Iterator[tuple[str, int, list[DirEntry], int]]:
    """(path, the folder's own file id or 0, entries, NTSTATUS or 0) of each folder, in
    order, one level each.

    Each folder is one related compound CREATE + QUERY_INFO (FileInternalInformation: the
    folder's own id, for loop detection) + QUERY_DIRECTORY + QUERY_DIRECTORY + CLOSE; the
    listing asks for FileDirectoryInformation, which spares the server reading every
    entry's extended attributes for an EA size nobody uses. When the second query answers
    STATUS_NO_MORE_FILES the first held the whole listing (one round trip); otherwise the
    folder is listed again to the end. Up to LISTING_WINDOW folders are in flight at
    once. A broken connection raises ``fp.ChannelBroken``.
    """
    output, charge = _first_query(channel)
    own_id = own_id_query_body(fp.RELATED_FILE_ID)
    first = query_directory_body(fp.RELATED_FILE_ID, output)
    second = query_directory_body(fp.RELATED_FILE_ID, _SECOND_OUTPUT)
    close = channel._close_body(fp.RELATED_FILE_ID)
    in_flight: deque = deque()
    waiting = deque(paths)
    while waiting or in_flight:
        while waiting and len(in_flight) < LISTING_WINDOW:
            path = waiting.popleft()
            create_body = channel._create_body(path, LIST_ACCESS, fp.FILE_OPEN, fp.FILE_DIRECTORY_FILE,
                                               fp.SHARE_READ_WRITE_DELETE)
            channel._reserve(charge + 4)
            in_flight.append(channel._send_chain([
                (fp.CMD_CREATE, create_body, 1), (fp.CMD_QUERY_INFO, own_id, 1),
                (fp.CMD_QUERY_DIRECTORY, first, charge), (fp.CMD_QUERY_DIRECTORY, second, 1),
                (fp.CMD_CLOSE, close, 1)], path))
        op = in_flight.popleft()
        path = op.context
        created, identified, listed, more, closed = channel._wait(op)
        status = channel._status(created)
        if status:
            yield path, 0, [], status
            continue
        if channel._status(closed):  # a server that fails the rest of a related compound
            channel._call([(fp.CMD_CLOSE, channel._close_body(channel._create_info(created)[1]), 1)],
                          path, ["CLOSE"])
        folder_id = own_id_from(channel, identified)
        status, more_status = channel._status(listed), channel._status(more)
        if status in _DONE:
            yield path, folder_id, [], 0
        elif status:
            yield path, folder_id, [], status
        elif more_status in _DONE:
            yield path, folder_id, parse_directory_buffer(channel._query_output(listed), path), 0
        elif more_status:
            yield path, folder_id, [], more_status
        else:
            entries, status, _action = list_to_the_end(channel, path, *_first_query(channel))
            yield path, folder_id, entries, status


def list_folders(endpoint: SmbEndpoint, tasks: Sequence[DirectoryTask]) -> list[FolderListing]:
    """List every folder of ``tasks`` (one level each) over this process's pooled session,
    several at once; each gets its own file id and entries, or why it could not be listed."""
    listings = {task.path: FolderListing(task) for task in tasks}
    try:
        tree = get_tree(endpoint)
    except SmbFileError as exc:
        what = "reach" if exc.status_name == "STATUS_TRANSPORT_ERROR" else \
            f"log on as {endpoint.username!r} to list"
        for listing in listings.values():
            listing.error = listing_error(endpoint, listing.task.path, exc.status_name, what)
        return list(listings.values())
    listed: set[str] = set()
    try:
        with fp.FastChannel.attach(tree.connection, tree.session, tree.tree) as channel:
            for path, folder_id, entries, status in _list_pipelined(channel, list(listings)):
                listings[path].own_id = folder_id
                if status:
                    listings[path].error = listing_error(endpoint, path, status_name(status), "list")
                else:
                    listings[path].entries = entries
                listed.add(path)
    except (SmbFileError, fp.ChannelBroken, fp.FastPathUnavailable) as exc:
        # What is not listed yet fails with it; the pool opens a new session next time.
        tree.close()
        for listing in listings.values():
            if listing.task.path in listed:
                continue
            if isinstance(exc, fp.FastPathUnavailable):
                listing.error = ListingError("SCAN_FAILED", f"{endpoint.unc}: cannot list "
                                                            f"{_describe(listing.task.path)}: {exc}")
            else:
                listing.error = listing_error(endpoint, listing.task.path, "STATUS_TRANSPORT_ERROR", "list")
    return list(listings.values())


def task_messages(tasks: Sequence[DirectoryTask], options: ScanOptions) -> list[dict]:
    """The keyword arguments of the scan tasks for ``tasks``: per share, batches of at
    most FOLDERS_PER_TASK folders, and at least FANOUT batches when there are that many."""
    by_share: dict[int, list[DirectoryTask]] = {}
    for task in tasks:
        by_share.setdefault(task.share_id, []).append(task)
    result = []
    for share_id, folders in by_share.items():
        batches = max(-(-len(folders) // FOLDERS_PER_TASK), min(len(folders), FANOUT))
        for number in range(batches):
            batch = folders[number::batches]
            result.append({"share_id": share_id, "folders": [task.folder() for task in batch],
                           "options": options.to_dict()})
    return result


def publish_directories(app, tasks: list[DirectoryTask], options: ScanOptions) -> None:
    """Send the scan tasks for ``tasks`` to the orchestrator queue."""
    queue = get_settings().orchestrator_queue
    for kwargs in task_messages(tasks, options):
        app.send_task(SCAN_TASK, kwargs=kwargs, queue=queue)


def _endpoint(share_id: int) -> tuple[SmbEndpoint | None, str | None]:
    """The SMB endpoint of the share and whether a password is stored; (None, None) when
    the share is gone."""
    settings = get_settings()
    with session_scope() as session:
        share = session.get(Share, share_id)
        if share is None:
            return None, None
        server = session.get(Server, share.server_id)
        try:
            password = server_password(server)
        except JobError:
            password = None
        return SmbEndpoint(
            host=server.address, share=share.name, username=server.username,
            password=password or "", port=server.port, encrypt=settings.smb_encrypt,
            require_signing=settings.smb_require_signing,
        ), password


def _list_batch(endpoint: SmbEndpoint, password: str | None,
                tasks: Sequence[DirectoryTask]) -> list[FolderListing]:
    """Each folder of ``tasks`` listed, or why it could not be."""
    if password is None:
        error = ListingError("NO_CREDENTIAL", f"{endpoint.unc}: no SMB password is stored for the server; add one")
        return [FolderListing(task, [], error) for task in tasks]
    try:
        return list_folders(endpoint, tasks)
    except Exception as exc:  # noqa: BLE001 - one batch's failure must never stall the scan
        return [FolderListing(task, [], ListingError(
            "SCAN_FAILED", f"{endpoint.unc}: cannot list {_describe(task.path)}: unexpected "
                           f"{type(exc).__name__}: {exc}")) for task in tasks]


def scan_batch(share_id: int, tasks: Sequence[DirectoryTask], options: ScanOptions,
               publish: Callable[[list[DirectoryTask]], object]) -> str:
    """List the folders ``tasks`` of share ``share_id``, store them in one transaction,
    hand the subfolders to ``publish`` once it has committed, and complete the scan when
    nothing is left to list.

    A lone subfolder (a narrow chain such as ``share\\Data\\Departments``) is listed by
    this task itself, in a transaction of its own, instead of being published: no
    parallelism is lost and a round trip through the broker is saved per level.

    Returns what happened: "listed N folders, M entries[, K failed]", or "nothing to do"
    (a duplicate message, or folders no scan is waiting for).
    """
    endpoint, password = _endpoint(share_id)
    if endpoint is None:
        return "nothing to do"
    folders = entries = 0
    failed: list[FolderListing] = []
    while tasks:
        listings = _list_batch(endpoint, password, tasks)
        with session_scope() as session:
            follow = apply_listings(session, share_id, listings, options)
            tasks = follow if follow is not None and len(follow) == 1 else []
            if follow and not tasks:
                after_commit(session, lambda found=follow: publish(found))
        if follow is None:
            break
        folders += len(listings)
        entries += sum(len(listing.entries) for listing in listings)
        failed += [listing for listing in listings if listing.error is not None]
    with session_scope() as session:
        finish_scan_if_done(session, share_id)
    if not folders:
        logger.info("share %s: nothing to do (folders already listed or no scan waiting)", share_id)
        return "nothing to do"
    for listing in failed:
        logger.warning("%s", listing.error.message)
    return f"listed {folders} folders, {entries} entries" + (f", {len(failed)} failed" if failed else "")


@shared_task(bind=True, name=SCAN_TASK)
def scan_directories(self, share_id: int, folders: list[dict], options: dict | None = None) -> str:
    """The Celery task: ``scan_batch`` with subfolders published to the orchestrator queue."""
    scan_options = ScanOptions.from_dict(options)
    app = self.app
    tasks = [DirectoryTask.from_folder(share_id, folder) for folder in folders]
    return scan_batch(share_id, tasks, scan_options,
                      lambda found: publish_directories(app, found, scan_options))


def run_scans_inline(tasks: list[DirectoryTask], options: ScanOptions) -> None:
    """Run scans to the end in this process, batch after batch (no broker, no worker):
    for small shares and for ``sms inventory run --inline``."""
    queue = deque(task_messages(tasks, options))
    try:
        while queue:
            message = queue.popleft()
            share_id = message["share_id"]
            scan_batch(share_id, [DirectoryTask.from_folder(share_id, folder) for folder in message["folders"]],
                       options, lambda found: queue.extend(task_messages(found, options)))
    finally:
        close_pool()
