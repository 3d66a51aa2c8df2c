"""Submits JOBS no-op tasks one after another, waits for every result, RUNS times after a
warm-up of WARMUP tasks; prints one rate (tasks per second) per run."""

import sys
import time

from tasks import app, noop


def round_trip(jobs):
    start = time.perf_counter()
    results = [noop.delay() for _ in range(jobs)]
    for r in results:
        if r.get(timeout=600) != 0:
            raise SystemExit("a task did not return 0")
    return jobs / (time.perf_counter() - start)


def main():
    jobs, runs, warmup = (int(a) for a in sys.argv[1:4])
    deadline = time.monotonic() + 60
    while not app.control.ping(timeout=0.5):
        if time.monotonic() > deadline:
            raise SystemExit("no Celery worker answered within 60 s")
    round_trip(warmup)
    print(" ".join(f"{round_trip(jobs):.1f}" for _ in range(runs)))


if __name__ == "__main__":
    main()
