"""The ``sms-worker`` entry point: a Celery prefork worker consuming one destination's queue.

``sms-worker --destination NAME [--concurrency N]`` serves the queue
``settings.destination_queue(NAME)``. Broker, database and everything else come from
settings (``SMS_*`` environment variables), never from the command line, so no
credential ever shows in a process list.
"""

from __future__ import annotations

import argparse

from common.celery_app import create_celery_app
from common.settings import get_settings


def worker_argv(destination: str, concurrency: int, loglevel: str) -> list[str]:
    """The Celery worker arguments for a destination's queue."""
    settings = get_settings()
    argv = [
        "worker",
        "--queues",
        settings.destination_queue(destination),
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--hostname",
        f"sms-{destination}@%h",
        "--loglevel",
        loglevel,
    ]
    if settings.broker_is_embedded:
        # kombu's SQLAlchemy transport has no fan-out exchanges.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return argv


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the worker until it is stopped."""
    parser = argparse.ArgumentParser(
        prog="sms-worker", description="Proxy worker consuming one destination's queue."
    )
    parser.add_argument("--destination", required=True, help="destination server name")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="prefork processes (default: settings.worker_concurrency)",
    )
    parser.add_argument("--loglevel", default="INFO")
    options = parser.parse_args(argv)
    concurrency = options.concurrency or get_settings().worker_concurrency
    app = create_celery_app()
    app.worker_main(worker_argv(options.destination, concurrency, options.loglevel))


if __name__ == "__main__":
    main()
