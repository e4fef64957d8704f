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
import contextlib
import json
import signal
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

import worker.search  # noqa: E402
from devstack.services import LocalPostgres, free_port  # noqa: E402
from worker import hnsw, maintenance, partitions  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.deps import Deps, build_deps  # noqa: E402
from worker.maintenance import migrate  # noqa: E402
from worker.repository import ModelInfo  # noqa: E402
from worker.search import apply_search_settings, search_sql, search_vector  # noqa: E402

DB = "bench"
MODEL = "bench-1536"
MONTHS_BACK = 12
FILTER_DAYS = 30


@dataclass
class Row:
    kind: str  # vector | halfvec: the type the index casts to
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
    load: str  # 1-minute load average before -> after the measurement


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(limit: float, max_wait_s: float) -> float:
    """Wait (up to max_wait_s) for the 1-minute load average to drop below `limit`.

    The machine is shared: other engineers' test runs would otherwise show up as latency.
    Returns the load average at the end, whether or not it got below the limit.
    """
    deadline = time.monotonic() + max_wait_s
    while (load := loadavg()) >= limit and time.monotonic() < deadline:
        print(f"  load {load:.2f} >= {limit}: waiting", flush=True)
        time.sleep(15)
    return load


def kind_index_name(kind: str) -> str:
    """The production name for the model's default kind; a suffixed one for the other."""
    base = hnsw.index_name(MODEL)
    return base if kind == hnsw.index_kind(1536) else base.replace("_hnsw_", f"_hnsw_{kind}_")


@contextlib.contextmanager
def searching(kind: str) -> Any:
    """Make worker.search use the `kind` expression (both indexes coexist in the bench).

    search_vector casts to the kind of the model's built index (BUILT_DEFINITION_SQL finds
    it by its production name); the bench's second index has a suffixed name, so the kind
    is forced here instead.
    """
    namespace = vars(worker.search)
    original = namespace["kind_of_definition"]
    namespace["kind_of_definition"] = lambda _definition: kind
    try:
        yield
    finally:
        namespace["kind_of_definition"] = original


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


def index_mb(url: str, kind: str) -> float:
    """The index's size in MB, 0 when it does not exist."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_relation_size(to_regclass(%s))", (kind_index_name(kind),)
        ).fetchone()
    return (row[0] or 0) / 2**20 if row else 0.0


def build_index(
    url: str, info: ModelInfo, settings: Settings, workers: int, kind: str
) -> tuple[float, float]:
    """(seconds, MB) for a fresh non-concurrent build with the given m / ef_construction."""
    name = kind_index_name(kind)
    sql = maintenance.create_index_sql(info, settings, concurrently=False, kind=kind)
    sql = sql.replace(hnsw.index_name(info.name), name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute(f"SET maintenance_work_mem = '{settings.maintenance_work_mem}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
        started = time.perf_counter()
        conn.execute(sql)
        seconds = time.perf_counter() - started
        conn.execute("CHECKPOINT")
    return seconds, index_mb(url, kind)


def prewarm(url: str, kinds: list[str]) -> None:
    """Read the indexes into shared buffers (pg_prewarm), so the first queries are warm too."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        for kind in kinds:
            blocks = conn.execute("SELECT pg_prewarm(%s)", (kind_index_name(kind),)).fetchone()
            print(f"prewarmed {kind_index_name(kind)}: {blocks[0] if blocks else 0} blocks")


def insert_rate(
    url: str, kinds: list[str], start_id: int, vectors: np.ndarray, when: datetime
) -> dict[str, float]:
    """Rows/s inserting `vectors` with only the `kind` index present ('none': no index).

    Each measurement runs in one transaction that drops the other indexes first and is
    rolled back, so the table keeps its rows; the HNSW pages keep the aborted elements
    until a VACUUM, hence this runs last. Rows go in as the pipeline writes them: 256 per
    executemany batch, binary vectors.
    """
    rates: dict[str, float] = {}
    present = [k for k in ("vector", "halfvec") if index_mb(url, k) > 0]
    for kind in [*kinds, "none"]:
        if kind != "none" and kind not in present:
            continue
        with psycopg.connect(url) as conn:
            register_vector(conn)
            for other in present:
                if other != kind:
                    conn.execute(f"DROP INDEX {kind_index_name(other)}")
            ids = range(start_id, start_id + len(vectors))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO articles (id, title, published_at) VALUES (%s, %s, %s)",
                    [(i, f"bench insert {i}", when) for i in ids],
                )
                started = time.perf_counter()
                for lo in range(0, len(vectors), 256):
                    cur.executemany(
                        "INSERT INTO article_embeddings (article_id, published_at, model, "
                        "embedding, content_hash) VALUES (%s, %s, %s, %s, '')",
                        [(i, when, MODEL, vectors[i - start_id]) for i in ids[lo : lo + 256]],
                    )
                seconds = time.perf_counter() - started
            conn.rollback()
        rates[kind] = len(vectors) / seconds
        print(f"insert with {kind} index: {rates[kind]:.0f} rows/s", flush=True)
    return rates


def diagnose(
    deps: Deps, info: ModelInfo, queries: np.ndarray, ef: int, kind: str
) -> dict[str, float]:
    """Where one search's time goes: median client latency of search_vector, of the bare
    index-scan subquery on a session with the settings already set, and the server's own
    planning/execution time and buffer hits/reads (EXPLAIN ANALYZE BUFFERS), searching the
    `kind` index (call it inside `searching(kind)`)."""
    sql = worker.search.search_sql(info, has_since=False, kind=kind)
    cast = hnsw.index_cast(info, kind)  # e.g. halfvec(1536): the indexed expression's type
    bare = (
        f"SELECT article_id FROM article_embeddings WHERE model = %s "
        f"ORDER BY (embedding::{cast}) <=> %s::vector::{cast} LIMIT 5"
    )
    client, naked, planning, execution, hit, read = [], [], [], [], [], []
    one_statement, five_statements = [], []
    for _ in range(100):  # the per-search settings: one set_config statement vs 5 SET LOCALs
        with deps.engine.begin() as conn:
            started = time.perf_counter()
            worker.search.apply_search_settings(conn, ef, filtered=True)
            one_statement.append((time.perf_counter() - started) * 1000)
        with deps.engine.begin() as conn:
            started = time.perf_counter()
            for setting in (
                f"hnsw.ef_search = {ef}",
                "plan_cache_mode = force_custom_plan",
                "enable_seqscan = off",
                "enable_sort = off",
                "hnsw.iterative_scan = relaxed_order",
            ):
                conn.execute(text(f"SET LOCAL {setting}"))
            five_statements.append((time.perf_counter() - started) * 1000)
    with psycopg.connect(deps.settings.database_url, autocommit=True) as raw:
        register_vector(raw)
        raw.execute(f"SET hnsw.ef_search = {ef}")
        raw.execute("SET enable_seqscan = off")
        raw.execute("SET plan_cache_mode = force_custom_plan")
        for q in queries:
            raw.execute(bare, (info.name, q)).fetchall()  # warm
            started = time.perf_counter()
            raw.execute(bare, (info.name, q)).fetchall()
            naked.append((time.perf_counter() - started) * 1000)
            with deps.engine.begin() as conn:
                started = time.perf_counter()
                worker.search.search_vector(conn, info, q, k=5, ef_search=ef)
                client.append((time.perf_counter() - started) * 1000)
            with deps.engine.begin() as conn:
                worker.search.apply_search_settings(conn, ef, filtered=False)
                plan = conn.execute(
                    text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql),
                    {"q": q, "model": info.name, "k": 5, "fetch": 5},
                ).scalar_one()[0]
            planning.append(plan["Planning Time"])
            execution.append(plan["Execution Time"])
            hit.append(plan["Plan"].get("Shared Hit Blocks", 0))
            read.append(plan["Plan"].get("Shared Read Blocks", 0))
    med = statistics.median
    return {
        "search_vector_ms": med(client),
        "bare_scan_ms": med(naked),
        "planning_ms": med(planning),
        "execution_ms": med(execution),
        "shared_hit": med(hit),
        "shared_read": med(read),
        "settings_one_statement_ms": med(one_statement),
        "settings_five_statements_ms": med(five_statements),
    }


def plan_of(
    deps: Deps, info: ModelInfo, query: np.ndarray, since: datetime | None, kind: str
) -> str:
    """The plan's first scan node on article_embeddings when searching the `kind` index."""
    with deps.engine.begin() as conn:
        apply_search_settings(conn, deps.settings.hnsw_ef_search, filtered=since is not None)
        params: dict[str, Any] = {"q": query, "model": info.name, "k": 5, "fetch": 5}
        if since is not None:
            params["since"] = since
        lines = [
            r[0]
            for r in conn.execute(
                text("EXPLAIN " + search_sql(info, has_since=since is not None, kind=kind)),
                params,
            )
        ]
    for line in lines:
        if "article_embeddings" in line and ("Scan" in line):
            return str(line).strip().lstrip("-> ").split(" on ")[0] + (
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
    p.add_argument("--kinds", default="halfvec", help="index types to compare: vector,halfvec")
    p.add_argument("--shared-buffers", default="2GB", help="the bench server's shared_buffers")
    p.add_argument("--prewarm", action="store_true", help="pg_prewarm the indexes first")
    p.add_argument("--inserts", type=int, default=0, help="measure insert rows/s (runs last)")
    p.add_argument("--diagnose", action="store_true", help="break one search's time down")
    p.add_argument("--quiet-load", type=float, default=2.0, help="wait for load below this")
    p.add_argument("--quiet-wait", type=float, default=600, help="...for at most this long (s)")
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
            # Default 2GB: a 100k x 1536 index stays in shared buffers when warm.
            shared = conn.execute("SHOW shared_buffers").fetchone()
            if shared is None or shared[0] != args.shared_buffers:
                conn.execute(f"ALTER SYSTEM SET shared_buffers = '{args.shared_buffers}'")
                conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
                restart = True
            else:
                restart = False
        if restart:
            server.restart()
        print(f"shared_buffers = {args.shared_buffers}", flush=True)
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

    kinds = args.kinds.split(",")
    rows: list[Row] = []
    diagnosis: dict[str, dict[str, float]] = {}
    inserts: dict[str, float] = {}
    for build in args.builds.split(","):
        m, efc = (int(x) for x in build.split(":"))
        build_settings = replace(settings, hnsw_m=m, hnsw_ef_construction=efc)
        built: dict[str, tuple[float, float]] = {}
        for kind in kinds:
            mb = index_mb(url, kind)
            if args.reuse and mb > 0:  # query the index as an earlier run left it
                built[kind] = (float("nan"), mb)
                continue
            before = loadavg()
            built[kind] = build_index(url, info, build_settings, args.workers, kind)
            print(
                f"built {kind} m={m} ef_construction={efc} in {built[kind][0]:.1f}s "
                f"({built[kind][1]:.0f} MB), load {before:.2f} -> {loadavg():.2f}",
                flush=True,
            )
        if args.prewarm:
            prewarm(url, kinds)
        for kind in kinds:
            seconds, mb = built[kind]
            with searching(kind):
                for ef in (int(x) for x in args.ef.split(",")):
                    run_deps = replace(deps, settings=replace(build_settings, hnsw_ef_search=ef))
                    for filt, exact in ((None, truth), (since, truth_recent)):
                        before = wait_for_quiet(args.quiet_load, args.quiet_wait)
                        lat, recall = measure(run_deps, info, queries, exact, filt)
                        row = Row(
                            kind,
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
                            plan_of(run_deps, info, queries[0], filt, kind),
                            f"{before:.2f} -> {loadavg():.2f}",
                        )
                        rows.append(row)
                        print(_line(row), flush=True)
                if args.diagnose:
                    ef = 100
                    diagnosis[kind] = diagnose(deps, info, queries[:100], ef, kind)
                    print(f"diagnosis {kind} ef_search {ef}: {diagnosis[kind]}", flush=True)
    deps.close()
    if args.inserts:
        vectors = clustered(rng, centers, basis, args.inserts, args.spread, args.noise)
        before = wait_for_quiet(args.quiet_load, args.quiet_wait)
        inserts = insert_rate(url, kinds, args.rows + 1, vectors, now)
        print(f"inserts: load {before:.2f} -> {loadavg():.2f}", flush=True)

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
                "shared_buffers": args.shared_buffers,
                "prewarm": args.prewarm,
                "diagnosis": diagnosis,
                "insert_rows_per_s": inserts,
                "filtered_rows": int(recent.sum()),
                "results": [r.__dict__ for r in rows],
            },
            indent=2,
        )
    )
    return 0


def _line(r: Row) -> str:
    return (
        f"| {r.kind} | {r.m} | {r.ef_construction} | {r.build_s:.1f} | {r.index_mb:.0f} | "
        f"{r.ef_search} | {'30 days' if r.filtered else 'none'} | {r.p50_ms:.2f} | "
        f"{r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.recall_at_10:.3f} | {r.plan} | {r.load} |"
    )


def render(rows: list[Row]) -> str:
    head = (
        "| index | m | ef_construction | build s | index MB | ef_search | filter | p50 ms "
        "| p95 ms | p99 ms | recall@10 | plan | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(_line(r) for r in rows)])


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: stop the server


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
