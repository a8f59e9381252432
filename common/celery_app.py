"""The Celery application, built from settings, shared by the orchestrator and proxy workers.

JSON only; a message is acknowledged after its task ran (``task_acks_late``) and is
requeued if the worker process dies (``task_reject_on_worker_lost``); each worker process
prefetches a single message; one visibility timeout applies to the broker and to any
result backend (the embedded broker has none: the lease reaper covers it). Each
destination has its own queue (``settings.destination_queue``); orchestrator tasks go
to ``settings.orchestrator_queue``. There is no result backend: the job database is the
truth about every batch (see common.leases, orchestrator.leases).

Works on the embedded broker (``sqla+sqlite://``, kombu's SQLAlchemy transport, which
has no fan-out: remote control is off there) and on Redis. On the embedded broker the
consumers poll their queues every ``EMBEDDED_BROKER_POLL`` seconds instead of kombu's
every second (``EmbeddedBrokerTransport``): each message otherwise waited up to a second
before a worker took it, and an inventory or a folder stage is a chain of such messages
(one per folder level or wave). An idle worker's polling then costs about 2 % of a core
(4 % at 0.1 s, measured).

This module must never put a credential in the configuration it logs or in a message.
"""

from __future__ import annotations

from celery import Celery
from kombu.transport import sqlalchemy as sqlalchemy_transport

from common.settings import Settings, get_settings

PROXY_WORKER_TASKS = "proxy_worker.tasks"
PROXY_WORKER_COPY_TASKS = "proxy_worker.copy_tasks"
EMBEDDED_BROKER_BUSY_TIMEOUT = 30  # seconds
EMBEDDED_BROKER_POLL = 0.2  # seconds between an idle consumer's looks at its queues


class EmbeddedBrokerTransport(sqlalchemy_transport.Transport):
    """kombu's SQLAlchemy transport with a shorter polling interval. (Its transport
    options all go to ``create_engine``, so the interval cannot be passed as one.)"""

    polling_interval = EMBEDDED_BROKER_POLL


def celery_config(settings: Settings) -> dict:
    """The Celery configuration for ``settings``."""
    transport_options = {"visibility_timeout": settings.visibility_timeout}
    if settings.broker_is_embedded:
        # kombu's SQLAlchemy transport passes its options to create_engine() and has no
        # visibility timeout; wait for SQLite's lock rather than fail under contention.
        broker_options = {"connect_args": {"timeout": EMBEDDED_BROKER_BUSY_TIMEOUT}}
    else:
        broker_options = dict(transport_options)
    broker = {"broker_url": settings.broker_url}
    if settings.broker_is_embedded:
        # The transport named by its class; what follows "sqla+" is the database's URL.
        broker = {"broker_url": settings.broker_url.partition("+")[2],
                  "broker_transport": f"{__name__}:{EmbeddedBrokerTransport.__name__}"}
    return {
        **broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_options,
        "result_backend_transport_options": dict(transport_options),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": settings.orchestrator_queue,
        "task_create_missing_queues": True,
        # Orchestrator tasks to their queue; proxy-worker tasks are sent to a destination's.
        "task_routes": {"orchestrator.*": {"queue": settings.orchestrator_queue}},
        "worker_enable_remote_control": not settings.broker_is_embedded,
        # Task events feed Flower's task list; the embedded broker has no fanout exchange
        # to carry them. Events name tasks and their arguments (ids, paths), never secrets.
        "worker_send_task_events": not settings.broker_is_embedded,
        "task_send_sent_event": not settings.broker_is_embedded,
        "timezone": "UTC",
        "enable_utc": True,
    }


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (default: this process's settings)."""
    settings = settings or get_settings()
    if settings.broker_is_embedded:
        settings.ensure_state_dir()
    app = Celery("sms", include=[PROXY_WORKER_TASKS, PROXY_WORKER_COPY_TASKS, "orchestrator.inventory.tasks"], set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
