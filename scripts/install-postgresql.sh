#!/usr/bin/env bash
# Install Debian's PostgreSQL server for the database tests (tests/pgserver.py), if it is missing.
# Idempotent: does nothing when initdb and pg_ctl are found (on PATH or in
# /usr/lib/postgresql/*/bin). Installs with apt-get only when run as root; otherwise it says how
# to install and exits 0, and the PostgreSQL tests skip themselves. The tests start their own
# throwaway server (initdb into a temp dir); the cluster the package may create is not used.
set -euo pipefail

found() {
    command -v "$1" >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

if found initdb && found pg_ctl; then
    echo "install-postgresql: PostgreSQL (initdb, pg_ctl) is already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-postgresql: PostgreSQL is missing; install it with" \
         "'sudo apt-get install -y postgresql' (the PostgreSQL tests are skipped until then)" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgresql: no apt-get on this system; install PostgreSQL's server programs" \
         "by hand (the PostgreSQL tests are skipped until then)" >&2
    exit 0
fi

echo "install-postgresql: installing Debian's postgresql with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# the package's own service is not needed: on a machine without systemd it is not started
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" || true
