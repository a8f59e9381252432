#!/usr/bin/env bash
# Run a whole migration on the embedded defaults (SQLite job database, SQLite broker, local
# worker processes) between two Samba servers started on this machine for the purpose.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/bootstrap.sh
exec .venv/bin/python deploy/local/demo.py "$@"
