"""Ingest benchmark: this worker end to end against the database's raw limit and a naive loop.

One command, one process tree, one run (docs/benchmarks.md, "## Ingest"):

- an embedded PostgreSQL 18 + pgvector (data under .data/bench-pg, free port; a server
  already running on that data directory is reused and left running), a scratch database
  migrated with the project's migrations, Redis (REDIS_URL, else 127.0.0.1:6379 db 11,
  flushed; a private redis-server when none answers), N sample articles (devstack.sample,
  several languages, ~4.5 KB) loaded with COPY;
- the local OpenAI-compatible server (tests/fakes/openai_server.py) as a separate process
  with the configured latency; its own ceiling is measured first (0 ms, 64-input requests,
  2 client threads); API requests and inputs per request are what it received;
- (a) a real Celery worker (`celery -A tasks.app worker -Q embeddings -c C`) fed by
  worker.client.enqueue, timed from the first message published to the last vector
  committed (count polled every 0.2 s);
- (b) the raw limit: binary COPY of the same vectors (the fake's fake_vector of the same
  text) into the same table with the same index, from C writer processes;
- (c) a naive baseline: one API request and one INSERT … ON CONFLICT transaction per
  article, in process, on a subset, extrapolated to articles/s.

Every figure is a ratio against a baseline measured in the same run: the machine is shared.

    .venv/bin/python bench/ingest.py                                  # 20k articles, 100 ms
    .venv/bin/python bench/ingest.py --articles 5000 --latency-ms 0
    .venv/bin/python bench/ingest.py --articles 5000 --no-index       # outcome 3
    .venv/bin/python bench/ingest.py --articles 5000 --backfill       # outcome 4
    .venv/bin/python bench/ingest.py --concurrency 1,2,4 --batch-max 64,256   # sweeps
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openai
import psutil
import psycopg
import redis
from pgvector.psycopg import register_vector

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack.sample import sample_articles  # noqa: E402
from devstack.services import (  # noqa: E402
    LocalPostgres,
    LocalRedis,
    free_port,
    local_build_workers,
    redis_answers,
)
from tests.fakes.openai_server import FakeOpenAI, fake_vector  # noqa: E402
from tests.workers import celery_worker_argv  # noqa: E402
from worker import hnsw, maintenance  # noqa: E402
from worker import text as textmod  # noqa: E402
from worker.client import QUEUE, TASK_EMBED_ARTICLES, enqueue, task_message  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.deps import build_deps  # noqa: E402
from worker.maintenance import migrate  # noqa: E402
from worker.repository import ModelInfo  # noqa: E402

DB = "bench_ingest"
MODEL = "text-embedding-3-small"
BACKFILL_MODEL = "text-embedding-3-small-backfill"
DIMS = 1536
WORKER_APP_PREFIX = "embedder-worker"
POLL_S = 0.2
STALL_S = 180.0  # no new vector for this long: the run is broken, stop it
COPY_CHUNK = 1000  # rows per COPY transaction in (b)

_UPSERT = (
    "INSERT INTO article_embeddings "
    "(article_id, published_at, model, embedding, content_hash, token_count) "
    "VALUES (%s, %s, %s, %b, %s, %s) "
    "ON CONFLICT (article_id, model) DO UPDATE SET embedding = EXCLUDED.embedding, "
    "content_hash = EXCLUDED.content_hash, token_count = EXCLUDED.token_count, updated_at = now()"
)
_COPY = (
    "COPY article_embeddings (article_id, published_at, model, embedding, content_hash, "
    "token_count) FROM STDIN WITH (FORMAT BINARY)"
)


# -- results ---------------------------------------------------------------------------------


@dataclass
class Usage:
    """What a monitored phase cost: peaks and CPU (cores busy on average) per component."""

    wall_s: float = 0.0
    peak_worker_conns: int = 0
    peak_db_conns: int = 0
    peak_worker_rss_mb: float = 0.0
    first_worker_rss_mb: float = 0.0
    last_worker_rss_mb: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU-seconds per component
    machine_busy: float = 0.0  # fraction of all cores busy (everyone's load, not just ours)


@dataclass
class Result:
    label: str
    articles: int
    seconds: float
    rate: float
    extrapolated: bool = False
    concurrency: int = 0
    batch_max: int = 0
    rep: int = 0  # which repetition (--repeat): (a) is compared with the (b) of the same one
    requests: int = 0  # POST /v1/embeddings the fake API received during the phase
    inputs: int = 0  # inputs in those requests
    failed: int = 0
    mean_batch: float = 0.0  # inputs per request
    index_build_s: float = 0.0
    usage: Usage | None = None
    note: str = ""


# -- monitoring ------------------------------------------------------------------------------


def _tree(root: psutil.Process | None) -> list[psutil.Process]:
    if root is None:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Monitor(threading.Thread):
    """Samples pg_stat_activity, RSS and CPU of each component every POLL_S seconds."""

    def __init__(
        self, dsn: str, roots: dict[str, Callable[[], list[psutil.Process]]], worker: str
    ) -> None:
        super().__init__(name="bench-monitor", daemon=True)
        self.dsn, self.roots, self.worker = dsn, roots, worker
        self.usage = Usage()
        self._stop_event = threading.Event()
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}
        self._t0 = time.monotonic()
        self._machine_first = psutil.cpu_times()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="bench-monitor") as conn:
            self._sample(conn)
            while not self._stop_event.wait(POLL_S):
                self._sample(conn)
            self._sample(conn)

    def _sample(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE application_name LIKE %s), "
            "count(*) FILTER (WHERE application_name <> 'bench-monitor') "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'",
            (WORKER_APP_PREFIX + "%",),
        ).fetchone()
        assert row is not None
        u = self.usage
        u.peak_worker_conns = max(u.peak_worker_conns, int(row[0]))
        u.peak_db_conns = max(u.peak_db_conns, int(row[1]))
        for name, root_of in self.roots.items():
            rss = 0
            for proc in root_of():
                try:
                    cpu = proc.cpu_times()
                    total = cpu.user + cpu.system
                    if name == self.worker:
                        rss += proc.memory_info().rss
                except psutil.Error:
                    continue
                # A process first seen now started during the phase or is the root: the
                # first sample is its baseline (a short-lived backend's CPU before its first
                # sample is lost; POLL_S bounds that loss).
                self._cpu_first.setdefault(proc.pid, total)
                self._cpu_last[proc.pid] = (name, total)
            if name == self.worker and rss:
                mb = rss / 2**20
                u.first_worker_rss_mb = u.first_worker_rss_mb or mb
                u.last_worker_rss_mb = mb
                u.peak_worker_rss_mb = max(u.peak_worker_rss_mb, mb)

    def stop(self) -> Usage:
        """Stop sampling (idempotent) and return the phase's usage."""
        if self._stop_event.is_set():
            return self.usage
        self._stop_event.set()
        if self.is_alive():
            self.join(10)
        u = self.usage
        u.wall_s = time.monotonic() - self._t0
        per: dict[str, float] = {}
        for pid, (name, last) in self._cpu_last.items():
            per[name] = per.get(name, 0.0) + last - self._cpu_first.get(pid, last)
        u.cpu_s = per
        u.cpu_cores = {k: v / u.wall_s for k, v in per.items()} if u.wall_s else {}
        now = psutil.cpu_times()
        busy = sum(
            getattr(now, f) - getattr(self._machine_first, f)
            for f in ("user", "system", "nice", "irq", "softirq")
        )
        idle = sum(getattr(now, f) - getattr(self._machine_first, f) for f in ("idle", "iowait"))
        u.machine_busy = busy / (busy + idle) if busy + idle else 0.0
        return u


# -- services --------------------------------------------------------------------------------


def start_postgres(data_dir: Path) -> tuple[LocalPostgres, bool]:
    """(server, started by us); a server already running on this data directory is reused."""
    pidfile = data_dir / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = pidfile.read_text().splitlines()
        if psutil.pid_exists(int(lines[0])):
            running = LocalPostgres(data_dir, int(lines[3]))
            if running.is_running():
                return running, False
    server = LocalPostgres(data_dir, free_port())
    server.start()
    return server, True


def start_redis(args: argparse.Namespace) -> tuple[str, LocalRedis | None]:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/11"
    if redis_answers(url):
        return url, None
    private = LocalRedis(args.data_root / "bench-redis", free_port())
    private.start()
    return f"redis://127.0.0.1:{private.port}/11", private


class FakeServer:
    """tests/fakes/openai_server.py's FakeOpenAI in its own process (it must not share our
    GIL), asked over a pipe how many requests it has received."""

    def __init__(self, latency_ms: float, log: Path) -> None:
        self.log = log
        spawn = mp.get_context("spawn")
        self._conn, child = spawn.Pipe()
        self.proc = spawn.Process(
            target=_serve_fake, args=(latency_ms, str(log), child), name="bench-fake-api"
        )
        self.proc.start()
        child.close()
        try:
            if not self._conn.poll(60):
                raise RuntimeError(f"the fake OpenAI server did not start (see {log})")
            self.port: int = self._conn.recv()
        except (EOFError, OSError, RuntimeError):
            self.stop()
            raise RuntimeError(f"the fake OpenAI server did not start (see {log})") from None
        assert self.proc.pid is not None
        self.process = psutil.Process(self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def counts(self) -> tuple[int, int]:
        """(POST /v1/embeddings requests, inputs in them) received so far, whatever the answer."""
        self._conn.send("counts")
        requests, inputs = self._conn.recv()
        return int(requests), int(inputs)

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self._conn.close()


def _serve_fake(latency_ms: float, log: str, conn: Any) -> None:
    """The fake server's process: serve until told to stop (or the bench is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the bench stops us in its finally
    with (
        open(log, "a", buffering=1) as errors,
        contextlib.redirect_stderr(errors),  # the server's tracebacks, if any
        FakeOpenAI(dimensions=DIMS, latency_s=latency_ms / 1000) as fake,
    ):
        conn.send(fake.port)
        while True:
            try:
                command = conn.recv()
            except EOFError:  # the bench exited without stopping us
                break
            if command == "stop":
                break
            conn.send((fake.request_count, fake.input_count))


def fake_ceiling(texts: Sequence[str], log: Path, seconds: float = 3.0) -> float:
    """Inputs/s the fake serves at 0 ms: 64-input base64 requests from 2 threads."""
    server = FakeServer(0.0, log)
    counts = [0, 0]
    try:

        def client(slot: int) -> None:
            offset = slot * 64
            bodies = [
                json.dumps(
                    {
                        "model": MODEL,
                        "input": list(texts[(offset + k * 128) % len(texts) :][:64]),
                        "encoding_format": "base64",
                        "dimensions": DIMS,
                    }
                ).encode()
                for k in range(8)
            ]
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            end = time.monotonic() + seconds
            k = 0
            while time.monotonic() < end:
                conn.request(
                    "POST",
                    "/v1/embeddings",
                    body=bodies[k % len(bodies)],
                    headers={"Content-Type": "application/json"},
                )
                reply = conn.getresponse()
                reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"the fake answered HTTP {reply.status}")
                counts[slot] += 64
                k += 1
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) / (time.monotonic() - started)
    finally:
        server.stop()


_LIVE: set[Worker] = set()  # stopped in main()'s finally whatever happened


class Worker:
    """A real Celery worker subprocess with the benchmark's settings in its environment."""

    def __init__(
        self, env: dict[str, str], concurrency: int, log: Path, redis_client: redis.Redis[bytes]
    ) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            celery_worker_argv(QUEUE, concurrency, f"bench-{os.getpid()}@%h", loglevel="WARNING"),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,  # its own process group: stop() ends the whole tree
        )
        _LIVE.add(self)
        self.process = psutil.Process(self.proc.pid)
        try:
            # Ready = consuming: an empty intake message (validated, records nothing)
            # leaves the queue once the consumer is up and the pool has forked.
            redis_client.lpush(QUEUE, json.dumps(task_message(TASK_EMBED_ARTICLES, [[]])))
            deadline = time.monotonic() + 60
            while redis_client.llen(QUEUE):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the Celery worker did not start consuming (see {log})")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _LIVE.discard(self)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


# -- database helpers ------------------------------------------------------------------------


def settings_for(
    url: str,
    redis_url: str,
    api_url: str,
    batch_max: int = 256,
    hnsw: tuple[int, int] | None = None,
    build_workers: int = Settings.maintenance_parallel_workers,
) -> Settings:
    """The worker's settings for the bench; ``hnsw`` = (m, ef_construction), else the defaults."""
    m, ef = hnsw or (Settings.hnsw_m, Settings.hnsw_ef_construction)
    return Settings(
        database_url=url,
        redis_url=redis_url,
        embedding_provider="openai",
        embedding_model=MODEL,
        embedding_dimensions=DIMS,
        openai_api_key="x",
        openai_base_url=api_url,
        embed_batch_max=batch_max,
        db_statement_timeout_ms=0,
        hnsw_m=m,
        hnsw_ef_construction=ef,
        maintenance_parallel_workers=build_workers,
    )


def load_articles(dsn: str, count: int) -> list[int]:
    """COPY `count` sample articles into `articles`; return their ids in order."""
    cols = "feed_id, user_id, title, content, tags, is_read, published_at"
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY articles ({cols}) FROM STDIN") as copy:
            copy.set_types(["int8", "int8", "text", "text", "text[]", "bool", "timestamptz"])
            for a in sample_articles(count, seed=6):
                copy.write_row(
                    (
                        a.feed_id,
                        a.user_id,
                        a.title,
                        a.content,
                        list(a.tags),
                        a.is_read,
                        a.published_at,
                    )
                )
        conn.execute("ANALYZE articles")
        conn.commit()
        return [r[0] for r in conn.execute("SELECT id FROM articles ORDER BY id")]


def reset_embeddings(dsn: str) -> None:
    """Empty vectors and jobs (indexes stay, empty), then checkpoint so phases start alike."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE article_embeddings, embedding_jobs")
        conn.execute("CHECKPOINT")


def drop_index(dsn: str, model: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP INDEX IF EXISTS {hnsw.index_name(model)}")


def count_vectors(conn: psycopg.Connection[Any], model: str) -> tuple[int, int]:
    """(vectors stored, jobs failed or skipped) for `model`."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM article_embeddings WHERE model = %(m)s), "
        "(SELECT count(*) FROM embedding_jobs WHERE model = %(m)s "
        "AND state IN ('failed', 'skipped'))",
        {"m": model},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def index_size_mb(dsn: str, model: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pg_relation_size(to_regclass(%s))", (hnsw.index_name(model),)
        ).fetchone()
    return (row[0] or 0) / 2**20 if row else 0.0


# -- (a) this worker -------------------------------------------------------------------------


def run_worker(
    ctx: Context, concurrency: int, batch_max: int, model: str | None, label: str
) -> Result:
    target = model or MODEL
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "DATABASE_URL": ctx.dsn,
            "REDIS_URL": ctx.redis_url,
            "EMBEDDING_PROVIDER": "openai",
            "OPENAI_BASE_URL": ctx.fake.url,
            "OPENAI_API_KEY": "x",
            "EMBEDDING_MODEL": MODEL,
            "EMBEDDING_DIMENSIONS": str(DIMS),
            "EMBED_BATCH_MAX": str(batch_max),
            "DB_POOL_SIZE": "1",
            "DB_MAX_OVERFLOW": "1",
            "WORKER_CONCURRENCY": str(concurrency),
            "LOG_LEVEL": "WARNING",
        }
    )
    ctx.redis.flushdb()
    slug = "".join(ch if ch.isalnum() else "-" for ch in label).strip("-")
    worker = Worker(env, concurrency, ctx.logs / f"worker-{slug}.log", ctx.redis)
    monitor = Monitor(
        ctx.dsn,
        {
            "worker": lambda: _tree(worker.process),
            "fake": lambda: _tree(ctx.fake.process),
            "postgres": lambda: _tree(ctx.pg_root()),
        },
        "worker",
    )
    before = ctx.fake.counts()
    try:
        monitor.start()
        with psycopg.connect(ctx.dsn, autocommit=True, application_name="bench-poll") as conn:
            started = time.monotonic()
            enqueue(ctx.ids, model, client=ctx.redis, chunk_size=1 if ctx.one_per_message else 1000)
            done, failed, last_change, seen = 0, 0, started, -1
            while done + failed < len(ctx.ids):
                time.sleep(POLL_S)
                done, failed = count_vectors(conn, target)
                now = time.monotonic()
                if done + failed != seen:
                    seen, last_change = done + failed, now
                if now - last_change > STALL_S or worker.proc.poll() is not None:
                    raise RuntimeError(
                        f"{label}: stuck at {done}/{len(ctx.ids)} vectors (see {worker.log})"
                    )
            elapsed = time.monotonic() - started
        usage = monitor.stop()
    finally:
        worker.stop()
        monitor.stop()
    # Counted once the worker has exited: every request it sent has been received.
    requests, inputs = _since(ctx.fake, before)
    return Result(
        label=label,
        articles=done,
        seconds=elapsed,
        rate=done / elapsed,
        concurrency=concurrency,
        batch_max=batch_max,
        requests=requests,
        inputs=inputs,
        failed=failed,
        mean_batch=inputs / requests if requests else 0.0,
        usage=usage,
    )


def _since(fake: FakeServer, before: tuple[int, int]) -> tuple[int, int]:
    """(requests, inputs) the fake API received since it reported `before`."""
    requests, inputs = fake.counts()
    return requests - before[0], inputs - before[1]


# -- (b) raw binary COPY ---------------------------------------------------------------------


def _copy_writer(
    dsn: str, model: str, ids: list[int], barrier: Any, done: Any, max_tokens: int
) -> None:
    """One writer process: build its rows (untimed), wait for the others, COPY them."""
    with psycopg.connect(dsn, application_name="bench-copy") as conn:
        register_vector(conn)
        rows: list[tuple[Any, ...]] = []
        fetched = conn.execute(
            "SELECT id, published_at, title, content FROM articles WHERE id = ANY(%s) ORDER BY id",
            (ids,),
        ).fetchall()
        conn.commit()
        for article_id, published_at, title, content in fetched:
            composed = textmod.compose(title, content)
            prepared = textmod.prepare(composed, max_tokens)
            rows.append(
                (
                    article_id,
                    published_at,
                    model,
                    fake_vector(prepared.text, DIMS),
                    textmod.content_hash(model, composed),
                    prepared.token_bound,
                )
            )
        barrier.wait()
        with conn.cursor() as cur:
            for start in range(0, len(rows), COPY_CHUNK):
                with cur.copy(_COPY) as copy:
                    copy.set_types(["int8", "timestamptz", "text", "vector", "bytea", "int4"])
                    for row in rows[start : start + COPY_CHUNK]:
                        copy.write_row(row)
                conn.commit()
    done.put(time.monotonic())


def run_raw_copy(ctx: Context, writers: int) -> Result:
    spawn = mp.get_context("spawn")
    barrier = spawn.Barrier(writers + 1)
    done: Any = spawn.Queue()
    shares = [ctx.ids[i::writers] for i in range(writers)]
    procs = [
        spawn.Process(
            target=_copy_writer,
            args=(ctx.dsn, MODEL, share, barrier, done, ctx.settings.embed_input_max_tokens),
        )
        for share in shares
    ]
    for p in procs:
        p.start()
    writers_ps = [psutil.Process(p.pid) for p in procs if p.pid is not None]
    monitor = Monitor(
        ctx.dsn,
        {"writers": lambda: writers_ps, "postgres": lambda: _tree(ctx.pg_root())},
        "",
    )
    barrier.wait(timeout=600)
    started = time.monotonic()
    monitor.start()
    ends = [done.get(timeout=3600) for _ in procs]
    usage = monitor.stop()
    for p in procs:
        p.join(30)
    if any(p.exitcode for p in procs):
        raise RuntimeError("a COPY writer failed")
    elapsed = max(ends) - started
    with psycopg.connect(ctx.dsn) as conn:
        stored, _ = count_vectors(conn, MODEL)
    return Result(
        label=f"(b) raw COPY, {writers} writer(s)",
        articles=stored,
        seconds=elapsed,
        rate=stored / elapsed,
        concurrency=writers,
        usage=usage,
    )


# -- (c) naive loop --------------------------------------------------------------------------


def run_naive(ctx: Context, count: int) -> Result:
    """One request and one transaction per article, in process (no batching, no pipelining)."""
    ids = ctx.ids[:count]
    client = openai.OpenAI(api_key="x", base_url=ctx.fake.url, max_retries=0, timeout=30)
    before = ctx.fake.counts()
    with psycopg.connect(ctx.dsn, application_name="bench-naive") as conn:
        register_vector(conn)
        started = time.monotonic()
        for article_id in ids:
            row = conn.execute(
                "SELECT published_at, title, content FROM articles WHERE id = %s", (article_id,)
            ).fetchone()
            assert row is not None
            composed = textmod.compose(row[1], row[2])
            prepared = textmod.prepare(composed, ctx.settings.embed_input_max_tokens)
            reply = client.embeddings.create(
                model=MODEL, input=[prepared.text], dimensions=DIMS, encoding_format="base64"
            )  # base64 as the worker asks: the baseline differs in batching, nothing else
            raw = reply.data[0].embedding
            vector = np.frombuffer(base64.b64decode(raw), dtype="<f4")  # type: ignore[arg-type]
            conn.execute(
                _UPSERT,
                (
                    article_id,
                    row[0],
                    MODEL,
                    vector,
                    textmod.content_hash(MODEL, composed),
                    prepared.token_bound,
                ),
            )
            conn.commit()
        elapsed = time.monotonic() - started
    client.close()
    requests, inputs = _since(ctx.fake, before)
    return Result(
        label=f"(c) naive loop ({count} articles measured, extrapolated)",
        articles=count,
        seconds=elapsed,
        rate=count / elapsed,
        extrapolated=True,
        concurrency=1,
        batch_max=1,
        requests=requests,
        inputs=inputs,
        mean_batch=inputs / requests if requests else 0.0,
    )


# -- orchestration ---------------------------------------------------------------------------


@dataclass
class Context:
    dsn: str
    redis_url: str
    redis: redis.Redis[bytes]
    fake: FakeServer
    settings: Settings
    ids: list[int]
    pg_root: Callable[[], psutil.Process | None]
    logs: Path
    one_per_message: bool


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def _hnsw(raw: str) -> tuple[int, int]:
    m, _, ef = raw.partition(":")
    return int(m), int(ef)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--articles", type=int, default=20_000)
    p.add_argument("--latency-ms", type=float, default=100.0, help="fake API latency per request")
    p.add_argument(
        "--concurrency", type=_ints, default=[2], help="worker processes = COPY writers (list)"
    )
    p.add_argument("--batch-max", type=_ints, default=[256], help="EMBED_BATCH_MAX (list)")
    p.add_argument("--repeat", type=int, default=1, help="run the (a)/(b) pairs this many times")
    p.add_argument("--one-per-message", action="store_true", help="publish one id per message")
    p.add_argument("--no-index", action="store_true", help="no HNSW index on the target")
    p.add_argument(
        "--backfill",
        action="store_true",
        help="also: a new model with no index, ingest, then build the index once",
    )
    p.add_argument(
        "--naive-articles",
        type=int,
        default=0,
        help="subset for (c); default 1000 at <20 ms latency, else 200",
    )
    p.add_argument(
        "--hnsw",
        type=_hnsw,
        default=None,
        metavar="M:EF",
        help="HNSW m:ef_construction of the target's index (default: the worker's defaults)",
    )
    p.add_argument(
        "--build-workers",
        type=int,
        default=local_build_workers(),
        help="MAINTENANCE_PARALLEL_WORKERS for the --backfill build (default: cores - 1, "
        "as `make run` sets it: the bench's PostgreSQL shares this machine's cores)",
    )
    p.add_argument("--skip-raw", action="store_true")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--pg-dir", type=Path, default=REPO / ".data" / "bench-pg")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.data_root = REPO / ".data"
    args.pg_dir = args.pg_dir.resolve()  # the server chdirs into it: relative paths break
    if args.articles < 1:
        p.error("--articles must be positive")
    return args


def _pg_root(data_dir: Path) -> Callable[[], psutil.Process | None]:
    cached: list[psutil.Process] = []

    def root() -> psutil.Process | None:
        if not cached:
            try:
                cached.append(
                    psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
                )
            except (OSError, ValueError, psutil.Error):
                return None
        return cached[0]

    return root


def _versions(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        pg = conn.execute("SHOW server_version").fetchone()
        vec = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        sb = conn.execute("SHOW shared_buffers").fetchone()
        wal = conn.execute("SHOW max_wal_size").fetchone()
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    return {
        "postgresql": pg[0] if pg else "?",
        "pgvector": vec[0] if vec else "?",
        "shared_buffers": sb[0] if sb else "?",
        "max_wal_size": wal[0] if wal else "?",
        "synchronous_commit": sync[0] if sync else "?",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    logs = args.data_root / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    server, started_pg = start_postgres(args.pg_dir)
    redis_url, private_redis = start_redis(args)
    fake: FakeServer | None = None
    try:
        server.drop_database(DB)
        server.create_database(DB)
        dsn = server.url(DB)
        print(f"PostgreSQL on port {server.port} ({args.pg_dir}), database {DB}; Redis {redis_url}")
        texts = [textmod.compose(a.title, a.content) for a in sample_articles(512, seed=7)]
        ceiling = fake_ceiling(texts, logs / "fake-ceiling.log")
        print(f"fake API ceiling: {ceiling:,.0f} inputs/s (64-input requests, 2 threads, 0 ms)")
        fake = FakeServer(args.latency_ms, logs / "fake.log")
        settings = settings_for(
            dsn, redis_url, fake.url, hnsw=args.hnsw, build_workers=args.build_workers
        )
        deps = build_deps(settings, application_name="bench-setup")
        try:
            migrate(deps)  # registers MODEL and builds its (empty) HNSW index
            if args.backfill:
                maintenance.register_model(deps, BACKFILL_MODEL, DIMS, "openai", build_index=False)
        finally:
            deps.close()
        if args.no_index:
            drop_index(dsn, MODEL)
        t = time.monotonic()
        ids = load_articles(dsn, args.articles)
        print(f"{len(ids):,} sample articles loaded with COPY in {time.monotonic() - t:.1f} s")
        client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
        ctx = Context(
            dsn=dsn,
            redis_url=redis_url,
            redis=client,
            fake=fake,
            settings=settings,
            ids=ids,
            pg_root=_pg_root(args.pg_dir),
            logs=logs,
            one_per_message=args.one_per_message,
        )
        versions = _versions(dsn)
        index = (
            "none"
            if args.no_index
            else f"HNSW ({hnsw.index_kind(DIMS, settings.hnsw_index_type)}) "
            f"m={settings.hnsw_m}, ef_construction={settings.hnsw_ef_construction}"
        )
        print(
            f"== {len(ids):,} articles, API latency {args.latency_ms:g} ms, index on target: "
            f"{index}, {os.cpu_count()} cores, load average {load_before[0]:.2f} at start, "
            f"PostgreSQL {versions['postgresql']}, pgvector {versions['pgvector']} =="
        )
        results: list[Result] = []
        raw: dict[tuple[int, int], Result] = {}
        for rep in range(args.repeat):
            for c in args.concurrency:
                for b in args.batch_max:
                    reset_embeddings(dsn)
                    label = f"(a) worker -c {c}, EMBED_BATCH_MAX {b}"
                    res = run_worker(ctx, c, b, None, label + (f" #{rep + 1}" if rep else ""))
                    res.rep = rep
                    results.append(res)
                    print_result(res)
                if not args.skip_raw:
                    reset_embeddings(dsn)
                    res = run_raw_copy(ctx, c)
                    res.rep = rep
                    res.label += f" #{rep + 1}" if rep else ""
                    raw[(c, rep)] = res
                    results.append(res)
                    print_result(res)
        naive: Result | None = None
        if not args.skip_naive:
            reset_embeddings(dsn)
            n = args.naive_articles or (1000 if args.latency_ms < 20 else 200)
            naive = run_naive(ctx, min(n, len(ids)))
            results.append(naive)
            print_result(naive)
        backfill: Result | None = None
        if args.backfill:
            reset_embeddings(dsn)
            c, b = args.concurrency[0], args.batch_max[0]
            res = run_worker(ctx, c, b, BACKFILL_MODEL, f"backfill -c {c}, EMBED_BATCH_MAX {b}")
            info = ModelInfo(BACKFILL_MODEL, DIMS, "openai", True)
            build = build_deps(settings, application_name="bench-index")
            try:
                built = maintenance.ensure_model_index(build.engine, info, settings)
            finally:
                build.close()
            res.index_build_s = built.seconds
            total = res.seconds + built.seconds
            res.note = (
                f"ingest {res.seconds:.1f} s + index build {built.seconds:.1f} s "
                f"(CREATE INDEX CONCURRENTLY, {index_size_mb(dsn, BACKFILL_MODEL):.0f} MB, "
                f"{settings.maintenance_parallel_workers} parallel workers) "
                f"= {total:.1f} s total, {res.articles / total:,.0f} articles/s"
            )
            backfill = res
            results.append(res)
            print_result(res)
        summary = summarise(results, raw, naive, backfill, args)
        load_after = os.getloadavg()
        print(f"load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "args": {
                            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                        },
                        "versions": versions,
                        "fake_ceiling_inputs_s": ceiling,
                        "load_average": [load_before[0], load_after[0]],
                        "results": [asdict(r) for r in results],
                        "summary": summary,
                    },
                    indent=2,
                    default=str,
                )
            )
        return 0
    finally:
        for worker in list(_LIVE):
            worker.stop()
        if fake is not None:
            fake.stop()
        if private_redis is not None:
            private_redis.stop()
        if started_pg:
            server.stop()


def print_result(r: Result) -> None:
    line = f"{r.label}: {r.articles:,} in {r.seconds:.1f} s = {r.rate:,.0f} articles/s"
    if r.requests:
        line += f"; {r.requests:,} API requests, mean batch {r.mean_batch:.0f}"
    if r.failed:
        line += f"; {r.failed} FAILED"
    print(line)
    u = r.usage
    if u is not None:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(u.cpu_cores.items()))
        extra = ""
        if u.peak_worker_rss_mb:
            extra = (
                f"peak worker connections {u.peak_worker_conns}, peak worker RSS "
                f"{u.peak_worker_rss_mb:.0f} MB (first {u.first_worker_rss_mb:.0f}, last "
                f"{u.last_worker_rss_mb:.0f}); "
            )
        per_article = ", ".join(
            f"{k} {v * 1000 / r.articles:.2f}" for k, v in sorted(u.cpu_s.items())
        )
        print(
            f"    {extra}peak connections to the database {u.peak_db_conns}; "
            f"CPU in cores: {cpu}; machine busy {u.machine_busy:.0%} of all cores"
        )
        print(
            f"    CPU ms per article: {per_article} (total {cpu_ms_per_article(r):.2f}; "
            "a load-independent cost: the machine is shared)"
        )
    if r.note:
        print(f"    {r.note}")


def cpu_ms_per_article(r: Result) -> float:
    return sum(r.usage.cpu_s.values()) * 1000 / r.articles if r.usage and r.articles else 0.0


def summarise(
    results: list[Result],
    raw: dict[tuple[int, int], Result],
    naive: Result | None,
    backfill: Result | None,
    args: argparse.Namespace,
) -> dict[str, float]:
    summary: dict[str, float] = {}
    print("== ratios ==")
    worker_runs = [r for r in results if r.label.startswith("(a)")]
    for r in worker_runs:
        parts = [f"{r.label}: {r.rate:,.0f}/s"]
        if (r.concurrency, r.rep) in raw:
            base = raw[(r.concurrency, r.rep)]
            ratio = r.rate / base.rate
            summary[f"a_over_b c={r.concurrency} b={r.batch_max} #{r.rep + 1}"] = ratio
            parts.append(f"(a)/(b) = {ratio:.2f}")
            if cpu_ms_per_article(r):
                cpu_ratio = cpu_ms_per_article(base) / cpu_ms_per_article(r)
                summary[f"a_over_b_cpu c={r.concurrency} b={r.batch_max} #{r.rep + 1}"] = cpu_ratio
                parts.append(f"CPU per article (b)/(a) = {cpu_ratio:.2f}")
        if naive is not None:
            ratio = r.rate / naive.rate
            summary[f"a_over_c c={r.concurrency} b={r.batch_max} #{r.rep + 1}"] = ratio
            parts.append(f"(a)/(c) = {ratio:.1f} (naive extrapolated from {naive.articles})")
        print("  " + "; ".join(parts))
    if backfill is not None and worker_runs:
        steady = worker_runs[0]
        total = backfill.seconds + backfill.index_build_s
        speedup = steady.seconds / total
        summary["backfill_speedup"] = speedup
        print(
            f"  backfill incl. index build {total:.1f} s vs steady state {steady.seconds:.1f} s "
            f"on the same {steady.articles:,} articles: {speedup:.2f}x"
        )
    if args.no_index:
        for r in worker_runs:
            print(f"  no index: {r.rate:,.0f} articles/s (target >= 2,000/s at 0 ms, 1,500 at 100)")
    rates = [r.rate for r in worker_runs]
    if len(rates) > 1:
        print(f"  worker runs: median {statistics.median(rates):,.0f}/s")
    return summary


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: stop the worker and the servers


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
