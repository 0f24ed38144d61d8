#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (Playwright drives it; no browser
# download). Installs it only when /usr/bin/chromium is missing; needs root and apt.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "scripts/browser.sh: no apt-get here; install Chromium at /usr/bin/chromium by hand" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
echo "scripts/browser.sh: installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
