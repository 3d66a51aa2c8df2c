#!/usr/bin/env bash
# Installs what building and testing AGEniX needs on a fresh Debian machine with rustup:
# the wasm32-wasip2 target (AUs and test guests are WASI components). Safe to re-run.
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
