"""Proxy workers: Celery worker processes near a destination that carry out batches.

A proxy worker learns what to do only from the job database (by batch id) and claims each
batch through the lease protocol in common.leases; it must never import the orchestrator
and must never receive a credential through the broker.
"""
