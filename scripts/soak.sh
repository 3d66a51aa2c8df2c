#!/usr/bin/env bash
# The soak and fault harness (tests/src/bin/soak): 10,000 jobs of mixed kinds and sizes (up to
# 1000 inputs per action, plans near 1 MiB and 100 tasks, inputs as large as the queue takes)
# submitted with agx to one agq and four agw on loopback, while agq is SIGKILLed and started
# again on the same data 20 times and a worker is SIGKILLed every few seconds. Then every job
# is checked: no acknowledged job lost, none succeeded twice, each finished with exactly the
# output its input must give. Exits 1 if any check fails (the logs are kept and named).
#
#   scripts/soak.sh [--short] [SOAK OPTIONS...]
#
# Without --short it builds and runs release binaries (about 4 minutes here, once built).
# --short is the run CI makes: 2000 jobs, 10 queue kills, with the debug binaries the test
# suite already built (about 2 minutes). agq runs with leases of 10 s and heartbeats every
# 3 s (defaults 30 s and 10 s) so that the jobs of a killed worker come back sooner; every
# other limit is as deployed. Every other option goes to the harness (`--help` lists them: --jobs,
# --workers, --queue-kills, --seed, --dir to keep the run's files, ...).
# With AGENIX_TEST_STORE=postgres the queue keeps its jobs in a PostgreSQL server of its
# own (Debian's), which is also SIGKILLed and started again once, halfway, under it; add
# --nodes 2 for two agq nodes on it, one standing by (each queue kill then kills the node
# serving, which comes back as the standby). AGENIX_PG_FSYNC=on keeps PostgreSQL's fsync.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=(--release)
dir=target/release
for a in "$@"; do
    if [[ $a == --short ]]; then
        profile=()
        dir=target/debug
    fi
done

scripts/setup.sh
cargo build --locked "${profile[@]}" --bins -p agenix-queue -p agenix-runtime -p agenix-planner \
    -p agenix-e2e
exec "$dir/soak" --bins "$dir" "$@"
