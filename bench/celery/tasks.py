"""The Celery side of the end-to-end comparison: a no-op task, results in Redis."""

import os

from celery import Celery

app = Celery("tasks", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
app.conf.update(
    # Like an agw lease: a task is acknowledged only once it finished, so a worker that
    # dies mid-task does not lose it.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task
def noop():
    return 0
