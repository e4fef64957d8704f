"""The command line of a real Celery worker, shared by the e2e fixtures and the benchmarks."""

from __future__ import annotations

import sys


def celery_worker_argv(
    queues: str,
    concurrency: int,
    name: str,
    *,
    pool: str = "prefork",
    loglevel: str = "INFO",
    events: bool = False,
) -> list[str]:
    """`python -m celery -A tasks.app worker …` with this interpreter.

    Mingle and gossip only sync with other workers: skipping them saves a second per start.
    """
    argv = [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-Q", queues]
    argv += ["-P", pool, "-c", str(concurrency), f"--loglevel={loglevel}"]
    argv += ["--without-mingle", "--without-gossip", "-n", name]
    return [*argv, "-E"] if events else argv
