"""A worker process for the chaos harness (python -m tests.chaos_worker URL LEASE)."""

from __future__ import annotations

import sys

from qo.queue import Queue
from qo.settings import Settings
from qo.worker import Worker, WorkerOptions
from tests.apps.chaos_app import app


def main() -> None:
    url, lease = sys.argv[1], float(sys.argv[2])
    queue = Queue.from_url(url, lease_seconds=lease, repair_lease_seconds=lease)
    options = WorkerOptions(concurrency=4, poll_max=0.2, sweep_interval=lease / 2,
                            heartbeat_interval=5.0, grace=1.0)
    Worker(app, queue, options).run()


if __name__ == "__main__":
    main()
    _ = Settings
