"""`python -m devstack run|demo`: what `make run` and `make demo` call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="The whole stack on embedded defaults: PostgreSQL 18 + pgvector, Redis, "
        "worker, maintenance worker, beat, Flower and the metrics exporter.",
    )
    parser.add_argument(
        "mode",
        choices=["run", "demo"],
        help="run: keep running until Ctrl-C; demo: ingest into a fresh database, summarise, stop",
    )
    parser.add_argument(
        "--articles", type=int, default=300, help="sample articles to seed (default 300)"
    )
    args = parser.parse_args(argv)
    if args.articles < 1:
        parser.error("--articles must be at least 1")

    from worker import logs
    from worker.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)

    from devstack.stack import run_stack

    return run_stack(demo=args.mode == "demo", articles=args.articles)


if __name__ == "__main__":
    sys.exit(main())
