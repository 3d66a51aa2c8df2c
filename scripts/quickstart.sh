#!/usr/bin/env bash
# The quickstart: build agx and the standard AUs, push the AUs to a fresh local store, make
# and trust a signer key, sign the example plans (pinning each AU by digest), verify them,
# and run them on the bundled sample data, printing each result and its per-task table.
# Everything it creates lives in a scratch directory (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/setup.sh
echo "== building agx and the standard AUs (the first build takes several minutes)"
cargo build --release --locked -p agenix-planner
cargo build --locked -p agenix-aus --profile au --target wasm32-wasip2
agx=$root/target/release/agx

work=$(mktemp -d "${TMPDIR:-/tmp}/agenix-quickstart.XXXXXX")
export AGX_STORE=$work/store AGX_CACHE=$work/cache
cd "$work"

echo "== the standard AUs, checked against agenix:au/unit and pushed to $AGX_STORE"
for au in "$root"/target/wasm32-wasip2/au/*.wasm; do
    "$agx" au push "$au" | tail -n 1
done

echo "== a signer key, trusted for plans and actions"
"$agx" keygen --out signer.key
"$agx" trust add signer.key.pub --name quickstart --trust trust.json

for example in log-errors:app.log orders-report:orders.csv; do
    plan=${example%%:*} data=${example#*:}
    echo
    echo "== $plan: sign (locking each AU to its digest), verify, run on examples/data/$data"
    "$agx" plan sign "$root/examples/$plan.json" --key signer.key --out "$plan.env"
    "$agx" plan verify "$plan.env" --trust trust.json
    "$agx" run "$plan.env" --trust trust.json --input "$root/examples/data/$data"
done

echo
echo "== done; the store, keys and signed plans are in $work"
