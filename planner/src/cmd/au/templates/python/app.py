"""{{name}}: an AGEniX AU in Python. It reads stdin and writes stdout; diagnostics go to stderr.

The AU contract: exit 0 ok, 1 failure, 2 bad input or usage, 3+ your own meanings;
`{{name}} --describe` prints the model card below. Arguments and the exit code go through
the WASI interfaces (`environment.get_arguments`, `exit.exit_with_code`): `sys.exit(n)` would
report every failure as 1.

componentize-py bundles the modules this file imports by name; a module the standard
library loads on its own (an encoding, say) must be imported here too.
"""

import json
import sys

from wit_world import exports
from wit_world.imports import environment, exit as wasi_exit

USAGE = "{{name}} [--lower]"
# The model card (schema agenix.au.card/v1): keep it in step with what the AU does.
CARD = {
    "schema": "agenix.au.card/v1",
    "name": "{{name}}",
    "version": "0.1.0",
    "description": "Uppercases its input (lowercases it with --lower)",
    "capabilities": ["stdin", "stdout"],
    "inputs": ["text/plain"],
    "outputs": ["text/plain"],
    "args": [{"flag": "--lower", "description": "lowercase instead of uppercase"}],
    "usage": USAGE,
    "exit_codes": {"0": "ok", "1": "failure", "2": "bad input or usage"},
    "mounts": [],
}


def main(args):
    lower = False
    for arg in args:
        if arg == "--describe":
            print(json.dumps(CARD, separators=(",", ":")))
            return 0
        elif arg == "--lower":
            lower = True
        else:
            print(f"{{name}}: unknown argument {arg!r}\nusage: {USAGE}", file=sys.stderr)
            return 2
    try:
        data = sys.stdin.buffer.read()
    except OSError as e:
        print(f"{{name}}: cannot read stdin: {e}", file=sys.stderr)
        return 1
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        print("{{name}}: input is not UTF-8", file=sys.stderr)
        return 2
    sys.stdout.write(text.lower() if lower else text.upper())
    return 0


class Run(exports.Run):
    def run(self) -> None:
        try:
            code = main(environment.get_arguments()[1:])
        except BrokenPipeError:
            code = 0
        sys.stdout.flush()
        sys.stderr.flush()
        wasi_exit.exit_with_code(code)
