#!/bin/sh
# Install Debian's Chromium for the real-browser test (tests/test_browser.py) when it is missing
# and this machine allows it (root and apt-get). Otherwise say why not and exit 0: the browser
# test then skips with its reason, and `make test` goes on.
# Never `playwright install`: it downloads a browser of its own, which closed networks cannot.
set -u

CHROMIUM="${CLCOURSE_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: Chromium is already installed at $CHROMIUM"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install_browser: no Chromium at $CHROMIUM and not root, so not installing it;"
    echo "  ask for 'apt-get install chromium' (Debian) to run the browser test; it will skip."
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no Chromium at $CHROMIUM and no apt-get (not Debian-like), so not installing it;"
    echo "  install Chromium and set CLCOURSE_CHROMIUM to its path to run the browser test; it will skip."
    exit 0
fi

echo "install_browser: installing Debian's chromium with apt-get (about 30 s) ..."
if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
    if [ -x "$CHROMIUM" ]; then
        echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null)"
    else
        echo "install_browser: apt-get installed chromium, but not at $CHROMIUM; set CLCOURSE_CHROMIUM to its path"
    fi
else
    echo "install_browser: apt-get could not install chromium (offline? no such package here?); the browser test will skip"
fi
exit 0
