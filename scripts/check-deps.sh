#!/usr/bin/env bash
# Checks the dependency invariants ARCHITECTURE.md states, with `cargo tree` (run by
# scripts/test.sh): the contract (agenix-proto) and the queue's scheduler (agenix-queue-core)
# pull in no async runtime, network, TLS, storage or wasm engine, so they cannot do I/O; the
# sandbox host (agenix-host) never links the QUIC client, so it cannot talk to the queue; the
# standard AUs (agenix-aus) share no code with the host crates.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
# forbid CRATE DEP...: fails when any DEP is among CRATE's normal (non-dev, non-build)
# dependencies, direct or not.
forbid() {
    local crate=$1
    shift
    local tree
    tree=$(cargo tree --locked --offline -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
    for dep in "$@"; do
        if grep -qx "$dep" <<<"$tree"; then
            echo "check-deps: $crate depends on $dep (see ARCHITECTURE.md); the path:" >&2
            cargo tree --locked --offline -p "$crate" -e normal -i "$dep" >&2 || true
            status=1
        fi
    done
}

io=(tokio quinn rustls mio socket2 redb postgres tokio-postgres wasmtime agenix-link agenix-host agenix-runtime)
forbid agenix-proto "${io[@]}"
forbid agenix-queue-core "${io[@]}"
forbid agenix-host quinn rustls agenix-link agenix-queue agenix-queue-core redb
forbid agenix-aus agenix-proto agenix-host agenix-runtime agenix-link wasmtime tokio
if [ "$status" = 0 ]; then
    echo "check-deps: proto and queue/core do no I/O; host never reaches the queue; AUs share no host code"
fi
exit "$status"
