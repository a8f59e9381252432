#!/usr/bin/env bash
# Prepare a fresh Debian machine of this kind for the project: Debian packages (when run as
# root), the virtual environment in .venv, and, with --services, the PostgreSQL and Redis
# servers the test suite talks to. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

APT_PACKAGES=(samba samba-vfs-modules smbclient redis-server postgresql openssh-server iproute2 iputils-arping isc-dhcp-client dnsmasq-base rclone attr acl chromium)
WITH_SERVICES=0
[[ "${1:-}" == "--services" ]] && WITH_SERVICES=1

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 2
    fi
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f $stamp ]]; then
    echo "bootstrap: installing the project into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import common, orchestrator, proxy_worker" 
    rm -f .venv/.installed-* && touch "$stamp"
fi

if ((WITH_SERVICES)); then
    if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        echo "bootstrap: starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "bootstrap: starting Redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --dir /tmp --logfile /tmp/sms-redis.log
    fi
    mkdir -p /run/sshd
fi
