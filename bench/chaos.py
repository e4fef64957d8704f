"""Chaos run: every fault of issue 3 in one run, then every article counted.

One command, its own services, nothing shared (docs/operations.md, "Chaos run"):

- a PRIVATE embedded PostgreSQL 18 + pgvector (data under .data/chaos-pg-<pid>, free
  port, removed at the end), a PRIVATE redis-server (free port, no persistence) and the
  fake OpenAI server (tests/fakes/openai_server.py) in this process, so its knobs can be
  turned while it serves;
- two real Celery workers: "A" (prefork, -c 2: its pool children are the SIGKILL
  victims) and "B" (threads, -c 4 sharing ONE database connection with a 0.2 s pool
  timeout: the pool is exhausted all the time);
- articles inserted in chunks while the workers ingest, each chunk published the way a
  producer does (worker.client.enqueue: one message per chunk, or one per id);
- a stand-in for celery beat publishing embeddings.sweep and embeddings.reconcile every
  2 s (a short EMBED_DRAIN_BUDGET_S; JOB_LEASE_S and JOB_HEARTBEAT_S at their defaults,
  15 s and 5 s, as in production).

Faults, throughout: the API answers ~30% 429 (Retry-After 0.05 s), ~10% 500 and ~5%
slow responses past OPENAI_TIMEOUT_S. At set points of progress: pool children killed
with SIGKILL mid-batch (a child holding an in-flight claim and a connection to the API),
Redis stopped and restarted empty (twice), PostgreSQL restarted (fast, then immediate =
crash recovery), a window in which the API refuses our key, and responses with fewer
vectors than inputs, malformed JSON and vectors of the wrong dimension. A few articles
are bad on purpose: empty text (skipped) and inputs the API rejects with HTTP 400.

Each kill is timed: recovery = from the SIGKILL to the moment every item the killed child
had in flight is claimed again by another process or finished (the lease ran out and the
sweep or the next claim took it back); the target is RECOVERY_TARGET_S (30 s).

When nothing is pending or in flight any more, the run counts every article:
expected = embedded + recorded as failed/skipped with a reason; lost = neither;
duplicated = more than one vector per (article, model), or a vector and a failure;
corrupted = a stored vector that is not the API's vector for the article's text.
Items failed `dimension_mismatch` by the wrong-dimension response are re-driven the way
an operator would (`embedder retry-failed --reason dimension_mismatch`).

    .venv/bin/python bench/chaos.py                      # 5,000 articles
    .venv/bin/python bench/chaos.py --articles 1500 --json out.json

Prints `lost=0 duplicated=0 failed_with_reason=N`, the recovery time of every kill, the
faults injected, and exits 1 when anything is lost, duplicated or corrupted, a failure is
not one of the bad articles, or a kill took longer than RECOVERY_TARGET_S to recover.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import psutil
import psycopg
import redis
from celery import Celery
from pgvector.psycopg import register_vector

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack.sample import sample_articles  # noqa: E402
from devstack.services import LocalPostgres, LocalRedis, free_port  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI, fake_vector  # noqa: E402
from tests.workers import celery_worker_argv  # noqa: E402
from worker import text as textmod  # noqa: E402
from worker.client import QUEUE, enqueue, task_message  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.deps import build_deps  # noqa: E402
from worker.maintenance import migrate  # noqa: E402

DB = "chaos"
MODEL = "text-embedding-3-small"
DIMS = 1536
API_KEY = "sk-chaos-run-key"
ROTATED_KEY = "sk-rotated-somewhere-else"  # what the API wants during the auth window
REJECT_NEEDLE = "CHAOS-REJECT-ME"  # the fake answers 400 for any input containing it
CHUNK = 100  # articles per insert (and per producer message, or one message per id)
WINDOW = 400  # at most this many articles inserted but not yet settled
BEAT_EVERY_S = 2.0
MAX_WORKER_RESTARTS = 5  # more than this is a crash loop, not chaos
POLL_S = 0.25
AUTH_WINDOW_S = 3.0
REDIS_SENTINEL = "chaos:restart-sentinel"  # set before a Redis restart; gone after it
RECOVERY_TARGET_S = 30.0  # a SIGKILLed worker's claims are taken up again within this

T = TypeVar("T")


# -- results ---------------------------------------------------------------------------------


@dataclass
class Faults:
    """What was injected (and what the API answered), for the report line."""

    api_requests: int = 0  # every embeddings request the fake answered (or timed out on)
    sigkill: int = 0
    sigkill_stranded: int = 0  # items in flight in the killed children
    redis_restart: int = 0
    redis_messages_lost: int = 0  # queued + unacked messages gone with each restart
    pg_restart: int = 0
    auth_window: int = 0
    http_401: int = 0
    http_429: int = 0
    http_500: int = 0
    http_400: int = 0
    timeouts: int = 0  # client-side timeouts on slow responses (from the worker logs)
    short: int = 0
    malformed: int = 0
    wrong_dim: int = 0
    redriven: int = 0  # dimension_mismatch items re-driven with `embedder retry-failed`
    pool_timeouts: int = 0  # QueuePool timeouts in the tight worker (from its log)
    publish_failures: int = 0  # producer messages that could not be sent (Redis down)
    beat_failures: int = 0
    # Workers that exited and were started again, as systemd/compose restart policies do
    # (kombu's threads-pool consumer can die on a broker reconnect: "Unrecoverable error").
    worker_restarts: int = 0
    # Workers whose watchdog found their consumer stalled (WORKER_STALL_TIMEOUT_S) and exited.
    stall_exits: int = 0

    def line(self) -> str:
        return "faults: " + " ".join(f"{k}={v}" for k, v in asdict(self).items())


@dataclass
class Outcome:
    expected: int = 0
    embedded: int = 0
    failed_with_reason: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0
    bad_seeded: int = 0
    unexpected_failures: list[int] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    peak_connections: dict[str, int] = field(default_factory=dict)
    # Per SIGKILL: seconds until the killed child's in-flight items were all claimed again
    # or finished (None: not measured before the run ended).
    recovery_s: list[float | None] = field(default_factory=list)
    elapsed_s: float = 0.0
    settled: bool = False
    faults: Faults = field(default_factory=Faults)

    @property
    def ok(self) -> bool:
        return (
            self.settled
            and self.lost == 0
            and self.duplicated == 0
            and self.corrupted == 0
            and not self.unexpected_failures
            and self.failed_with_reason == self.bad_seeded
            and all(r is not None and r <= RECOVERY_TARGET_S for r in self.recovery_s)
        )


class Interrupted(Exception):
    """SIGTERM or SIGINT: unwind through every finally block."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


# -- services --------------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make Settings.from_env() return `settings`."""
    return settings.to_env()


class Worker:
    """One `celery worker` subprocess in its own process group."""

    def __init__(
        self, label: str, settings: Settings, pool: str, concurrency: int, log: Path
    ) -> None:
        self.label = label
        self.name = f"chaos-{label}-{os.getpid()}@{socket.gethostname()}"
        self.log = log
        self.settings, self.pool, self.concurrency = settings, pool, concurrency
        self.start("wb")

    def start(self, mode: str = "ab") -> None:
        settings, pool, concurrency, log = self.settings, self.pool, self.concurrency, self.log
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(settings_env(settings))
        env["PYTHONUNBUFFERED"] = "1"
        with log.open(mode) as out:
            self.proc = subprocess.Popen(
                celery_worker_argv(QUEUE, concurrency, self.name, pool=pool),
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the whole tree
            )

    def wait_ready(self, redis_url: str, timeout: float = 60.0) -> None:
        control = Celery("chaos-control", broker=redis_url, set_as_current=False)
        try:
            deadline = time.monotonic() + timeout
            while True:
                replies = control.control.ping(destination=[self.name], timeout=0.5)
                if any(self.name in reply for reply in replies):
                    return
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {self.label} did not start (see {self.log})")
        finally:
            control.close()

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):  # pool children of a dead parent too
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def retrying(fn: Callable[[], T], timeout: float = 60.0, what: str = "") -> T:
    """fn(), retried while the database or Redis is being restarted under us."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (psycopg.OperationalError, redis.RedisError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up after {timeout:.0f}s: {what}") from None
            time.sleep(0.2)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Progress:
    embedded: int = 0
    failed: int = 0
    open_jobs: int = 0  # pending + in flight
    inserted: int = 0

    @property
    def settled(self) -> int:
        return self.embedded + self.failed


class Chaos:
    """The services, workers and background threads of one run; close() stops them all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pid = os.getpid()
        self.data_root = args.data_root
        self.logs = self.data_root / f"chaos-logs-{self.pid}"
        self.pg = LocalPostgres(self.data_root / f"chaos-pg-{self.pid}", free_port())
        self.redis = LocalRedis(self.data_root / f"chaos-redis-{self.pid}", free_port())
        self.fake = FakeOpenAI(dimensions=DIMS, latency_s=0.02, require_api_key=API_KEY)
        self.workers: list[Worker] = []
        self.faults = Faults()
        self.progress = Progress()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.insert_lock = threading.Lock()  # no insert straddles a PostgreSQL restart
        self.insert_limit = 0  # the inserter stays below this (faults gate the supply)
        self.bad_ids: set[int] = set()
        self.peaks: Counter[str] = Counter()
        self.recoveries: list[float | None] = []  # one per kill, filled in by its watcher
        self.errors: list[BaseException] = []
        self.dsn = ""
        self.redis_url = ""
        self.t0 = time.monotonic()

    # -- setup ---------------------------------------------------------------------------
    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg.start()
        self.pg.create_database(DB)
        self.dsn = self.pg.url(DB)
        self.redis.start()
        self.redis_url = self.redis.url
        self.fake.start()
        self.fake.fault_rates(
            rate_429=0.3, rate_500=0.1, rate_slow=0.05, slow_s=2.0, retry_after=0.05, seed=7
        )
        self.fake.bad_inputs = {REJECT_NEEDLE}
        base = self.settings()
        deps = build_deps(base, application_name="chaos-setup")
        try:
            migrate(deps)  # schema, the model registered, its HNSW index
        finally:
            deps.close()
        print(
            f"PostgreSQL :{self.pg.port} ({self.pg.data_dir}), Redis :{self.redis.port}, "
            f"fake API {self.fake.url}; logs in {self.logs}",
            flush=True,
        )
        self.workers = [
            Worker("a", base, "prefork", 2, self.logs / "worker-a.log"),
            Worker(
                "b",
                replace(base, db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=0.2),
                "threads",
                4,
                self.logs / "worker-b.log",
            ),
        ]
        for w in self.workers:
            w.wait_ready(self.redis_url)

    def settings(self) -> Settings:
        return Settings(
            database_url=self.dsn,
            redis_url=self.redis_url,
            embedding_provider="openai",
            embedding_model=MODEL,
            embedding_dimensions=DIMS,
            openai_api_key=API_KEY,
            openai_base_url=self.fake.url,
            openai_timeout_s=0.75,  # below the fake's slow_s: slow answers time out
            db_pool_size=2,
            db_max_overflow=0,
            db_pool_timeout_s=2.0,
            embed_batch_max=32,
            embed_linger_ms=50,
            embed_drain_budget_s=5.0,
            embed_retry_attempts=6,
            embed_retry_max_wait_s=0.5,
            embed_auth_backoff_s=AUTH_WINDOW_S,
            job_max_attempts=50,
            job_retry_delay_s=1,
            worker_stall_timeout_s=30,  # a consumer that stops consuming is restarted
            reconcile_window_hours=24 * 400,  # the sample's dates span 120 days
            log_level="INFO",
        )

    def spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the main thread
                self.errors.append(exc)
                self.stop_event.set()

        thread = threading.Thread(target=run, name=f"chaos-{name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    # -- background threads --------------------------------------------------------------
    def poll(self) -> None:
        """Progress and peak connections per worker process, every POLL_S seconds."""
        conn: psycopg.Connection[Any] | None = None
        while not self.stop_event.wait(POLL_S):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=2, application_name="chaos-poll"
                    )
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM article_embeddings WHERE model = %(m)s), "
                    "(SELECT count(*) FROM embedding_jobs WHERE model = %(m)s "
                    " AND state IN ('failed', 'skipped')), "
                    "(SELECT count(*) FROM embedding_jobs WHERE model = %(m)s "
                    " AND state IN ('pending', 'in_flight'))",
                    {"m": MODEL},
                ).fetchone()
                assert row is not None
                self.progress.embedded, self.progress.failed, self.progress.open_jobs = map(
                    int, row
                )
                for name, count in conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'embedder-worker:%%' GROUP BY 1"
                ):
                    self.peaks[name] = max(self.peaks[name], int(count))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None  # PostgreSQL is restarting: try again next tick
        if conn is not None:
            conn.close()

    def beat(self) -> None:
        """What celery beat would do, faster: sweep and reconcile every BEAT_EVERY_S."""
        client: redis.Redis[bytes] = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            while not self.stop_event.wait(BEAT_EVERY_S):
                try:
                    for task in ("embeddings.sweep", "embeddings.reconcile"):
                        message = task_message(task, [], {}, expires_s=BEAT_EVERY_S * 5)
                        client.lpush(QUEUE, json.dumps(message))
                except redis.RedisError:
                    self.faults.beat_failures += 1
        finally:
            client.close()

    def insert(self) -> None:
        """Insert articles in chunks and publish their ids, paced by progress and faults."""
        n, bad = self.args.articles, self.args.bad
        client: redis.Redis[bytes] = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        rows = list(self.rows(n - 2 * bad))
        # The bad ones go into the first chunk, among good ones: nothing else in their
        # batches may be lost.
        for i in range(bad):
            rows.insert(3 * i + 1, self.bad_row(i, empty=True))
            rows.insert(3 * i + 2, self.bad_row(i, empty=False))
        try:
            chunk_no = 0
            while self.progress.inserted < n and not self.stop_event.is_set():
                limit = min(self.insert_limit, self.progress.settled + WINDOW)
                if self.progress.inserted >= limit:
                    time.sleep(0.05)
                    continue
                chunk = rows[self.progress.inserted : self.progress.inserted + CHUNK]
                with self.insert_lock:
                    ids = retrying(lambda c=chunk: self.insert_rows(c), what="insert articles")
                if chunk_no == 0:
                    self.bad_ids = {
                        i
                        for i, r in zip(ids, chunk, strict=True)
                        if not textmod.compose(r[2], r[3]) or REJECT_NEEDLE in r[3]
                    }
                self.progress.inserted += len(ids)
                try:
                    # Producers differ: one message per chunk, or one per id.
                    enqueue(ids, client=client, chunk_size=1 if chunk_no % 3 == 2 else CHUNK)
                except redis.RedisError:
                    self.faults.publish_failures += 1  # lost: the reconcile must find them
                chunk_no += 1
        finally:
            client.close()

    def rows(self, count: int) -> Iterator[tuple[Any, ...]]:
        for a in sample_articles(count, seed=11, max_chars=2000):
            yield (a.feed_id, a.user_id, a.title, a.content, list(a.tags), a.published_at)

    def bad_row(self, i: int, *, empty: bool) -> tuple[Any, ...]:
        published = datetime.now(UTC)
        if empty:
            return (1, 1, "", " \n\t " * (i % 3), ["chaos"], published)
        return (
            1,
            1,
            f"Rejected {i}",
            f"The provider refuses this one: {REJECT_NEEDLE} #{i}.",
            ["chaos"],
            published,
        )

    def insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        with psycopg.connect(self.dsn, connect_timeout=2, application_name="chaos-insert") as conn:
            cur = conn.cursor()
            cur.executemany(
                "INSERT INTO articles (feed_id, user_id, title, content, tags, is_read, "
                "published_at) VALUES (%s, %s, %s, %s, %s, false, %s) RETURNING id",
                rows,
                returning=True,
            )
            ids: list[int] = []
            while True:
                got = cur.fetchone()
                assert got is not None
                ids.append(int(got[0]))
                if not cur.nextset():
                    break
            return ids

    # -- faults --------------------------------------------------------------------------
    def kill_mid_batch(self, timeout: float = 20.0) -> None:
        """SIGKILL a pool child of worker A that holds an in-flight claim and talks to the API."""
        worker = self.workers[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            busy = self.claims_by_pid()
            for child in worker.children():
                if not busy.get(child.pid):
                    continue
                try:
                    talking = any(
                        c.raddr and c.raddr.port == self.fake.port and c.status == "ESTABLISHED"
                        for c in child.net_connections(kind="tcp")
                    )
                    if talking:
                        child.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    continue
                if talking:
                    killed_at = time.monotonic()
                    self.faults.sigkill += 1
                    self.faults.sigkill_stranded += busy[child.pid]
                    self.note(f"SIGKILL pool child {child.pid} ({busy[child.pid]} items in flight)")
                    self.time_recovery(child.pid, killed_at)
                    return
            time.sleep(0.02)
        self.note("no pool child was mid-batch: kill skipped")

    def time_recovery(self, pid: int, killed_at: float) -> None:
        """Measure, in a thread, how long the killed child's in-flight items stay stranded.

        Stranded = still in flight under the dead child's claim, or requeued but not yet
        claimed again (claimed_by is overwritten by the next claim; a finished job's row is
        deleted; failed or skipped is finished too).
        """
        slot = len(self.recoveries)
        self.recoveries.append(None)
        worker_id = f"{socket.gethostname()}:{pid}"

        def stranded(ids: list[int] | None) -> tuple[list[int], int]:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                if ids is None:  # the dead child's claims, frozen since the kill
                    rows = conn.execute(
                        "SELECT article_id FROM embedding_jobs "
                        "WHERE model = %s AND claimed_by = %s AND state = 'in_flight'",
                        (MODEL, worker_id),
                    ).fetchall()
                    ids = [int(r[0]) for r in rows]
                row = conn.execute(
                    "SELECT count(*) FROM embedding_jobs WHERE model = %s "
                    "AND article_id = ANY(%s) AND claimed_by = %s "
                    "AND state IN ('in_flight', 'pending')",
                    (MODEL, ids, worker_id),
                ).fetchone()
            return ids, int(row[0]) if row else 0

        def watch() -> None:
            ids, left = retrying(lambda: stranded(None), what="the killed child's claims")
            while left and not self.stop_event.wait(0.1):
                _, left = retrying(lambda: stranded(ids), what="stranded items")
            if left:
                return  # the run ended first: not measured
            took = time.monotonic() - killed_at
            self.recoveries[slot] = took
            self.note(
                f"  the {len(ids)} items of killed child {pid} were taken up again after {took:.1f} s"
            )

        self.spawn(f"recovery-{pid}", watch)

    def claims_by_pid(self) -> dict[int, int]:
        def query() -> dict[int, int]:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                rows = conn.execute(
                    "SELECT claimed_by, count(*) FROM embedding_jobs "
                    "WHERE state = 'in_flight' GROUP BY 1"
                ).fetchall()
            return {int(str(by).rsplit(":", 1)[1]): int(n) for by, n in rows if by}

        return retrying(query, what="in-flight claims")

    def restart_redis(self) -> None:
        """Stop Redis (no persistence) and start it again empty: every message is gone."""
        probe: redis.Redis[bytes] = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            with contextlib.suppress(redis.RedisError):
                self.faults.redis_messages_lost += int(probe.llen(QUEUE)) + int(
                    probe.hlen("unacked")
                )
            # A sentinel, not the key count, tells whether the data went: workers and beat
            # reconnect within milliseconds and write their own keys (kombu bindings, results)
            # before this probe can count them.
            with contextlib.suppress(redis.RedisError):
                probe.set(REDIS_SENTINEL, b"1")
            self.redis.stop()
            time.sleep(1.0)
            self.redis.start()
            survived = bool(probe.exists(REDIS_SENTINEL))
        finally:
            probe.close()
        if survived:
            raise RuntimeError("Redis came back with its data: the restart lost nothing")
        self.faults.redis_restart += 1
        self.note("Redis restarted empty")

    def restart_postgres(self, mode: str) -> None:
        with self.insert_lock:
            self.pg.stop(mode)
            time.sleep(1.0)
            self.pg.start()
        self.faults.pg_restart += 1
        self.note(f"PostgreSQL restarted (stop -m {mode})")

    def auth_window(self) -> None:
        self.fake.require_api_key = ROTATED_KEY
        time.sleep(AUTH_WINDOW_S)
        self.fake.require_api_key = API_KEY
        self.faults.auth_window += 1
        self.note(f"API refused our key for {AUTH_WINDOW_S:g} s")

    def bad_responses(self) -> None:
        for mode, count in (("short", 3), ("malformed", 3), ("wrong_dim", 1)):
            self.fake.next_response_mode(mode, count)  # type: ignore[arg-type]
        self.note("queued 3 short, 3 malformed, 1 wrong-dimension responses")

    def note(self, message: str) -> None:
        p = self.progress
        print(
            f"  [{time.monotonic() - self.t0:6.1f}s {p.settled:>6}/{self.args.articles}] {message}",
            flush=True,
        )

    # -- the run -------------------------------------------------------------------------
    def run(self) -> Outcome:
        n = self.args.articles
        schedule: list[tuple[float, str, Callable[[], None]]] = [
            (0.04, "kill", self.kill_mid_batch),
            (0.10, "auth", self.auth_window),
            (0.18, "kill", self.kill_mid_batch),
            (0.25, "redis", self.restart_redis),
            (0.33, "responses", self.bad_responses),
            (0.42, "postgres", lambda: self.restart_postgres("fast")),
            (0.50, "kill", self.kill_mid_batch),
            (0.60, "redis", self.restart_redis),
            (0.70, "kill", self.kill_mid_batch),
            (0.80, "postgres", lambda: self.restart_postgres("immediate")),
            (0.88, "kill", self.kill_mid_batch),
        ]
        self.t0 = time.monotonic()
        self.insert_limit = int(schedule[0][0] * n) + CHUNK
        for name, target in (("poll", self.poll), ("beat", self.beat), ("insert", self.insert)):
            self.spawn(name, target)
        for i, (at, _name, fault) in enumerate(schedule):
            self.wait(lambda at=at: self.progress.settled >= at * n, what=f"{at:.0%} settled")
            fault()
            following = schedule[i + 1][0] if i + 1 < len(schedule) else 1.0
            # Keep work outstanding for the next fault: supply up to a little past it.
            self.insert_limit = min(n, int(following * n) + WINDOW)
        self.insert_limit = n
        self.note("all faults injected; waiting for the run to settle")
        settled = self.settle()
        elapsed = time.monotonic() - self.t0
        self.stop_event.set()
        for thread in self.threads:
            thread.join(10)
        outcome = self.count()
        outcome.settled = settled
        outcome.elapsed_s = elapsed
        outcome.recovery_s = [None if r is None else round(r, 1) for r in self.recoveries]
        return outcome

    def wait(self, predicate: Callable[[], bool], *, what: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.errors:
                raise RuntimeError(f"a driver thread failed: {self.errors[0]!r}")
            for w in self.workers:
                if w.proc.poll() is not None:
                    self.restart(w)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no progress: timed out waiting for {what}")
            time.sleep(0.05)

    def restart(self, w: Worker) -> None:
        """Start an exited worker again, as a process supervisor would (bounded)."""
        if self.faults.worker_restarts >= MAX_WORKER_RESTARTS:
            raise RuntimeError(f"worker {w.label} keeps exiting (see {w.log})")
        self.faults.worker_restarts += 1
        self.note(f"worker {w.label} exited (rc {w.proc.returncode}); restarting it")
        w.start()

    def settle(self) -> bool:
        """Wait until nothing is open and every article has a vector or a recorded failure."""
        deadline = time.monotonic() + self.args.settle_timeout
        while time.monotonic() < deadline:
            self.wait(lambda: self.progress.inserted >= self.args.articles, what="all inserted")
            if self.unaccounted() == 0 and self.redrive_dimension_mismatch() == 0:
                return True
            time.sleep(0.5)
        return False

    def unaccounted(self) -> int:
        """Jobs still open plus articles with neither a vector nor a job."""

        def query() -> int:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM embedding_jobs WHERE model = %(m)s "
                    "        AND state IN ('pending', 'in_flight')) "
                    "     + (SELECT count(*) FROM articles a WHERE NOT EXISTS "
                    "        (SELECT 1 FROM article_embeddings e WHERE e.article_id = a.id "
                    "         AND e.model = %(m)s) AND NOT EXISTS (SELECT 1 FROM embedding_jobs j "
                    "         WHERE j.article_id = a.id AND j.model = %(m)s))",
                    {"m": MODEL},
                ).fetchone()
            return int(row[0]) if row else 0

        return retrying(query, what="unaccounted articles")

    def redrive_dimension_mismatch(self) -> int:
        """The operator's answer to `failed dimension_mismatch` (docs/operations.md)."""
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(settings_env(self.settings()))
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "retry-failed", "--reason", "dimension_mismatch"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = re.search(r"re-drove (\d+)", done.stdout)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"embedder retry-failed failed: {done.stderr.strip()[-500:]}")
        count = int(found.group(1))
        if count:
            self.faults.redriven += count
            self.note(f"embedder retry-failed --reason dimension_mismatch: {count} items")
        return count

    # -- counting ------------------------------------------------------------------------
    def count(self) -> Outcome:
        out = Outcome(faults=self.faults, bad_seeded=len(self.bad_ids))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            register_vector(conn)
            row = conn.execute(
                """
                SELECT count(*),
                       count(*) FILTER (WHERE e.article_id IS NOT NULL),
                       count(*) FILTER (WHERE e.article_id IS NULL
                                        AND j.state IN ('failed', 'skipped')
                                        AND COALESCE(j.reason, '') <> ''),
                       count(*) FILTER (WHERE e.article_id IS NULL
                                        AND (j.state IS NULL
                                             OR j.state NOT IN ('failed', 'skipped')
                                             OR COALESCE(j.reason, '') = '')),
                       count(*) FILTER (WHERE e.article_id IS NOT NULL
                                        AND j.state IN ('failed', 'skipped'))
                FROM articles a
                LEFT JOIN article_embeddings e ON e.article_id = a.id AND e.model = %(m)s
                LEFT JOIN embedding_jobs j ON j.article_id = a.id AND j.model = %(m)s
                """,
                {"m": MODEL},
            ).fetchone()
            assert row is not None
            out.expected, out.embedded, out.failed_with_reason, out.lost, both = map(int, row)
            dupes = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM article_embeddings "
                "GROUP BY article_id, model HAVING count(*) > 1) d"
            ).fetchone()
            out.duplicated = both + (int(dupes[0]) if dupes else 0)
            failed = conn.execute(
                "SELECT article_id, state, reason FROM embedding_jobs "
                "WHERE model = %s AND state IN ('failed', 'skipped')",
                (MODEL,),
            ).fetchall()
            out.reasons = dict(Counter(f"{state}:{reason}" for _, state, reason in failed))
            out.unexpected_failures = sorted(r[0] for r in failed if r[0] not in self.bad_ids)
            with conn.transaction():  # a server-side cursor lives in a transaction
                cur = conn.cursor(name="vectors")  # server-side: never all vectors in memory
                cur.itersize = 500
                cur.execute(
                    "SELECT a.title, a.content, e.embedding FROM articles a "
                    "JOIN article_embeddings e ON e.article_id = a.id AND e.model = %s",
                    (MODEL,),
                )
                max_tokens = self.settings().embed_input_max_tokens
                for title, content, raw in cur:
                    stored = raw.to_numpy() if hasattr(raw, "to_numpy") else np.asarray(raw)
                    prepared = textmod.prepare(textmod.compose(title, content), max_tokens)
                    expected = fake_vector(prepared.text, DIMS)
                    if stored.shape != expected.shape or not np.allclose(
                        stored, expected, atol=1e-6
                    ):
                        out.corrupted += 1
                cur.close()
        statuses = Counter(r.status for r in self.fake.requests)
        self.faults.http_401, self.faults.http_429 = statuses[401], statuses[429]
        self.faults.http_500, self.faults.http_400 = statuses[500], statuses[400]
        with self.fake._lock:  # responses still queued were never served
            left = Counter(self.fake._modes)
        self.faults.short = 3 - left["short"]
        self.faults.malformed = 3 - left["malformed"]
        self.faults.wrong_dim = 1 - left["wrong_dim"]
        logs = {w.label: w.log.read_text(errors="replace") for w in self.workers}
        self.faults.api_requests = self.fake.request_count
        self.faults.timeouts = sum(text.count("APITimeoutError") for text in logs.values())
        self.faults.stall_exits = sum(
            text.count("tasks.watchdog: stalled: ") for text in logs.values()
        )
        # One per task that waited out DB_POOL_TIMEOUT_S (tracebacks repeat the message).
        self.faults.pool_timeouts = len(
            re.findall(r"(?:retry: Retry in|raised unexpected).*QueuePool limit", logs["b"])
        )
        out.peak_connections = self.peak_connections()
        return out

    def peak_connections(self) -> dict[str, int]:
        """Most connections one worker process held at once, per worker (limits in the doc)."""
        by_worker: dict[str, int] = {}
        tight = self.workers[1].proc.pid
        for name, peak in self.peaks.items():
            pid = int(name.rsplit(":", 1)[1])
            label = "b" if pid == tight else "a"
            by_worker[label] = max(by_worker.get(label, 0), peak)
        return by_worker

    # -- teardown ------------------------------------------------------------------------
    def close(self, keep_logs: bool) -> None:
        self.stop_event.set()
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop()
        for thread in self.threads:
            thread.join(5)
        with contextlib.suppress(Exception):
            self.fake.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()
        with contextlib.suppress(Exception):
            self.pg.stop("immediate")
        shutil.rmtree(self.pg.data_dir, ignore_errors=True)
        shutil.rmtree(self.redis.data_dir, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self.logs, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--articles", type=int, default=5000)
    p.add_argument("--bad", type=int, default=5, help="empty-text and rejected articles, each")
    p.add_argument("--settle-timeout", type=float, default=300.0, metavar="S")
    p.add_argument("--json", type=Path, default=None, help="also write the outcome here")
    p.add_argument("--keep-logs", action="store_true", help="keep worker logs after a success")
    args = p.parse_args(argv)
    args.data_root = (REPO / ".data").resolve()
    if args.articles < 200 or args.bad < 1 or 3 * args.bad > CHUNK:
        p.error("--articles must be at least 200 and --bad between 1 and 33")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    chaos = Chaos(args)
    outcome: Outcome | None = None
    try:
        chaos.start()
        print(f"== chaos run: {args.articles:,} articles, {os.cpu_count()} cores ==")
        outcome = chaos.run()
    except Interrupted as exc:
        print(f"interrupted ({exc}): stopping everything", file=sys.stderr)
        return 130
    finally:
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        chaos.close(keep_logs=args.keep_logs or outcome is None or not outcome.ok)
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(
        f"lost={outcome.lost} duplicated={outcome.duplicated} "
        f"failed_with_reason={outcome.failed_with_reason}"
    )
    print(
        f"corrupted={outcome.corrupted} expected={outcome.expected} embedded={outcome.embedded} "
        f"bad_seeded={outcome.bad_seeded} unexpected_failures={len(outcome.unexpected_failures)} "
        f"settled={outcome.settled} elapsed_s={outcome.elapsed_s:.1f}"
    )
    recovered = [r for r in outcome.recovery_s if r is not None]
    print(
        f"recovery after SIGKILL (s): {outcome.recovery_s} "
        f"max={max(recovered, default=0.0):.1f} target={RECOVERY_TARGET_S:g}"
    )
    print(outcome.faults.line())
    print(
        f"failures by reason: {outcome.reasons}; peak DB connections per process: "
        f"{outcome.peak_connections} (limits: a=2, b=1)"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(outcome), indent=2, default=str))
    if not outcome.ok:
        print(f"FAILED: see the logs in {chaos.logs}", file=sys.stderr)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
