"""Helpers for testing code that uses qo, and for qo's own tests.

- ``FakeClock``, ``ClockedStore`` (``qo.testing.clock``): a store clock a test
  moves by hand, so delays, retries and leases pass without sleeping;
- ``drain`` (``qo.testing.drain``): run tasks in the calling thread until
  given tasks have ended, or until idle, in bounded rounds;
- ``immediate`` (``qo.testing.immediate``): every task submitted through an
  app runs before ``submit`` returns, on an in-memory queue;
- ``qo.testing.s3server``: a local S3 server (moto) for tests, benchmarks
  and development (imported on its own: it needs moto).
"""

from qo.testing.clock import ClockedStore, FakeClock
from qo.testing.drain import NotDrained, all_terminal, drain
from qo.testing.immediate import ImmediateQueue, immediate

__all__ = ["ClockedStore", "FakeClock", "ImmediateQueue", "NotDrained", "all_terminal",
           "drain", "immediate"]
