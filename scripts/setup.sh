#!/usr/bin/env bash
# Installs what building and testing AGEniX needs on a fresh Debian machine with rustup:
# the wasm32-wasip2 target (AUs and test guests are WASI components), the
# x86_64-unknown-linux-musl target and musl-tools (the static agw), and python3-venv and npm
# where they are missing. Safe to re-run.
set -euo pipefail

for target in wasm32-wasip2 x86_64-unknown-linux-musl; do
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
done

# AUs in Python and JavaScript are built with componentize-py (in a Python virtual
# environment) and componentize-js (npm): scripts/build-lang-aus.sh installs both, and needs
# python3 with venv, and npm.
missing=()
# The static agw links ring's C and assembly with musl-gcc.
command -v musl-gcc >/dev/null || missing+=(musl-tools)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null || missing+=(npm)
# promtool (Debian's prometheus package) checks every /metrics page the tests scrape.
command -v promtool >/dev/null || missing+=(prometheus)
# The dashboard's browser test reads its pages in headless Chromium; its TLS test uses curl.
command -v chromium >/dev/null || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
# The deployment test has systemd check the units (systemd-analyze, systemd-sysusers).
command -v systemd-analyze >/dev/null || missing+=(systemd)
# agq's PostgreSQL store is tested against a real server (initdb in a temporary directory).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
# The partition tests put agq and each agw in network namespaces joined by veth links.
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"
fi
