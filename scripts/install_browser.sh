#!/usr/bin/env bash
# Install the headless browser that tests/test_browser.py drives through Playwright.
#
# Playwright cannot download its own browsers here, so the test uses Debian's `chromium`
# package at /usr/bin/chromium. Run this once on a CI runner (or a Debian/Ubuntu machine)
# before `pytest -m browser`; it does nothing when Chromium is already installed.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: not root and no sudo; install the 'chromium' package by hand" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
"$CHROMIUM" --version
