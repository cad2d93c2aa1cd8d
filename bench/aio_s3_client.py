"""How the async client's S3 calls were chosen: aiobotocore against boto3 in a thread pool.

``N`` concurrent GETs of a 1 KB object (200 in flight), timed with the
client's CPU per GET and its peak thread count. aiobotocore pins an exact
botocore, so it lives in a virtualenv of its own; run one mode per
interpreter against the same server::

    python -m qo.testing.s3server --port 0 --latency 0.02 --no-serialize
    python -m bench.aio_s3_client threads:16 http://127.0.0.1:PORT 1000
    other-venv/bin/python bench/aio_s3_client.py aio:16 http://127.0.0.1:PORT 1000

Measured on 2 shared cores, 20 ms added per request: 1,000 GETs took 4.5 s
with 16 threads over boto3 and 4.6 s with aiobotocore at 16 connections
(8 threads 4.7 s, 8 connections 5.9 s), 1.9 and 2.0 ms of client CPU per GET.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

BUCKET, KEY, IN_FLIGHT = "measure", "obj", 200


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _report(name: str, n: int, t0: float, c0: float, peak: int) -> None:
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    print(f"{name}: {n} GETs in {wall:.2f} s = {n / wall:.0f}/s, "
          f"CPU {cpu * 1000 / n:.2f} ms/GET, threads peak {peak}")


async def _measure(name: str, n: int, get: Any) -> None:
    gate, peak = asyncio.Semaphore(IN_FLIGHT), [threading.active_count()]

    async def one() -> None:
        async with gate:
            await get()
            peak[0] = max(peak[0], threading.active_count())

    await one()  # connect first
    t0, c0 = time.perf_counter(), _cpu()
    await asyncio.gather(*(one() for _ in range(n)))
    _report(name, n, t0, c0, peak[0])


def threads(endpoint: str, size: int, n: int) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=size))
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.ClientError:
        pass
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"x" * 1024)
    pool = ThreadPoolExecutor(size)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def get() -> None:
            await loop.run_in_executor(
                pool, lambda: s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())

        await _measure(f"boto3 + {size} threads", n, get)

    asyncio.run(main())


def aio(endpoint: str, conns: int, n: int) -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    async def main() -> None:
        config = AioConfig(max_pool_connections=conns)
        async with get_session().create_client("s3", endpoint_url=endpoint, config=config) as s3:
            try:
                await s3.create_bucket(Bucket=BUCKET)
            except s3.exceptions.ClientError:
                pass
            await s3.put_object(Bucket=BUCKET, Key=KEY, Body=b"x" * 1024)

            async def get() -> None:
                answer = await s3.get_object(Bucket=BUCKET, Key=KEY)
                async with answer["Body"] as body:
                    await body.read()

            await _measure(f"aiobotocore, {conns} connections", n, get)

    asyncio.run(main())


def main(argv: list[str]) -> int:
    if len(argv) < 2 or ":" not in argv[0]:
        print("usage: python -m bench.aio_s3_client threads:N|aio:N ENDPOINT [GETS]",
              file=sys.stderr)
        return 2
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    mode, size = argv[0].split(":", 1)
    n = int(argv[2]) if len(argv) > 2 else 1000
    (aio if mode == "aio" else threads)(argv[1], int(size), n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
