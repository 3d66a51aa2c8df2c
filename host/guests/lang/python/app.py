"""The Python probe for the sandbox's tests (host/tests/lang.rs): one behaviour per mode,
named by the first argument. Built by scripts/build-lang-aus.sh; never part of the product.

  net HOST:PORT   socket.create_connection, then urllib.request.urlopen; prints each outcome
  read PATH       prints the file's first line, or the exception
  list PATH       prints the directory's entries, or the exception
  exit N          exits with N (through wasi:cli/exit.exit-with-code)
  spin            loops forever
  grow            allocates 1 MiB at a time, forever
  sleep           sleeps a minute
  raise           raises an exception nothing catches
  fds MIB         opens files in /tmp until it cannot, holding them, then writes MIB MiB to the
                  first and prints what it wrote
"""

import encodings.idna  # noqa: F401  (urllib needs it for host names; bundled only if named)
import os
import socket
import sys
import time
import urllib.request

from wit_world import exports
from wit_world.imports import environment, exit as wasi_exit


def outcome(what, f):
    try:
        f()
        print(f"{what}: OPEN")
    except Exception as e:  # noqa: BLE001 (the probe reports whatever the host answered)
        print(f"{what}: {type(e).__name__}: {e}")


class Run(exports.Run):
    def run(self) -> None:
        args = environment.get_arguments()[1:]
        mode, rest = (args[0], args[1:]) if args else ("", [])
        if mode == "net":
            host, port = rest[0].rsplit(":", 1)
            outcome("socket", lambda: socket.create_connection((host, int(port)), timeout=2))
            outcome("urlopen", lambda: urllib.request.urlopen(f"http://{rest[0]}/", timeout=2))
        elif mode == "read":
            outcome("read", lambda: print(open(rest[0]).readline().rstrip("\n")))
        elif mode == "list":
            outcome("list", lambda: print(sorted(os.listdir(rest[0]))))
        elif mode == "exit":
            sys.stdout.flush()
            wasi_exit.exit_with_code(int(rest[0]))
        elif mode == "spin":
            while True:
                pass
        elif mode == "grow":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        elif mode == "sleep":
            time.sleep(60)
        elif mode == "fds":
            held = []
            try:
                while True:
                    held.append(open(f"/tmp/f{len(held)}", "wb"))
            except OSError as e:
                print(f"held {len(held)}: {e}")
            block = b"x" * (1 << 20)
            for _ in range(int(rest[0])):
                held[0].write(block)
            held[0].flush()
            print(f"wrote {rest[0]} MiB")
        elif mode == "raise":
            raise RuntimeError("the probe raised")
        sys.stdout.flush()
