#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this): formatting, lints with
# warnings as errors, the dependency invariants (scripts/check-deps.sh), the static agw,
# every test in the workspace, the queue's and the cluster's tests again on PostgreSQL, then
# the short soak (2000 jobs through agq and four agw while both are SIGKILLed;
# scripts/soak.sh), on the embedded store and on PostgreSQL with two agq nodes, and the short
# fuzzing run (every seed and regression replayed, then 45 s per target; scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# A clean build gains nothing from incremental state, and it would add a third to target/.
export CARGO_INCREMENTAL=0
# This kernel must have the native jail: its tests fail rather than skip without it. On a
# machine that cannot have it, run with AGENIX_REQUIRE_JAIL=0 (the tests then say what they
# skipped and why).
export AGENIX_REQUIRE_JAIL="${AGENIX_REQUIRE_JAIL:-1}"
# setup.sh installs promtool: the metrics test checks every page with it, never skips it.
export AGENIX_REQUIRE_PROMTOOL="${AGENIX_REQUIRE_PROMTOOL:-1}"
# The dashboard's browser test needs headless Chromium (scripts/setup.sh installs it).
export AGENIX_REQUIRE_CHROMIUM="${AGENIX_REQUIRE_CHROMIUM:-1}"
# agq's PostgreSQL store is tested against Debian's PostgreSQL (scripts/setup.sh installs it).
export AGENIX_REQUIRE_POSTGRES="${AGENIX_REQUIRE_POSTGRES:-1}"
# The partition tests need network namespaces (root, iproute2): they fail rather than skip.
export AGENIX_REQUIRE_NETNS="${AGENIX_REQUIRE_NETNS:-1}"
# The static agw (musl, one file): built here, then its test runs it alone and runs jobs with
# it (tests/tests/static_agw.rs); the test fails rather than skips without the build.
export AGENIX_REQUIRE_STATIC="${AGENIX_REQUIRE_STATIC:-1}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/check-deps.sh
cargo build --profile static --locked --target x86_64-unknown-linux-musl -p agenix-runtime --bin agw
cargo test --workspace --locked
# The queue's tests (the Q and N rows) and the end-to-end cluster tests again, with every
# agq keeping its jobs in a PostgreSQL server of its own.
AGENIX_TEST_STORE=postgres cargo test --locked -p agenix-queue \
    --test queue --test submit --test results --test faults --test network --test identity \
    --test blobs
AGENIX_TEST_STORE=postgres cargo test --locked -p agenix-e2e --test cluster
scripts/soak.sh --short
# Two agq nodes, one standing by: each queue kill kills the one serving.
AGENIX_TEST_STORE=postgres scripts/soak.sh --short --nodes 2
scripts/fuzz.sh --short
