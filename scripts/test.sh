#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this): formatting, lints with
# warnings as errors, the dependency invariants (scripts/check-deps.sh), every test in the workspace, then the short soak (2000 jobs through
# agq and four agw while both are SIGKILLed; scripts/soak.sh) and the short fuzzing run
# (every seed and regression replayed, then 45 s per target; scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-deps.sh
cargo test --workspace --locked
scripts/soak.sh --short
scripts/fuzz.sh --short
