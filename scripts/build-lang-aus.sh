#!/usr/bin/env bash
# Builds the AUs written in Python and JavaScript (aus/lang/) to WASI components, and the
# Python and JavaScript probes the tests run (host/guests/lang/). Installs the pinned
# toolchains first, under target/toolchains/: componentize-py from PyPI in a virtual
# environment (aus/lang/python/requirements.txt), componentize-js from npm
# (aus/lang/js/package-lock.json). Components go to target/lang-aus/: au-csvstat.wasm,
# au-reshape.wasm, probe-py.wasm, probe-js.wasm. A component newer than its sources and
# the world is not rebuilt. Safe to re-run, and to run twice at once (the second waits).
#
#   --target DIR   the cargo target directory to use instead of target/ (the test build
#                  passes its own)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=$root/target
while [ $# -gt 0 ]; do
    case $1 in
        --target) target=$2; shift 2 ;;
        *) echo "usage: $0 [--target DIR]" >&2; exit 2 ;;
    esac
done
tools=$target/toolchains
out=$target/lang-aus
mkdir -p "$tools" "$out"
exec 9>"$tools/.lock"
flock 9

# Python: componentize-py, exactly the version requirements.txt pins.
py=$tools/python
want_py=$(sed -n 's/^componentize-py==//p' aus/lang/python/requirements.txt)
if [ "$("$py/bin/componentize-py" --version 2>/dev/null | awk '{print $2}')" != "$want_py" ]; then
    echo "== installing componentize-py $want_py (PyPI) in $py"
    rm -rf "$py"
    python3 -m venv "$py"
    "$py/bin/pip" install --quiet --disable-pip-version-check -r aus/lang/python/requirements.txt
fi

# JavaScript: componentize-js, exactly what package-lock.json pins.
js=$tools/js
if ! cmp -s aus/lang/js/package-lock.json "$js/package-lock.json" \
    || [ ! -x "$js/node_modules/.bin/componentize-js" ]; then
    echo "== installing componentize-js (npm) in $js"
    rm -rf "$js"
    mkdir -p "$js"
    cp aus/lang/js/package.json aus/lang/js/package-lock.json "$js/"
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Whether $1 is missing or older than any of the rest.
stale() {
    local target=$1
    shift
    [ -e "$target" ] || return 0
    [ -n "$(find "$@" -newer "$target" -print -quit)" ]
}

# A Python AU: the module app.py in $2, with whatever else is in that directory.
python_au() {
    local name=$1 dir=$2
    if stale "$out/$name.wasm" "$dir" wit; then
        echo "== $name (Python) -> target/lang-aus/$name.wasm"
        "$py/bin/componentize-py" -d wit -w agenix:au/unit componentize -p "$dir" app \
            -o "$out/$name.wasm.part" >/dev/null
        mv "$out/$name.wasm.part" "$out/$name.wasm"
    fi
}

# A JavaScript AU: the module $2.
js_au() {
    local name=$1 src=$2
    if stale "$out/$name.wasm" "$src" wit; then
        echo "== $name (JavaScript) -> target/lang-aus/$name.wasm"
        "$js/node_modules/.bin/componentize-js" "$src" --wit "$root/wit" --world-name unit \
            -o "$out/$name.wasm.part" >/dev/null
        mv "$out/$name.wasm.part" "$out/$name.wasm"
    fi
}

python_au au-csvstat aus/lang/python/csvstat
js_au au-reshape aus/lang/js/reshape/reshape.js
python_au probe-py host/guests/lang/python
js_au probe-js host/guests/lang/js/probe.js
