#!/usr/bin/env bash
# Fuzzes the contract (agenix-proto): the plan parser and validator, the frame decoder and the
# envelope verifier, one libFuzzer target after another (fuzz/README.md describes them).
#
#   scripts/fuzz.sh [--short] [--asan] [--keep-going] [SECONDS] [TARGET...]
#
# SECONDS is the time per target (default 600: ten minutes each). --short is 45 seconds per
# target, for CI. --asan builds with AddressSanitizer (about five times fewer executions;
# proto itself has no unsafe code). --keep-going fuzzes for the whole time even after a
# crash (libFuzzer's fork mode), saving every crashing input. TARGETs default to all: plan
# frame envelope envelope_signed.
#
# First it replays every seed, every input in fuzz/regressions/ and the inputs at each
# format's cap under the allocation limits (`cargo test` of the fuzz crate); then it fuzzes
# each target from fuzz/seeds/<target> and fuzz/corpus/<target> (kept between runs). It
# prints the executions, coverage and peak allocations of each target and exits 1 if the
# replay failed or any target crashed (a panic, an allocation over the limit, an input
# running over 3 s, memory over 2 GiB); libFuzzer saves the input in fuzz/artifacts/<target>/.
#
# Needs only the stable toolchain: cargo-fuzz is installed from crates.io into
# fuzz/target/tools, and without --asan no unstable flag is used. --asan sets
# RUSTC_BOOTSTRAP=1 for -Zsanitizer=address and builds in fuzz/target/asan.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cargo_fuzz_version=0.13.2
seconds=600
asan=false
keep_going=()
targets=()
while (($#)); do
    case $1 in
        --short) seconds=45 ;;
        --asan) asan=true ;;
        --keep-going) keep_going=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1) ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        [0-9]*) seconds=$1 ;;
        -*)
            echo "fuzz.sh: unknown option $1" >&2
            exit 2
            ;;
        *) targets+=("$1") ;;
    esac
    shift
done
((${#targets[@]})) || targets=(plan frame envelope envelope_signed)

start=$(date +%s)
tools=$root/fuzz/target/tools
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version"
    cargo install --locked --quiet --root "$tools" cargo-fuzz --version "$cargo_fuzz_version"
fi
export PATH=$tools/bin:$PATH

build=(-s none)
if $asan; then
    export RUSTC_BOOTSTRAP=1
    build=(-s address --target-dir "$root/fuzz/target/asan")
fi

failed=()
echo "== replaying seeds, regressions and inputs at the caps"
if ! cargo test --release --locked --manifest-path fuzz/Cargo.toml; then
    failed+=("replay")
fi

echo "== building the fuzz targets"
(cd fuzz && cargo fuzz build "${build[@]}")
built=$(date +%s)

logs=$root/fuzz/target/logs
mkdir -p "$logs"
summary=()
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    mkdir -p "fuzz/corpus/$t"
    export AGENIX_FUZZ_ALLOC_LOG=$logs/$t.alloc
    : >"$AGENIX_FUZZ_ALLOC_LOG"
    status=ok
    # -timeout: the slowest legitimate input found (a plan at its 1 MiB cap) takes 0.4 s.
    if ! (cd fuzz && cargo fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=3 -rss_limit_mb=2048 \
        -dict=agenix.dict -print_final_stats=1 "${keep_going[@]}") >"$logs/$t.log" 2>&1; then
        status=FAILED
        failed+=("$t")
        grep -E "panicked|ERROR|over the limit|Test unit written" "$logs/$t.log" | head -5 || true
    fi
    # Executions and coverage from the last status line (fork mode prints "#N: cov: ...").
    last=$(grep -E '^#[0-9]+:?[[:space:]].*cov: ' "$logs/$t.log" | tail -1 || true)
    runs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' <<<"$last")
    crashes=$(grep -oE 'oom/timeout/crash: [0-9/]+' <<<"$last" || true)
    # Every process that ran inputs prints an allocation summary at exit; keep the largest.
    peak=$(awk '/^agenix-fuzz: [0-9]+ inputs;/ {
            n += $2; s = $0; sub(/^agenix-fuzz: [0-9]+ inputs; /, "", s)
            split($0, w, "allocation "); split(w[2], v, " "); if (v[1] + 0 >= best) { best = v[1] + 0; line = s }
        } END { if (n) printf "%d inputs measured; %s", n, line }' "$AGENIX_FUZZ_ALLOC_LOG")
    summary+=("$t: $status, ${runs:-?} executions in ${seconds}s${crashes:+ ($crashes)}, ${cov:-no coverage line}")
    summary+=("    ${peak:-no allocation summary}")
done

echo "== summary (build done after $((built - start))s, all done after $(($(date +%s) - start))s;"
echo "   logs in fuzz/target/logs)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}"
    exit 1
fi
