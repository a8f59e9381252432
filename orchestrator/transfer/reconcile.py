"""Reconciliation of a transfer run, per share, and the gate that lets cutover go ahead.

For every share of a run the report compares what the source walk recorded (one file
record per file and folder, state scanned) with what proxy workers reported back:

- inventoried: entries the walk found (files and folders), and their bytes;
- copied: written to the destination this run (verified ones included);
- verified: copied and the destination's re-read hash equals the source's;
- unchanged: the destination already matched, nothing written (skipped): decided by a
  re-run's planner (source walk and destination listing against the previous run's
  records, no batch) or by the copy engine on the destination itself;
- missing: no worker ever reported on it (still scanned after the run);
- mismatched: the destination's hash differs from the source's;
- failed: the copy failed (NTSTATUS name kept in the record);
- walk errors: source folders that could not be listed (their content is unknown);
- mirror errors: destination entries that should have been deleted but were not;
- share errors: the share could not be recreated on (or opened on) the destination, so
  none of it was transferred.

A share is clean when nothing is missing, mismatched or failed and there were no walk,
mirror or share errors; a run stopped by its maximum duration (``stopped``) is never
clean. ``cutover_allowed`` refuses unless the run ended and every share is clean,
or the operator explicitly overrides; ``pairing_cutover_allowed`` applies the same gate
to a pairing's latest finished run.

This module only reads the database: it must never change a run or its records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import FileState, RunState, Share, TransferRun, run_records
from orchestrator.transfer.planning import (
    EVENT_MAX_DURATION,
    EVENT_MIRROR_ERROR,
    EVENT_SHARE_ERROR,
    EVENT_WALK_ERROR,
    run_events,
)


@dataclass
class ShareReconciliation:
    """Counts of one share in one run (entries are files and folders)."""

    share: str
    inventoried: int = 0
    inventoried_bytes: int = 0
    files: int = 0
    directories: int = 0
    copied: int = 0
    copied_bytes: int = 0
    verified: int = 0
    unchanged: int = 0
    missing: int = 0
    mismatched: int = 0
    failed: int = 0
    walk_errors: int = 0
    mirror_errors: int = 0
    share_errors: int = 0

    @property
    def clean(self) -> bool:
        """True when every inventoried entry arrived (copied or unchanged) without error."""
        return not (self.missing or self.mismatched or self.failed or self.walk_errors
                    or self.mirror_errors or self.share_errors)


@dataclass
class RunReconciliation:
    """The reconciliation of a whole run: its state and one entry per share."""

    run_id: int
    state: str
    shares: list[ShareReconciliation] = field(default_factory=list)
    stopped: str = ""  # why the run stopped early (maximum duration), if it did

    @property
    def clean(self) -> bool:
        """True when the run ended, was not stopped early, and every share is clean."""
        finished = self.state in (RunState.SUCCEEDED.value, RunState.COMPLETED_WITH_ERRORS.value)
        return finished and not self.stopped and all(share.clean for share in self.shares)

    def to_json(self) -> dict:
        """Plain data for ``--json`` output and the API."""
        return {"run_id": self.run_id, "state": self.state, "clean": self.clean, "stopped": self.stopped,
                "shares": [{**asdict(share), "clean": share.clean} for share in self.shares]}


def reconcile(session: Session, run_id: int) -> RunReconciliation:
    """The per-share reconciliation report of run ``run_id``."""
    run = session.get(TransferRun, run_id)
    if run is None:
        raise LookupError(f"no transfer run {run_id}")
    records = run_records(run_id).c
    rows = session.execute(
        select(records.share_id, records.state, records.is_dir, func.count(),
               func.coalesce(func.sum(records.size), 0))
        .group_by(records.share_id, records.state, records.is_dir)).all()
    names = dict(session.execute(select(Share.id, Share.name).where(
        Share.id.in_({share_id for share_id, *_rest in rows}))).all())
    shares = {share_id: ShareReconciliation(name) for share_id, name in names.items()}
    for share_id, state, is_dir, count, size in rows:
        report = shares[share_id]
        size = int(size)
        report.inventoried += count
        report.inventoried_bytes += size
        if is_dir:
            report.directories += count
        else:
            report.files += count
        if state in (FileState.COPIED, FileState.VERIFIED):
            report.copied += count
            report.copied_bytes += size
            if state == FileState.VERIFIED:
                report.verified += count
        elif state == FileState.SKIPPED:
            report.unchanged += count
        elif state == FileState.SCANNED:
            report.missing += count
        elif state == FileState.MISMATCH:
            report.mismatched += count
        elif state == FileState.FAILED:
            report.failed += count
    stopped = ""
    for event in run_events(session, run_id, run.job_id, (EVENT_WALK_ERROR, EVENT_MIRROR_ERROR,
                                                          EVENT_SHARE_ERROR, EVENT_MAX_DURATION)):
        if event.kind == EVENT_MAX_DURATION:
            stopped = event.message
            continue
        share_id = event.detail.get("share_id")
        if event.kind == EVENT_SHARE_ERROR and share_id not in shares:
            shares[share_id] = ShareReconciliation(event.detail.get("share") or str(share_id))
        report = shares.get(share_id)
        if report is None:
            continue
        if event.kind == EVENT_WALK_ERROR:
            report.walk_errors += 1
        elif event.kind == EVENT_SHARE_ERROR:
            report.share_errors += 1
        else:
            report.mirror_errors += 1
    return RunReconciliation(run_id, run.state.value,
                             sorted(shares.values(), key=lambda share: share.share), stopped)


def cutover_allowed(session: Session, run_id: int, *, override: bool = False) -> bool:
    """True when run ``run_id`` reconciles clean, or when the operator overrides the gate.

    The override exists for a known, accepted loss (a file the users will not miss); it
    is the caller's job to record who overrode and why.
    """
    return override or reconcile(session, run_id).clean


def latest_finished_run(session: Session, pairing_id: int) -> int | None:
    """Id of the pairing's most recent run that ran to its end (succeeded or with errors)."""
    return session.scalar(select(func.max(TransferRun.id)).where(
        TransferRun.pairing_id == pairing_id,
        TransferRun.state.in_((RunState.SUCCEEDED, RunState.COMPLETED_WITH_ERRORS))))


def pairing_cutover_allowed(session: Session, pairing_id: int, *, override: bool = False) -> bool:
    """Cutover gate for a pairing: its latest finished run must reconcile clean (or the
    operator overrides); a pairing never transferred is refused even with the override."""
    run_id = latest_finished_run(session, pairing_id)
    return run_id is not None and cutover_allowed(session, run_id, override=override)
