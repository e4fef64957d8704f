"""Rate-limit benchmark: how much of a provider's budget the workers use, and how many 429s.

One command (docs/benchmarks.md, "## Rate limits"):

- an embedded PostgreSQL 18 + pgvector (data under .data/bench-pg, as bench/ingest.py),
  Redis (REDIS_URL, else 127.0.0.1:6379 db 11, flushed; a private one when none answers),
  sample articles loaded with COPY; the model's HNSW index is dropped (--keep-index keeps
  it) so that the provider's limit, not this machine's index inserts, is the bottleneck;
- the fake OpenAI server (tests/fakes/openai_server.py) in its own process, enforcing an
  RPM and a TPM like OpenAI (buckets refilling over --window-s, 60 s by default; tokens
  counted with cl100k_base; 429 with retry-after; x-ratelimit-* headers; usage), with
  --latency-ms latency. The TPM is --articles-per-s times the sample's mean tokens per
  article (counted the same way) times the window in minutes' share; RATE_LIMIT_RPM/TPM
  are NOT set: the workers learn the limits from the headers;
- for each --workers count: that many real Celery worker processes (`celery worker -c 1`),
  every article enqueued, --seconds of running; the provider's buckets start full (a
  window's worth of burst, as OpenAI's), so the steady window starts --window-s + 5 s in.

Printed per run: TPM and RPM utilisation over the steady window (tokens and requests the
provider accepted / its limit for that time), 429s per 100 requests, articles/s (vectors
committed), and the token utilisation per 10 s bucket; jobs failed (any reason) at the end.

    .venv/bin/python bench/ratelimit.py                            # 1 and 3 workers, 180 s
    .venv/bin/python bench/ratelimit.py --workers 3 --seconds 300 --change-at 150 --change-to 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import (  # noqa: E402
    DIMS,
    MODEL,
    Worker,
    drop_index,
    load_articles,
    reset_embeddings,
    settings_for,
    start_postgres,
    start_redis,
)

from devstack.sample import sample_articles  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402
from worker import text as textmod  # noqa: E402
from worker.client import enqueue  # noqa: E402
from worker.deps import build_deps  # noqa: E402
from worker.maintenance import migrate  # noqa: E402

DB = "bench_ratelimit"
BUCKET_S = 10.0


@dataclass
class Run:
    workers: int
    seconds: float
    window: tuple[float, float]  # steady window, seconds since the start
    rpm: int
    tpm: int
    tpm_utilisation: float
    rpm_utilisation: float
    requests: int
    rejected: int
    per_100: float
    articles_per_s: float
    failed_jobs: int
    rate_limited_failed: int
    buckets: list[float] = field(default_factory=list)  # token utilisation per 10 s
    changed: dict[str, float] = field(default_factory=dict)  # --change-at: before / after


# -- the fake provider in its own process ------------------------------------------------------


class Provider:
    """FakeOpenAI with limits, in its own process; asked over a pipe for its records."""

    def __init__(self, latency_ms: float, rpm: int, tpm: int, window_s: float, log: Path) -> None:
        spawn = mp.get_context("spawn")
        self._conn, child = spawn.Pipe()
        self.proc = spawn.Process(
            target=_serve, args=(latency_ms, rpm, tpm, window_s, str(log), child), daemon=True
        )
        self.proc.start()
        child.close()
        if not self._conn.poll(60):
            self.stop()
            raise RuntimeError(f"the fake OpenAI server did not start (see {log})")
        self.port: int = self._conn.recv()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def ask(self, command: str, *args: Any) -> Any:
        self._conn.send((command, *args))
        return self._conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _serve(latency_ms: float, rpm: int, tpm: int, window_s: float, log: str, conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with (
        open(log, "a", buffering=1) as errors,
        contextlib.redirect_stderr(errors),
        FakeOpenAI(
            dimensions=DIMS,
            latency_s=latency_ms / 1000,
            rpm=rpm,
            tpm=tpm,
            window_s=window_s,
            tokenizer="cl100k",
        ) as fake,
    ):
        conn.send(fake.port)
        while True:
            try:
                command, *args = conn.recv()
            except EOFError:
                break
            if command == "stop":
                break
            if command == "reset":  # records cleared, buckets full again at these limits
                fake.reset()
                fake.set_limits(rpm=args[0], tpm=args[1], window_s=window_s)
                conn.send(None)
            elif command == "limits":
                fake.set_limits(rpm=args[0], tpm=args[1], window_s=window_s)
                conn.send(None)
            elif command == "records":
                conn.send([(r.at, r.status, r.tokens, len(r.inputs)) for r in fake.requests])


# -- measuring ---------------------------------------------------------------------------------


def mean_tokens(count: int = 400) -> float:
    """Mean cl100k tokens of a sample article's text, as the fake counts them."""
    texts = [textmod.compose(a.title, a.content) for a in sample_articles(count, seed=6)]
    return sum(textmod.count_tokens(t) for t in texts) / len(texts)


def vectors(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM article_embeddings").fetchone()
        return int(row[0]) if row else 0


def failed_jobs(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE reason = 'rate_limited') "
            "FROM embedding_jobs WHERE state = 'failed'"
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


def utilisation(
    records: list[tuple[float, int, int, int]],
    start: float,
    end: float,
    rpm: int,
    tpm: int,
    window_s: float,
) -> tuple[float, float, int, int]:
    """(token and request utilisation, requests, 429s) of the records in [start, end)."""
    inside = [r for r in records if start <= r[0] < end]
    ok = [r for r in inside if r[1] == 200]
    seconds = end - start
    tokens = sum(r[2] for r in ok) / (tpm / window_s * seconds)
    requests = len(ok) / (rpm / window_s * seconds)
    return tokens, requests, len(inside), sum(1 for r in inside if r[1] == 429)


def run(
    args: argparse.Namespace,
    provider: Provider,
    dsn: str,
    redis_url: str,
    ids: list[int],
    workers: int,
    rpm: int,
    tpm: int,
) -> Run:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    client.flushdb()  # no limiter state learned by an earlier run
    reset_embeddings(dsn)
    provider.ask("reset", rpm, tpm)
    env = dict(os.environ)
    for name in ("RATE_LIMIT_RPM", "RATE_LIMIT_TPM"):
        env.pop(name, None)  # learned from the provider's headers, not configured
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "DATABASE_URL": dsn,
            "REDIS_URL": redis_url,
            "EMBEDDING_PROVIDER": "openai",
            "OPENAI_BASE_URL": provider.url,
            "OPENAI_API_KEY": "x",
            "EMBEDDING_MODEL": MODEL,
            "EMBEDDING_DIMENSIONS": str(DIMS),
            "EMBED_BATCH_MAX": str(args.batch_max),
            "DB_POOL_SIZE": "2",
            "DB_MAX_OVERFLOW": "2",
            "WORKER_CONCURRENCY": "1",
            "LOG_LEVEL": "WARNING",
        }
    )
    logs = args.data_root / "bench-logs"
    started_workers: list[Worker] = []
    try:
        for n in range(workers):
            log = logs / f"ratelimit-{workers}w-{n}.log"
            started_workers.append(Worker(env, 1, log, client))
        started = time.time()
        enqueue(ids, None, client=client, chunk_size=1000)
        marks: dict[float, int] = {}
        steady_start = min(args.window_s + 5, args.seconds / 3)
        changed = False
        while (elapsed := time.time() - started) < args.seconds:
            time.sleep(0.5)
            if steady_start not in marks and elapsed >= steady_start:
                marks[steady_start] = vectors(dsn)
            if args.change_at and not changed and elapsed >= args.change_at:
                provider.ask("limits", int(rpm * args.change_to), int(tpm * args.change_to))
                changed = True
            for w in started_workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"a worker exited (see {w.log})")
        end = time.time() - started
        marks[end] = vectors(dsn)
    finally:
        for w in started_workers:
            w.stop()
    records = [
        (at - started, status, tokens, n) for at, status, tokens, n in provider.ask("records")
    ]
    window = (steady_start, end)
    tokens_u, requests_u, count, rejected = utilisation(
        records, window[0], window[1], rpm, tpm, args.window_s
    )
    buckets = []
    t = 0.0
    while t + BUCKET_S <= end:
        buckets.append(utilisation(records, t, t + BUCKET_S, rpm, tpm, args.window_s)[0])
        t += BUCKET_S
    change: dict[str, float] = {}
    if args.change_at:
        low_rpm, low_tpm = int(rpm * args.change_to), int(tpm * args.change_to)
        before = utilisation(records, steady_start, args.change_at, rpm, tpm, args.window_s)
        after = utilisation(records, args.change_at + 10, end, low_rpm, low_tpm, args.window_s)
        change = {
            "tpm_before": before[0],
            "per_100_before": 100 * before[3] / max(1, before[2]),
            "tpm_after": after[0],
            "per_100_after": 100 * after[3] / max(1, after[2]),
        }
    failed, rate_limited = failed_jobs(dsn)
    return Run(
        workers=workers,
        seconds=end,
        window=window,
        rpm=rpm,
        tpm=tpm,
        tpm_utilisation=tokens_u,
        rpm_utilisation=requests_u,
        requests=count,
        rejected=rejected,
        per_100=100 * rejected / max(1, count),
        articles_per_s=(marks[end] - marks[steady_start]) / (end - steady_start),
        failed_jobs=failed,
        rate_limited_failed=rate_limited,
        buckets=buckets,
        changed=change,
    )


def print_run(r: Run) -> None:
    print(
        f"{r.workers} worker(s): TPM utilisation {r.tpm_utilisation:.3f}, RPM utilisation "
        f"{r.rpm_utilisation:.3f}{' (of the first limits)' if r.changed else ''}"
        f" over {r.window[0]:.0f}-{r.window[1]:.0f} s; "
        f"{r.per_100:.2f} 429s per 100 requests ({r.rejected} of {r.requests}); "
        f"{r.articles_per_s:.1f} articles/s; failed jobs {r.failed_jobs} "
        f"(rate_limited {r.rate_limited_failed})"
    )
    print("    TPM utilisation per 10 s: " + " ".join(f"{b:.2f}" for b in r.buckets))
    if r.changed:
        c = r.changed
        print(
            f"    limits changed: before TPM utilisation {c['tpm_before']:.3f} "
            f"({c['per_100_before']:.2f} 429s/100), after (new limits) {c['tpm_after']:.3f} "
            f"({c['per_100_after']:.2f} 429s/100)"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    data = REPO / ".data"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,3", help="worker process counts, comma-separated")
    p.add_argument("--seconds", type=float, default=180.0, help="length of each run")
    p.add_argument("--articles-per-s", type=float, default=50.0, help="what the TPM is worth")
    p.add_argument("--rpm", type=int, default=0, help="requests limit (0: 4 x what is needed)")
    p.add_argument("--window-s", type=float, default=60.0, help="the limits refill over this")
    p.add_argument("--latency-ms", type=float, default=100.0)
    p.add_argument("--batch-max", type=int, default=256, help="EMBED_BATCH_MAX")
    p.add_argument("--change-at", type=float, default=0.0, help="change the limits at S s")
    p.add_argument("--change-to", type=float, default=0.5, help="... to this share of them")
    p.add_argument("--keep-index", action="store_true", help="keep the model's HNSW index")
    p.add_argument("--pg-dir", type=Path, default=data / "bench-pg")
    p.add_argument("--data-root", type=Path, default=data)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.pg_dir, args.data_root = args.pg_dir.resolve(), args.data_root.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    (args.data_root / "bench-logs").mkdir(parents=True, exist_ok=True)
    server, started_pg = start_postgres(args.pg_dir)
    redis_url, private_redis = start_redis(args)
    provider: Provider | None = None
    try:
        server.drop_database(DB)
        server.create_database(DB)
        dsn = server.url(DB)
        per_article = mean_tokens()
        tpm = int(args.articles_per_s * per_article * args.window_s)
        per_request = args.batch_max * per_article
        rpm = args.rpm or max(10, int(4 * args.articles_per_s / args.batch_max * args.window_s))
        provider = Provider(
            args.latency_ms, rpm, tpm, args.window_s, args.data_root / "bench-logs/fake-rl.log"
        )
        deps = build_deps(settings_for(dsn, redis_url, provider.url), application_name="bench")
        try:
            migrate(deps)
        finally:
            deps.close()
        if not args.keep_index:
            drop_index(dsn, MODEL)
        needed = int(args.articles_per_s * (args.seconds + args.window_s) * 1.3) + 100
        ids = load_articles(dsn, needed)
        print(
            f"== limits {rpm:,} requests and {tpm:,} tokens per {args.window_s:g} s "
            f"(~{args.articles_per_s:g} articles/s at {per_article:,.0f} cl100k tokens each; "
            f"~{per_request:,.0f} tokens per full request), latency {args.latency_ms:g} ms, "
            f"{len(ids):,} articles, EMBED_BATCH_MAX {args.batch_max}, no RATE_LIMIT_* set, "
            f"index {'kept' if args.keep_index else 'dropped'}, {os.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.2f} =="
        )
        runs = []
        for workers in [int(w) for w in args.workers.split(",")]:
            result = run(args, provider, dsn, redis_url, ids, workers, rpm, tpm)
            print_run(result)
            runs.append(result)
        if args.json:
            args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs]}, indent=2))
    finally:
        if provider is not None:
            provider.stop()
        if private_redis is not None:
            private_redis.stop()
        if started_pg:
            server.stop()
    return 0


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
