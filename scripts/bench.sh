#!/usr/bin/env bash
# The benchmarks, side by side with what users would pick instead: installs the comparison
# tools (for the comparison only; AGEniX needs none of them), builds in release mode and
# writes BENCHMARKS.md. With arguments, they go to agenix-bench instead (for example
# `queue e2e --runs 7`), which then prints only those sections.
# Not part of CI. The first run builds wasmtime-cli from crates.io (about half an hour on two
# cores); a whole run then takes about six minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/target/bench-tools

scripts/setup.sh

echo "== comparison tools: bubblewrap, GNU grep/coreutils, jq, Redis (Debian packages)"
need=()
for pkg in bubblewrap coreutils grep jq redis-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Only the binary is wanted: the packaged service must not hold the default port.
if command -v systemctl >/dev/null && systemctl is-active -q redis-server 2>/dev/null; then
    echo "note: the redis-server service is running; the benchmark starts its own on a free port"
fi

echo "== wasmtime-cli at the version AGEniX embeds"
wasmtime_version=$(sed -n '/^name = "wasmtime"$/{n;s/^version = "\(.*\)"$/\1/p;q}' Cargo.lock)
if ! "$tools/bin/wasmtime" --version 2>/dev/null | grep -qF "$wasmtime_version"; then
    # Its build directory is kept, so an interrupted build resumes where it stopped.
    CARGO_TARGET_DIR=$tools/build cargo install --locked --root "$tools" wasmtime-cli \
        --version "$wasmtime_version"
fi

echo "== Celery 5 with the Redis client, in a virtual environment"
[ -x "$tools/venv/bin/python" ] || python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install -q 'celery[redis]>=5.4,<6'

echo "== building AGEniX (release)"
cargo build --release --locked --workspace --bins
cargo build --profile static --locked --target x86_64-unknown-linux-musl -p agenix-runtime --bin agw

export AGENIX_BENCH_WASMTIME=$tools/bin/wasmtime
export AGENIX_BENCH_PYTHON=$tools/venv/bin/python
AGENIX_BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
export AGENIX_BENCH_COMMIT
if (($#)); then
    target/release/agenix-bench "$@"
else
    target/release/agenix-bench --out BENCHMARKS.md
fi
