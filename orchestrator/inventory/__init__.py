"""Inventory: what each source server is, what it shares, and every file in those shares.

``service`` reads servers through the host adapters and stores facts, shares and local
principals; ``scan`` and ``tasks`` scan each share's files, one directory per Celery task
on the orchestrator queue; ``cli`` is ``sms inventory``. Nothing here copies or changes
anything on a server.
"""
