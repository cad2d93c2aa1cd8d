"""A worker process for the chaos harness (python -m tests.chaos_worker URL LEASE [APP])."""

from __future__ import annotations

import sys

from qo.app import load_app
from qo.queue import Queue
from qo.settings import Settings
from qo.worker import Worker, WorkerOptions


def main() -> None:
    url, lease = sys.argv[1], float(sys.argv[2])
    app = load_app(sys.argv[3] if len(sys.argv) > 3 else "tests.apps.chaos_app:app")
    queue = Queue.from_url(url, lease_seconds=lease, repair_lease_seconds=lease)
    options = WorkerOptions(concurrency=4, poll_max=0.2, sweep_interval=lease / 2,
                            heartbeat_interval=5.0, grace=1.0)
    Worker(app, queue, options).run()


if __name__ == "__main__":
    main()
    _ = Settings
