#!/usr/bin/env bash
# Install Debian's Chromium for the JupyterLab browser test (tests/browser), if it is missing.
# Idempotent: does nothing when /usr/bin/chromium exists. Installs with apt-get only when run as
# root; otherwise it says how to install and exits 0, and the browser test skips itself.
# Never runs `playwright install`: that downloads a browser build from the internet.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install-browser: $CHROMIUM is already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-browser: $CHROMIUM is missing; install it with 'sudo apt-get install -y chromium'" \
         "(the browser test is skipped until then)" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get on this system; install Chromium as $CHROMIUM by hand" \
         "(the browser test is skipped until then)" >&2
    exit 0
fi

echo "install-browser: installing Debian's chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
"$CHROMIUM" --version || true
