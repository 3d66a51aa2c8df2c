#!/usr/bin/env bash
# The quickstart: build agx, make a signer key, trust it, and check the example plans.
# Runs in a scratch directory (printed at the end); touches nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/setup.sh
cargo build --release --locked -p agenix-planner
agx=$root/target/release/agx

work=$(mktemp -d "${TMPDIR:-/tmp}/agenix-quickstart.XXXXXX")
cd "$work"

echo "== a signer key, trusted for plans and actions"
"$agx" keygen --out signer.key
"$agx" trust add signer.key.pub --name quickstart --trust trust.json
"$agx" trust list --trust trust.json

echo "== the example plans, checked against every rule"
for plan in "$root"/examples/*.json; do
    "$agx" plan validate "$plan"
done

echo "== quickstart files are in $work"
