"""Transfer: pairings, runs planned into batches for proxy workers, reconciliation and logs.

``planning`` drives a run (PreExistingData, walk and dispatch, mirror, directories),
``destination`` holds the orchestrator's own operations on destination shares,
``reconcile`` compares what was scanned with what workers reported and gates cutover,
``logs`` exports per-run CSVs, ``workers`` starts local proxy workers in embedded mode and
``cli`` is the ``sms transfer`` command group.
"""
