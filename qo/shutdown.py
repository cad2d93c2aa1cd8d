"""How a worker process ends: exit codes, and an exit that cannot abort.

Handlers run in daemon threads so that a timeout or a shutdown never waits on
user code. A handler that ignores ``ctx.cancelled`` (or is blocked in a C
call) can therefore still be running when the process ends. CPython then
finalizes the interpreter under it, and a daemon thread that wakes up during
finalization is stopped with ``pthread_exit``; if native frames that cannot
be unwound are on its stack (pydantic-core's ``validate_call`` wraps every
handler call), the process aborts (SIGABRT, exit 134) instead of exiting.

No thread can be made to stop safely from outside, so the process does not
finalize while one lingers: once every write of the worker has settled (its
slots and housekeeper have returned), ``exit_process`` flushes logs and
standard streams and ends the process with ``os._exit``. Only the ``qo``
entry point calls it; an embedding program (or a test runner) keeps control.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

#: The worker stopped after a clean drain (or ``--burst`` found nothing left).
EXIT_OK = 0
#: The worker stopped while handler threads were still running: their tasks
#: were handed back (or failed by their timeout) and their late outcomes are
#: dropped, but the handler code itself did not return when told to stop.
EXIT_ABANDONED = 3


def lingering_threads() -> list[threading.Thread]:
    """Threads other than the main one that are still alive."""
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and t.is_alive()]


def flush_all() -> None:
    for handler in logging.getLogger().handlers + logging.getLogger("qo").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001, S110 - a broken stream must not keep us alive
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110
            pass


def exit_process(code: object) -> None:
    """End the process with ``code``; with ``os._exit`` if any thread lingers.

    Without lingering threads this raises ``SystemExit`` as usual (atexit
    handlers run). With them, interpreter finalization is skipped: it is the
    step that can abort.
    """
    if lingering_threads():
        flush_all()
        os._exit(_as_int(code))
    raise SystemExit(code)


def _as_int(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # SystemExit("message") prints it and exits 1
    sys.stderr.flush()
    return 1
