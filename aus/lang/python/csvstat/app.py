"""csvstat: a summary of each column of a CSV table read from stdin.

An AU in Python, built to a WASI component by componentize-py against the agenix:au/unit
world (see aus/lang/README.md). One JSON object per column on stdout, in header order.
"""

import csv
import io
import json
import math
import re
import sys

from wit_world import exports
from wit_world.imports import environment, exit as wasi_exit

NAME = "csvstat"
VERSION = "0.1.0"
USAGE = "csvstat [-d DELIM] [-c COLUMN]..."
CARD = {
    "schema": "agenix.au.card/v1",
    "name": NAME,
    "version": VERSION,
    "description": "Summarize each column of a CSV table (header row first): values, "
    "empty cells, distinct values; min, max, sum and mean when every value is a plain "
    "decimal number (sum and mean null past the range of a double), else the most common "
    "value.",
    "capabilities": ["stdin", "stdout"],
    "inputs": ["text/csv"],
    "outputs": ["application/jsonl"],
    "args": [
        {"flag": "-d DELIM", "description": "field delimiter, one character (default ,; \\t for tab)"},
        {"flag": "-c COLUMN", "description": "summarize only this column (repeatable; by header name)"},
    ],
    "usage": USAGE,
    "exit_codes": {
        "0": "ok",
        "1": "reading stdin failed, or an internal error",
        "2": "bad usage, malformed CSV (a row with the wrong number of fields, invalid UTF-8) or an unknown column",
    },
    "mounts": [],
}


class Usage(Exception):
    pass


def finish(code: int) -> None:
    """Flushes what was written, then exits with `code` (kept through wasm)."""
    sys.stdout.flush()
    sys.stderr.flush()
    wasi_exit.exit_with_code(code)




def parse_args(args):
    delim, columns = ",", []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-d", "-c"):
            if i + 1 >= len(args):
                raise Usage(f"{a} needs a value")
            value = args[i + 1]
            i += 2
            if a == "-d":
                if value == "\\t":
                    value = "\t"
                if len(value) != 1 or value in "\"\r\n":
                    raise Usage(f"-d takes one character other than a quote or a line end, got {value!r}")
                delim = value
            else:
                columns.append(value)
        else:
            raise Usage(f"unexpected argument {a!r}")
    return delim, columns


# A plain decimal number: ASCII digits, an optional sign, point and exponent (no `_`, no
# other scripts' digits, no inf or nan).
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number(s):
    if not NUMBER.fullmatch(s):
        return None
    n = float(s)
    return n if math.isfinite(n) else None


def tidy(n: float):
    return int(n) if n.is_integer() and abs(n) < 2**53 else n


def summarize(name, values):
    present = [v for v in values if v != ""]
    out = {
        "column": name,
        "values": len(present),
        "empty": len(values) - len(present),
        "distinct": len(set(present)),
    }
    nums = [number(v) for v in present]
    if present and all(n is not None for n in nums):
        try:
            total = math.fsum(nums)
        except OverflowError:
            total = math.inf
        out.update(min=tidy(min(nums)), max=tidy(max(nums)))
        # A sum past the largest double has no JSON number: null, as does its mean.
        if math.isfinite(total):
            out.update(sum=tidy(round(total, 10)), mean=tidy(round(total / len(nums), 10)))
        else:
            out.update(sum=None, mean=None)
    elif present:
        counts = {}
        for v in present:
            counts[v] = counts.get(v, 0) + 1
        # The first of the most common, in input order (dicts keep insertion order).
        top = max(counts, key=counts.__getitem__)
        out.update(top=top, top_count=counts[top])
    return out


def main(args):
    if args[:1] == ["--describe"]:
        print(json.dumps(CARD, separators=(",", ":")))
        return 0
    if args[:1] in (["--help"], ["-h"]):
        print(f"{NAME} {VERSION} - {CARD['description']}\nusage: {USAGE}")
        for a in CARD["args"]:
            print(f"  {a['flag']:<10}  {a['description']}")
        return 0
    try:
        delim, wanted = parse_args(args)
    except Usage as e:
        print(f"{NAME}: {e}\nusage: {USAGE}", file=sys.stderr)
        return 2
    try:
        raw = sys.stdin.buffer.read()
    except OSError as e:
        print(f"{NAME}: cannot read stdin: {e}", file=sys.stderr)
        return 1
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        print(f"{NAME}: line {line}: invalid UTF-8", file=sys.stderr)
        return 2
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            print(f"{NAME}: no header row", file=sys.stderr)
            return 2
        for c in wanted:
            if c not in header:
                print(f"{NAME}: no column {c!r} (columns: {', '.join(header)})", file=sys.stderr)
                return 2
        columns = [[] for _ in header]
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                print(f"{NAME}: line {reader.line_num}: {len(row)} fields, the header has {len(header)}",
                      file=sys.stderr)
                return 2
            for i, v in enumerate(row):
                columns[i].append(v)
    except csv.Error as e:
        print(f"{NAME}: line {reader.line_num}: {e}", file=sys.stderr)
        return 2
    for name, values in zip(header, columns):
        if not wanted or name in wanted:
            print(json.dumps(summarize(name, values), ensure_ascii=False, separators=(",", ":")))
    return 0


class Run(exports.Run):
    def run(self) -> None:
        try:
            code = main(environment.get_arguments()[1:])
        except BrokenPipeError:
            code = 0
        except Exception as e:  # noqa: BLE001 (an AU says what failed and exits 1)
            print(f"{NAME}: {type(e).__name__}: {e}", file=sys.stderr)
            code = 1
        finish(code)
