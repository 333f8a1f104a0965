#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test (tests/dashboard/browser.test.ts),
# unless it is already installed. About 30 s on a fresh machine.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
