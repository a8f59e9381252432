"""Celery tasks of the file scan: one task lists one directory of a share.

``scan_directory`` runs on the orchestrator queue (``settings.orchestrator_queue``, served
by ``sms orchestrator-worker``). It reads the share and its server from the job database,
decrypts the SMB password there (a message carries only the share id, the directory path
and the scan options), lists the one directory with QUERY_DIRECTORY
(``common.smb.walk``: raw FILETIME times, attributes, sizes), stores the listing through
``orchestrator.inventory.scan.apply_listing`` and, once that transaction has committed,
publishes one task per subdirectory. So a share fans out by directory across every
worker process; no process ever holds a whole share's listing.

A failure to reach or log on to the server, or to list a directory, is stored as that
directory's error (with the NTSTATUS name and an admin-readable message) and the scan of
everything else goes on. This module must never put a credential in a message, a log
line or an error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from celery import shared_task
from celery.utils.log import get_task_logger

from common.db import after_commit, session_scope
from common.models import Server, Share
from common.settings import get_settings
from common.smb.connection import SmbEndpoint, close_pool, get_tree
from common.smb.errors import SmbFileError
from common.smb.walk import ShareWalker
from orchestrator.inventory.scan import (
    DirectoryTask,
    Entry,
    ListingError,
    ScanOptions,
    apply_listing,
)
from orchestrator.jobs import JobError, server_password

logger = get_task_logger(__name__)

SCAN_TASK = "orchestrator.inventory.scan_directory"

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


def list_directory(endpoint: SmbEndpoint, path: str,
                   ancestors: tuple[int, ...] = ()) -> tuple[list[Entry], ListingError | None, tuple[int, ...]]:
    """The entries of one directory of a share, or why it could not be listed; and the
    ancestor chain of file ids (the share root's own id is added when the chain is empty)."""
    try:
        tree = get_tree(endpoint)
    except SmbFileError as exc:
        what = "reach" if exc.status_name == "STATUS_TRANSPORT_ERROR" else \
            f"log on as {endpoint.username!r} to list"
        return [], listing_error(endpoint, path, exc.status_name, what), ancestors
    walker = ShareWalker(tree, path)
    try:
        if not ancestors:
            chain = walker._root_chain()
            ancestors = (chain[0][0],) if chain else ()
        # One level only: the walker's single-directory listing; subdirectories become tasks.
        entries = [Entry.from_dir_entry(entry) for entry in walker._list(walker.root)]
    except SmbFileError as exc:
        return [], listing_error(endpoint, path, exc.status_name, "list"), ancestors
    if walker.errors:
        failure = walker.errors[0]
        return [], listing_error(endpoint, path, failure.status_name, "list"), ancestors
    return entries, None, ancestors


def publish_directories(app, tasks: list[DirectoryTask], options: ScanOptions) -> None:
    """Send one scan task per directory to the orchestrator queue."""
    queue = get_settings().orchestrator_queue
    for task in tasks:
        app.send_task(SCAN_TASK, kwargs=task.kwargs(options), queue=queue)


def scan_one(share_id: int, path: str, fresh: bool, options: ScanOptions,
             publish: Callable[[list[DirectoryTask]], object], ancestors: tuple[int, ...] = ()) -> str:
    """List directory ``path`` of share ``share_id``, store it, and hand its subdirectories
    to ``publish`` once the transaction has committed.

    Returns what happened: "listed N", "failed STATUS_...", or "nothing to do" (a
    duplicate message, or a directory no scan is waiting for).
    """
    settings = get_settings()
    with session_scope() as session:
        share = session.get(Share, share_id)
        if share is None:
            return "nothing to do"
        server = session.get(Server, share.server_id)
        try:
            password = server_password(server)
        except JobError:
            password = None
        endpoint = SmbEndpoint(
            host=server.address, share=share.name, username=server.username,
            password=password or "", port=server.port, encrypt=settings.smb_encrypt,
            require_signing=settings.smb_require_signing,
        )
    if password is None:
        entries, error = [], ListingError(
            "NO_CREDENTIAL", f"{endpoint.unc}: no SMB password is stored for the server; add one")
    else:
        try:
            entries, error, ancestors = list_directory(endpoint, path, ancestors)
        except Exception as exc:  # noqa: BLE001 - one folder's failure must never stall the scan
            entries, error = [], ListingError(
                "SCAN_FAILED", f"{endpoint.unc}: cannot list {_describe(path)}: unexpected "
                               f"{type(exc).__name__}: {exc}")
    with session_scope() as session:
        follow = apply_listing(session, share_id, path, entries, error, fresh=fresh, options=options,
                               ancestors=ancestors)
        if follow:
            after_commit(session, lambda: publish(follow))
    if follow is None:
        logger.info("share %s %r: nothing to do (already listed or no scan waiting)", share_id, path)
        return "nothing to do"
    if error is not None:
        logger.warning("%s", error.message)
        return f"failed {error.status_name}"
    return f"listed {len(entries)}"


@shared_task(bind=True, name=SCAN_TASK)
def scan_directory(self, share_id: int, path: str = "", fresh: bool = False,
                   options: dict | None = None, ancestors: list[int] | None = None) -> str:
    """The Celery task: ``scan_one`` with subdirectories published to the orchestrator queue."""
    scan_options = ScanOptions.from_dict(options)
    app = self.app
    return scan_one(share_id, path, fresh, scan_options,
                    lambda tasks: publish_directories(app, tasks, scan_options),
                    tuple(ancestors or ()))


def run_scans_inline(tasks: list[DirectoryTask], options: ScanOptions) -> None:
    """Run scans to the end in this process, one directory after another (no broker, no
    worker): for small shares and for ``sms inventory run --inline``."""
    queue = deque(tasks)
    try:
        while queue:
            task = queue.popleft()
            scan_one(task.share_id, task.path, task.fresh, options, queue.extend, task.ancestors)
    finally:
        close_pool()
