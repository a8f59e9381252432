#!/usr/bin/env bash
# Run the whole test suite against real servers: installs what is missing, starts
# PostgreSQL and Redis when they are not running; the tests start their own smbd, sshd and
# Celery workers. Extra arguments go to pytest.
#
# Test files run three at a time (pytest-xdist, one file per process so module fixtures
# and in-file order hold): most of the suite waits on servers, not on the 2 cores. Every
# lab picks its own loopback address, /24 of 198.18.0.0/15, queue and database, so files
# running side by side never meet.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/bootstrap.sh --services
exec .venv/bin/python -m pytest -n "${SMS_TEST_PROCESSES:-3}" --dist loadfile "$@"
