#!/usr/bin/env bash
# Run the whole test suite against real servers: installs what is missing, starts
# PostgreSQL and Redis when they are not running; the tests start their own smbd, sshd and
# Celery workers. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/bootstrap.sh --services
exec .venv/bin/python -m pytest "$@"
