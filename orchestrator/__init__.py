"""The orchestrator: jobs, inventory, transfer planning, the lease reaper and cutover.

It owns the job database and decides what proxy workers do; it must never copy file data
itself, and proxy workers must never import it.
"""
