#!/bin/sh
# Builds {{name}}.wasm from app.py with componentize-py, against the agenix:au/unit world in
# wit/. Installs componentize-py (pinned) in .venv the first time; set COMPONENTIZE_PY to
# use one you have.
set -eu
cd "$(dirname "$0")"
py=${COMPONENTIZE_PY:-}
if [ -z "$py" ]; then
    if [ ! -x .venv/bin/componentize-py ]; then
        python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check componentize-py==0.25.1
    fi
    py=.venv/bin/componentize-py
fi
"$py" -d wit -w agenix:au/unit componentize app -o {{name}}.wasm
