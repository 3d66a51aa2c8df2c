#!/usr/bin/env bash
# The quickstart: build everything, start a queue (agq, with its embedded store) and a worker
# (agw) on loopback, push the standard AUs (in Rust, Python and JavaScript), sign and submit
# the example plans on the bundled sample data, print each result and its per-task table,
# and stop what it started. The queue serves its dashboard and Prometheus metrics on
# loopback throughout; with --stay, the queue and the worker keep running after the examples
# (until Ctrl-C), for a browser to look at the jobs they ran.
# Everything it creates lives in a scratch directory (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
stay=0
case "${1:-}" in
--stay) stay=1 ;;
"") ;;
*) echo "usage: $0 [--stay]" >&2; exit 2 ;;
esac

scripts/setup.sh
echo "== building agq, agw, agx and the standard AUs (the first build takes several minutes)"
cargo build --release --locked -p agenix-queue -p agenix-runtime -p agenix-planner
cargo build --locked -p agenix-aus --profile au --target wasm32-wasip2
echo "== the AUs written in Python and JavaScript (installs componentize-py and componentize-js once)"
scripts/build-lang-aus.sh
bin=$root/target/release

work=$(mktemp -d "${TMPDIR:-/tmp}/agenix-quickstart.XXXXXX")
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT
cd "$work"

echo "== a queue on loopback, with a signer it trusts, its dashboard and its metrics"
fingerprint=$("$bin/agq" init --data queue)
"$bin/agx" keygen --out signer.key >/dev/null
"$bin/agx" trust add signer.key.pub --name quickstart --trust queue/trust.json
"$bin/agq" serve --data queue --listen 127.0.0.1:0 --ready-file agq.ready --checkpoint-every 1s \
    --web 127.0.0.1:0 --metrics 127.0.0.1:0 >agq.out 2>agq.log &
pids+=($!)
for _ in $(seq 300); do [ -s agq.ready ] && break; sleep 0.1; done
[ -s agq.ready ] || { echo "agq did not start: see $work/agq.log" >&2; exit 1; }
ready() { sed -e "s/.*\"$1\":\"\([^\"]*\)\".*/\1/" agq.ready; }
addr=$(ready address) web=$(ready web) metrics=$(ready metrics)
echo "agq serving on $addr as $fingerprint"
echo "dashboard: http://$web/    metrics: http://$metrics/metrics"

echo "== a worker with its own key, enrolled at the queue, verifying everything with the same trust file"
"$bin/agw" init --data worker 2>/dev/null
"$bin/agq" worker enroll worker/worker.pub --name quickstart-worker --data queue
"$bin/agw" --queue "$addr" --fingerprint "$fingerprint" --data worker \
    --trust queue/trust.json --cache-dir worker-cache --name quickstart-worker 2>agw.log &
pids+=($!)

export AGX_QUEUE=$addr AGX_FINGERPRINT=$fingerprint AGX_TOKEN_FILE=$work/queue/planner.token
export AGX_KEY=$work/signer.key AGX_STORE=$work/store AGX_CACHE=$work/cache

echo "== the standard AUs (Rust, Python, JavaScript), checked against agenix:au/unit and pushed to the store and the queue"
for au in "$root"/target/wasm32-wasip2/au/au-*.wasm "$root"/target/lang-aus/au-*.wasm; do
    "$bin/agx" au push "$au" | tail -n 1
done

for example in log-errors:app.log orders-report:orders.csv orders-columns:orders.csv; do
    plan=${example%%:*} data=${example#*:}
    echo
    echo "== $plan: sign (each AU pinned by digest), submit with examples/data/$data, watch"
    "$bin/agx" plan sign "$root/examples/$plan.json" --out "$plan.env" | tail -n 1
    "$bin/agx" submit "$plan.env" --input "$root/examples/data/$data" --watch
done

echo
echo "== each result, verified against the worker key this planner trusts (never one the queue hands it)"
"$bin/agx" trust add worker/worker.pub --name quickstart-worker --role worker --trust planner-trust.json
for job in 1 2 3; do
    "$bin/agx" jobs result "$job" --verify --trust planner-trust.json >/dev/null
done

echo
echo "== job 1 in the queue's audit log, each entry proven in a checkpoint the queue signed; the whole log checked"
# The queue signs a checkpoint every second here (--checkpoint-every; 10s by default).
for _ in 1 2 3 4 5; do
    "$bin/agq" audit verify --data "$work/queue" 2>/dev/null | grep -q "every entry is covered" && break
    sleep 1
done
"$bin/agx" jobs history 1
"$bin/agq" audit verify --data "$work/queue"

echo
"$bin/agx" queue stats

echo
echo "== the same, as Prometheus scrapes it (curl http://$metrics/metrics)"
curl -s "http://$metrics/metrics" | grep -E '^agenix_queue_(jobs|job_steps_total)\{' | grep -v ' 0$' || true
if command -v chromium >/dev/null; then
    echo
    echo "== the dashboard, as a browser renders it: $work/dashboard.png"
    chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
        --user-data-dir="$work/browser" --window-size=1280,1400 \
        --screenshot="$work/dashboard.png" "http://$web/" >/dev/null 2>&1 ||
        echo "(chromium could not take it)"
fi
echo
echo "== done; logs, keys and signed plans are in $work"
if [ "$stay" = 1 ]; then
    echo "the queue and the worker keep running: open http://$web/ (Ctrl-C stops them)"
    wait
fi
