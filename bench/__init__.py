"""Benchmarks for qo: ``python -m bench [--tiny|--quick|--full] [--backend ...]``.

Runs the scenarios in ``bench.scenarios`` and ``bench.idle_cost`` against a
moto server in its own process (requests counted on the wire by
``qo.testing.s3server``), the local
directory store, the in-process memory store, or a real bucket named by
``QO_BENCH_S3``; prints tables and writes JSON. See ``docs/benchmarks.md``.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from bench.cli import main as _main

    return _main(argv)


__all__ = ["main"]
