#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this): formatting, lints with
# warnings as errors, then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
