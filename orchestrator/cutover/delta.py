"""The final delta transfer of a cutover, done by the transfer engine (stages 2 and 3).

``EngineDeltaTransfer`` implements the stage machine's ``DeltaTransfer`` protocol over
``orchestrator.transfer``: ``run`` creates a new transfer run of the pairing with the
options of its latest finished run (same checksum, retries and share mapping) but
without share recreation (the source's shares are read-only for the cutover by then, and
a recreation would copy that to the destination; pre-flight checked that the destination
holds every share; local accounts are still mapped for the run's ACLs), drives it to the
end with ``execute_run`` while the source's shares are read-only (the stage
machine made them so), and returns the run's id and counters; the copy engine skips what
has not changed, so only what users changed since the last run is copied, and the mirror
step removes what they deleted. ``reconcile`` applies the transfer gate
(``reconcile.cutover_allowed``) to that run, never overridden: the override of the plan
covers the earlier transfer only, not the last minutes' changes.

The cutover's deadline (its plan's ``timeout_seconds`` per call) bounds the delta too:
the time left when the workers are up becomes the transfer run's ``max_duration``, so
the engine stops dispatching when the deadline passes and the run ends
``completed_with_errors`` with the reason; ``run`` then raises ``CutoverError`` (the
stage fails, a resume starts a new delta run, which skips what was already copied).
When no time is left before the transfer starts, its run is cancelled unstarted.

The transfer engine needs proxy workers for the destination. In embedded mode (SQLite
broker) this module starts them for the duration of the run, as ``sms transfer run
--wait`` does (``LocalWorkers``); otherwise the deployed workers serve the destination's
queue. Like ``execute_run``, it works on the job database of this process's settings.

This module must never delete a file on the source, and never put a credential in the
record it returns (it holds ids, states and counters only).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from common.db import session_scope
from common.models import Pairing, RunState, Server, TransferRun
from common.settings import get_settings
from common.transfer_options import TransferOptions
from orchestrator.cutover.stages import (
    CutoverError,
    CutoverPairing,
    DeltaReconciliation,
)
from orchestrator.transfer import planning
from orchestrator.transfer.reconcile import (
    cutover_allowed,
    latest_finished_run,
    reconcile,
)
from orchestrator.transfer.workers import LocalWorkers, WorkerStartError
from orchestrator.worker import stop_grace

logger = logging.getLogger(__name__)


class EngineDeltaTransfer:
    """The final delta through ``orchestrator.transfer`` (see the module docstring).

    ``start_workers``: start local proxy workers for the destination during the run
    (default: when the broker is embedded). ``progress`` gets the transfer engine's lines.
    """

    def __init__(self, *, start_workers: bool | None = None, concurrency: int | None = None,
                 progress: Callable[[str], object] | None = None):
        self.start_workers = get_settings().broker_is_embedded if start_workers is None else start_workers
        self.concurrency = concurrency
        self.progress = progress

    def run(self, pairing: CutoverPairing, deadline: float) -> dict[str, Any]:
        """Create and drive the final delta run of ``pairing`` until ``deadline`` at the
        latest (``time.monotonic()`` clock); its id, state and counters."""
        with session_scope() as session:
            row = session.get(Pairing, pairing.pairing_id)
            previous = latest_finished_run(session, pairing.pairing_id)
            if previous is None:
                raise CutoverError("no transfer run of this pairing has finished: transfer the data first")
            options = dataclasses.replace(TransferOptions.from_json(session.get(TransferRun, previous).options),
                                          recreate_shares=False)
            try:
                run_id = planning.create_run(session, row, options).id
            except planning.TransferError as exc:
                raise CutoverError(f"cannot start the final delta transfer: {exc} "
                                   "(cancel it with 'sms transfer cancel', then resume)") from None
            destination = session.get(Server, pairing.destination_server_id).name
        workers = LocalWorkers([destination], concurrency=self.concurrency) if self.start_workers else None
        if workers is not None:
            try:
                workers.start()
            except WorkerStartError as exc:
                with session_scope() as session:
                    planning.cancel_run(session, run_id, f"not started: {exc}")
                raise CutoverError(f"final delta transfer run {run_id} not started: {exc}") from None
        state = None  # the run's final state, once it has ended
        try:
            time_left = deadline - time.monotonic()
            if time_left <= 0:
                with session_scope() as session:
                    planning.cancel_run(session, run_id, "not started: the cutover's time limit had passed")
                raise CutoverError(f"cutover timed out before the final delta transfer run {run_id} could start "
                                   "(cancelled unstarted); resume to go on, with a longer timeout if needed")
            with session_scope() as session:
                run = session.get(TransferRun, run_id)
                run.options = dataclasses.replace(TransferOptions.from_json(run.options),
                                                  max_duration=time_left).to_json()
            state = planning.execute_run(run_id, progress=self.progress)
        finally:
            if workers is not None:
                workers.stop(stop_grace(state is not None))
        with session_scope() as session:
            run = session.get(TransferRun, run_id)
            if planning.run_events(session, run_id, run.job_id, [planning.EVENT_MAX_DURATION]):
                raise CutoverError(
                    f"cutover timed out during the final delta transfer: run {run_id} stopped at the cutover's "
                    f"limit ({time_left:.0f} s were left), {run.files_copied} file(s) copied, "
                    f"{run.files_failed} not; resume to go on (what was copied is skipped), "
                    "with a longer timeout if needed")
            record = {"transfer_run_id": run_id, "previous_transfer_run_id": previous, "state": state.value,
                      "files_total": run.files_total, "files_copied": run.files_copied,
                      "files_skipped": run.files_skipped, "files_failed": run.files_failed,
                      "bytes_copied": run.bytes_copied}
        logger.info("final delta transfer run %s of pairing %s: %s", run_id, pairing.pairing_id, state.value)
        return record

    def reconcile(self, pairing: CutoverPairing, record: dict[str, Any]) -> DeltaReconciliation:
        """Clean when the delta run ended and every share reconciles clean (no override)."""
        run_id = record.get("transfer_run_id")
        with session_scope() as session:
            run = session.get(TransferRun, run_id) if run_id is not None else None
            if run is None or run.pairing_id != pairing.pairing_id:
                return DeltaReconciliation(False, f"no final delta transfer run recorded ({record})")
            report = reconcile(session, run_id)
            clean = cutover_allowed(session, run_id)
            counts = "; ".join(
                f"{share.share}: {share.copied} copied, {share.unchanged} unchanged, {share.missing} missing, "
                f"{share.mismatched} mismatched, {share.failed} failed, {share.walk_errors} walk errors, "
                f"{share.mirror_errors} mirror errors" for share in report.shares)
            if run.state not in (RunState.SUCCEEDED, RunState.COMPLETED_WITH_ERRORS):
                counts = f"run ended {run.state.value}: {run.error}; {counts}"
        return DeltaReconciliation(clean, f"transfer run {run_id}: {counts}")

