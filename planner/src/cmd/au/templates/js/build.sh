#!/bin/sh
# Builds {{name}}.wasm from app.js with componentize-js, against the agenix:au/unit world in
# wit/. Installs componentize-js (pinned in package.json) with npm the first time; set
# COMPONENTIZE_JS to use one you have.
set -eu
cd "$(dirname "$0")"
js=${COMPONENTIZE_JS:-}
if [ -z "$js" ]; then
    if [ ! -x node_modules/.bin/componentize-js ]; then
        npm install --no-audit --no-fund --loglevel=error
    fi
    js=node_modules/.bin/componentize-js
fi
"$js" app.js --wit wit --world-name unit -o {{name}}.wasm
