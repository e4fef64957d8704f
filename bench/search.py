"""Search benchmark: HNSW build time, warm top-5 latency and recall@10 against exact search.

One command, no services needed: an embedded PostgreSQL 18 + pgvector is started on a free
port with its data under .data/bench-search-pg (shared_buffers raised to 2GB so a warm
100k x 1536 index stays in shared buffers; the server is stopped at the end), a scratch
database `bench` is migrated with the project's own migrations, and N clustered vectors are
loaded into `article_embeddings` with dates spread over the last 12 months. Not uniform
random: 1,000 Gaussian clusters in a 48-dimensional latent space (overlapping: spread 1.5
against centers ~N(0, 1)), mapped into 1536 dimensions, plus isotropic noise. Real text
embeddings have a low intrinsic dimension and crowded neighbourhoods; well-separated
isotropic clusters in 1536 dimensions give recall 1.0 at any setting and prove nothing.

For each build setting (m, ef_construction) the model's partial HNSW index is built exactly
as `worker.maintenance` builds it, then for each hnsw.ef_search value the queries go through
`worker.search.search_vector` (the code path of `embedder search`), unfiltered and with a
date filter (last 30 days: partition pruning + pgvector 0.8 iterative scan). Recall@10 is
measured against exact cosine top-10 computed with numpy.

    .venv/bin/python bench/search.py                 # 100k x 1536: 7-20 min per build here
    .venv/bin/python bench/search.py --rows 5000     # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker import maintenance, partitions  # noqa: E402
from worker.cli import migrate  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.deps import Deps, build_deps  # noqa: E402
from worker.localstack import LocalPostgres, free_port  # noqa: E402
from worker.repository import ModelInfo  # noqa: E402
from worker.search import apply_search_settings, search_sql, search_vector  # noqa: E402

DB = "bench"
MODEL = "bench-1536"
MONTHS_BACK = 12
FILTER_DAYS = 30


@dataclass
class Row:
    m: int
    ef_construction: int
    build_s: float
    index_mb: float
    ef_search: int
    filtered: bool
    p50_ms: float
    p95_ms: float
    p99_ms: float
    recall_at_10: float
    plan: str


def clustered(
    rng: np.random.Generator,
    centers: np.ndarray,
    basis: np.ndarray,
    n: int,
    spread: float,
    noise: float,
    chunk: int = 10_000,
) -> np.ndarray:
    """n unit vectors: a Gaussian cluster point in a low-dimensional latent space, mapped to
    the full dimension by an orthonormal `basis`, plus isotropic noise of norm ~`noise`.

    Real text embeddings have a low intrinsic dimension, so their neighbours crowd together;
    isotropic clusters in 1536 dimensions would be far easier for HNSW than real data.
    """
    latent, dims = basis.shape
    out = np.empty((n, dims), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        pick = rng.integers(0, len(centers), hi - lo)
        points = centers[pick] + rng.normal(0.0, spread, (hi - lo, latent))
        block = (points @ basis).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block += rng.normal(0.0, noise / np.sqrt(dims), (hi - lo, dims)).astype(np.float32)
        out[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def exact_top(data: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """Exact cosine top-k ids (vectors are unit length, so the dot product orders them)."""
    result = []
    for lo in range(0, len(queries), 50):
        scores = queries[lo : lo + 50] @ data.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        result += [set(ids[row].tolist()) for row in top]
    return result


def load(url: str, vectors: np.ndarray, dates: list[datetime]) -> None:
    with psycopg.connect(url) as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            with cur.copy("COPY articles (id, title, published_at) FROM STDIN") as copy:
                for i, when in enumerate(dates, start=1):
                    copy.write_row((i, f"bench article {i}", when))
            with cur.copy(
                "COPY article_embeddings (article_id, published_at, model, embedding, "
                "content_hash) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["bigint", "timestamptz", "text", "vector", "bytea"])
                for i, (vec, when) in enumerate(zip(vectors, dates, strict=True), start=1):
                    copy.write_row((i, when, MODEL, vec, b""))
        conn.commit()
        conn.execute("ANALYZE articles")
        conn.execute("ANALYZE article_embeddings")
        conn.commit()


def build_index(url: str, info: ModelInfo, settings: Settings, workers: int) -> tuple[float, float]:
    """(seconds, MB) for a fresh non-concurrent build with the given m / ef_construction."""
    name = maintenance.index_name(info.name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute(f"SET maintenance_work_mem = '{settings.maintenance_work_mem}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
        started = time.perf_counter()
        conn.execute(maintenance.create_index_sql(info, settings, concurrently=False))
        seconds = time.perf_counter() - started
        size = conn.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()
        assert size is not None
        conn.execute("CHECKPOINT")
    return seconds, size[0] / 2**20


def plan_of(deps: Deps, info: ModelInfo, query: np.ndarray, since: datetime | None) -> str:
    """The plan's first scan node on article_embeddings, for the table's last column."""
    with deps.engine.begin() as conn:
        apply_search_settings(conn, deps.settings.hnsw_ef_search, filtered=since is not None)
        params: dict[str, Any] = {"q": query, "model": info.name, "k": 5, "fetch": 5}
        if since is not None:
            params["since"] = since
        lines = [
            r[0]
            for r in conn.execute(
                text("EXPLAIN " + search_sql(info, has_since=since is not None)), params
            )
        ]
    for line in lines:
        if "article_embeddings" in line and ("Scan" in line):
            return line.strip().lstrip("-> ").split(" on ")[0] + (
                " (hnsw)" if "hnsw" in line else ""
            )
    return "?"


def measure(
    deps: Deps,
    info: ModelInfo,
    queries: np.ndarray,
    truth: list[set[int]],
    since: datetime | None,
) -> tuple[list[float], float]:
    """Warm top-5 latencies (ms) and mean recall@10 through worker.search.search_vector."""
    ef = deps.settings.hnsw_ef_search

    def run(q: np.ndarray, k: int) -> list[int]:
        with deps.engine.begin() as conn:
            return [
                h.article_id for h in search_vector(conn, info, q, k=k, since=since, ef_search=ef)
            ]

    for q in queries:  # warm-up pass: index pages and plans cached
        run(q, 5)
    latencies = []
    for q in queries:
        started = time.perf_counter()
        run(q, 5)
        latencies.append((time.perf_counter() - started) * 1000)
    recalls = [len(set(run(q, 10)) & t) / 10 for q, t in zip(queries, truth, strict=True)]
    return latencies, statistics.fmean(recalls)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dims", type=int, default=1536)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--latent", type=int, default=48, help="intrinsic dimension of the data")
    p.add_argument("--spread", type=float, default=1.5, help="cluster std-dev in latent space")
    p.add_argument("--noise", type=float, default=0.2, help="isotropic noise norm")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--ef", default="40,100,200,400", help="hnsw.ef_search values")
    p.add_argument("--builds", default="16:64,24:128", help="m:ef_construction pairs")
    p.add_argument("--workers", type=int, default=1, help="max_parallel_maintenance_workers")
    p.add_argument("--work-mem", default="2GB", help="maintenance_work_mem for the build")
    p.add_argument("--port", type=int, default=0)
    # Its own data directory: the ingest bench shares .data/bench-pg and expects the stock
    # 256MB shared_buffers, while this one raises them to 2GB (restart needed).
    p.add_argument("--pg-dir", type=Path, default=REPO / ".data" / "bench-search-pg")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="query the database and index a previous run left (give its last --builds)",
    )
    p.add_argument("--json", type=Path, default=REPO / ".data" / "bench-search.json")
    args = p.parse_args(argv)

    server = LocalPostgres(args.pg_dir.resolve(), args.port or free_port())
    server.start()
    try:
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            # Big enough for a 100k x 1536 index to stay in shared buffers when warm.
            shared = conn.execute("SHOW shared_buffers").fetchone()
            if shared is None or shared[0] != "2GB":
                conn.execute("ALTER SYSTEM SET shared_buffers = '2GB'")
                conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
                restart = True
            else:
                restart = False
        if restart:
            server.restart()
        return run_bench(server, args)
    finally:
        server.stop()


def run_bench(server: LocalPostgres, args: argparse.Namespace) -> int:
    url = server.url(DB)
    if not args.reuse:
        server.drop_database(DB)
        server.create_database(DB)
    settings = Settings(
        database_url=url,
        embedding_provider="local",
        embedding_model=MODEL,
        embedding_dimensions=args.dims,
        maintenance_work_mem=args.work_mem,
        db_statement_timeout_ms=0,
    )
    deps = build_deps(settings)
    if not args.reuse:
        migrate(deps, register_default=False)
    info = maintenance.register_model(deps, MODEL, args.dims, "local", build_index=False)
    today = datetime.now(UTC).date()
    with deps.engine.begin() as conn:
        present = partitions.existing_partitions(conn)
        year, month = today.year, today.month
        for _ in range(MONTHS_BACK + 1):
            part = partitions.month_partition(year, month)
            if part.name not in present:
                partitions.create_month_partition(conn, part)
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)

    rng = np.random.default_rng(42)
    centers = rng.standard_normal((args.clusters, args.latent))
    basis = np.linalg.qr(rng.standard_normal((args.dims, args.latent)))[0].T  # orthonormal rows
    started = time.perf_counter()
    data = clustered(rng, centers, basis, args.rows, args.spread, args.noise)
    now = datetime.now(UTC)
    offsets = rng.uniform(0, 365 * 86400, args.rows)
    dates = [now - timedelta(seconds=float(s)) for s in offsets]
    queries = clustered(rng, centers, basis, args.queries, args.spread, args.noise)
    if args.reuse:  # same seed, same vectors; the dates are the stored ones
        with deps.engine.connect() as conn:
            dates = [
                r[0] for r in conn.execute(text("SELECT published_at FROM articles ORDER BY id"))
            ]
        assert len(dates) == args.rows, "--reuse needs the same --rows as the loading run"
        now = max(dates)
        load_s = 0.0
    else:
        load(url, data, dates)
        load_s = time.perf_counter() - started
        print(f"loaded {args.rows} x {args.dims} vectors in {load_s:.0f}s", flush=True)

    ids = np.arange(1, args.rows + 1)
    since = now - timedelta(days=FILTER_DAYS)
    recent = np.array([d >= since for d in dates])
    truth = exact_top(data, ids, queries, 10)
    truth_recent = exact_top(data[recent], ids[recent], queries, 10)

    rows: list[Row] = []
    for build in args.builds.split(","):
        m, efc = (int(x) for x in build.split(":"))
        build_settings = replace(settings, hnsw_m=m, hnsw_ef_construction=efc)
        if args.reuse:  # query the index as the loading run left it
            seconds, mb = float("nan"), 0.0
        else:
            seconds, mb = build_index(url, info, build_settings, args.workers)
            print(f"built m={m} ef_construction={efc} in {seconds:.1f}s ({mb:.0f} MB)", flush=True)
        for ef in (int(x) for x in args.ef.split(",")):
            run_deps = replace(deps, settings=replace(build_settings, hnsw_ef_search=ef))
            for filt, exact in ((None, truth), (since, truth_recent)):
                lat, recall = measure(run_deps, info, queries, exact, filt)
                row = Row(
                    m,
                    efc,
                    seconds,
                    mb,
                    ef,
                    filt is not None,
                    percentile(lat, 50),
                    percentile(lat, 95),
                    percentile(lat, 99),
                    recall,
                    plan_of(run_deps, info, queries[0], filt),
                )
                rows.append(row)
                print(_line(row), flush=True)
    deps.close()

    print()
    print(
        f"{args.rows} x {args.dims} dims, {args.clusters} clusters in {args.latent} latent dims "
        f"(spread {args.spread}), noise {args.noise}, "
        f"{args.queries} queries, filter = last {FILTER_DAYS} days ({int(recent.sum())} rows)"
    )
    print(render(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "dims": args.dims,
                "clusters": args.clusters,
                "latent": args.latent,
                "spread": args.spread,
                "noise": args.noise,
                "queries": args.queries,
                "load_s": load_s,
                "filtered_rows": int(recent.sum()),
                "results": [r.__dict__ for r in rows],
            },
            indent=2,
        )
    )
    return 0


def _line(r: Row) -> str:
    return (
        f"| {r.m} | {r.ef_construction} | {r.build_s:.1f} | {r.index_mb:.0f} | {r.ef_search} | "
        f"{'30 days' if r.filtered else 'none'} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
        f"{r.p99_ms:.2f} | {r.recall_at_10:.3f} | {r.plan} |"
    )


def render(rows: list[Row]) -> str:
    head = (
        "| m | ef_construction | build s | index MB | ef_search | filter | p50 ms | p95 ms "
        "| p99 ms | recall@10 | plan |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(_line(r) for r in rows)])


if __name__ == "__main__":
    sys.exit(main())
