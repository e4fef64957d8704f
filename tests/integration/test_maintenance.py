"""Maintenance against real PostgreSQL: partitions ahead, DEFAULT rescue, retention, advisory
locks, HNSW rebuilds under write load, invalid-index cleanup and churn-triggered rebuilds."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from sqlalchemy import text

from tests.conftest import MODEL, SMALL_MODEL, fetch
from worker import hnsw, maintenance, partitions
from worker.deps import Deps

pytestmark = pytest.mark.integration


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


def unit_vectors(n: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def load_vectors(
    database_url: str,
    model: str,
    vectors: np.ndarray,
    published_at: datetime | Sequence[datetime] | None = None,
) -> list[int]:
    """Insert one article per vector and the vector for `model`; return the article ids."""
    n = len(vectors)
    if published_at is None:
        published_at = datetime.now(UTC)
    dates = [published_at] * n if isinstance(published_at, datetime) else list(published_at)
    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        rows = conn.execute(
            "INSERT INTO articles (title, published_at) "
            "SELECT 'vector ' || t.n, t.p FROM unnest(%s::int[], %s::timestamptz[]) AS t(n, p) "
            "ORDER BY t.n RETURNING id, published_at",
            (list(range(n)), dates),
        ).fetchall()
        rows.sort()
        with conn.cursor().copy(
            "COPY article_embeddings (article_id, published_at, model, embedding, content_hash) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["bigint", "timestamptz", "text", "vector", "bytea"])
            for (article_id, when), vec in zip(rows, vectors, strict=True):
                copy.write_row((article_id, when, model, vec, b"h"))
    return [r[0] for r in rows]


def month_start(today: date, months: int) -> datetime:
    year, month = partitions.add_months(today, months)
    return datetime(year, month, 1, 12, tzinfo=UTC)


# --- partitions -----------------------------------------------------------------------------


def test_ensure_partitions_creates_named_months_once(deps: Deps) -> None:
    today = datetime.now(UTC).date()
    expected = [p.name for p in partitions.upcoming_months(today, 5)]

    first = maintenance.ensure_partitions(deps, months_ahead=5)
    second = maintenance.ensure_partitions(deps, months_ahead=5)

    present = {
        r[0] for r in fetch(deps, "SELECT relname FROM pg_class WHERE relname LIKE 'articles_2%'")
    }
    assert set(expected) <= present
    assert first.created == expected[4:]  # the template already has current + 3
    assert [n[:9] for n in first.created] == ["articles_"] * 2
    assert second.created == [] and not second.is_locked_out


def test_new_partition_has_every_index_of_the_parent(deps: Deps) -> None:
    created = maintenance.ensure_partitions(deps, months_ahead=5).created[-1]

    def shapes(table: str) -> set[str]:
        rows = fetch(deps, "SELECT indexdef FROM pg_indexes WHERE tablename = :t", t=table)
        return {r[0].split(" USING ", 1)[1] for r in rows}

    parent = shapes("articles")
    assert len(parent) == 4  # pkey, (user_id, is_read, published_at DESC), feed, trigram
    assert shapes(created) == parent


def test_default_rows_move_into_new_partition_with_their_vectors_while_inserts_go_on(
    deps: Deps, database_url: str
) -> None:
    today = datetime.now(UTC).date()
    future = month_start(today, 5)  # no partition yet: rows land in DEFAULT
    big = load_vectors(database_url, MODEL, unit_vectors(5, 1536), future)
    small = load_vectors(
        database_url, SMALL_MODEL, unit_vectors(5, 384, seed=1), future + timedelta(days=3)
    )
    ids = big + small
    articles_sql = "SELECT * FROM articles WHERE id = ANY(:ids) ORDER BY id"
    vectors_sql = (
        "SELECT article_id, published_at, model, embedding::text, content_hash, token_count, "
        "created_at, updated_at FROM article_embeddings WHERE article_id = ANY(:ids) ORDER BY article_id"
    )
    before_articles = fetch(deps, articles_sql, ids=ids)
    before_vectors = fetch(deps, vectors_sql, ids=ids)
    where = fetch(
        deps, "SELECT DISTINCT tableoid::regclass::text FROM articles WHERE id = ANY(:ids)", ids=ids
    )
    assert where == [("articles_default",)]

    inserted: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                when = future if n % 2 else datetime.now(UTC)  # the moving month and another
                try:
                    row = conn.execute(
                        "INSERT INTO articles (title, published_at) VALUES ('during', %s) RETURNING id",
                        (when,),
                    ).fetchone()
                    assert row is not None
                    inserted.append(row[0])
                except BaseException as exc:  # recorded: the assertion below shows it
                    errors.append(exc)
                n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until(lambda: len(inserted) >= 20)
        result = maintenance.ensure_partitions(deps, months_ahead=5)
        mark = len(inserted)
        wait_until(lambda: len(inserted) >= mark + 20)
    finally:
        stop.set()
        thread.join(10)

    target = partitions.month_partition(future.year, future.month).name
    assert target in result.created
    assert errors == []
    assert fetch(deps, articles_sql, ids=ids) == before_articles
    assert fetch(deps, vectors_sql, ids=ids) == before_vectors
    where = fetch(
        deps, "SELECT DISTINCT tableoid::regclass::text FROM articles WHERE id = ANY(:ids)", ids=ids
    )
    assert where == [(target,)]
    assert fetch(deps, "SELECT count(*) FROM articles WHERE id = ANY(:ids)", ids=inserted) == [
        (len(inserted),)
    ]
    lo, hi = future.replace(day=1, hour=0), month_start(today, 6).replace(hour=0)
    leftover = fetch(
        deps,
        "SELECT count(*) FROM articles_default WHERE published_at >= :lo AND published_at < :hi",
        lo=lo,
        hi=hi,
    )
    assert leftover == [(0,)]


def test_a_second_run_is_locked_out_while_one_holds_the_lock(deps: Deps) -> None:
    with deps.engine.connect() as conn, maintenance.advisory_lock(conn, "partitions") as held:
        conn.commit()
        assert held
        blocked = maintenance.ensure_partitions(deps, months_ahead=5)
    after = maintenance.ensure_partitions(deps, months_ahead=5)

    assert (blocked.is_locked_out, blocked.created) == (True, [])
    assert not after.is_locked_out and len(after.created) == 2


def test_retention_drops_only_partitions_older_than_k_months(
    make_deps: Callable[..., Deps], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    today = datetime.now(UTC).date()
    deps = make_deps(partition_retention_months=12)
    old = [partitions.month_partition(*partitions.add_months(today, -k)) for k in (14, 13, 12, 11)]
    with deps.engine.begin() as conn:
        for part in old:
            partitions.create_month_partition(conn, part)
    doomed = load_vectors(database_url, SMALL_MODEL, unit_vectors(3, 384), month_start(today, -13))
    kept = load_vectors(
        database_url, SMALL_MODEL, unit_vectors(3, 384, seed=2), month_start(today, -12)
    )
    with deps.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO embedding_jobs (article_id, model) SELECT unnest(CAST(:ids AS bigint[])), :m"
            ),
            {"ids": doomed, "m": SMALL_MODEL},
        )

    with caplog.at_level(logging.WARNING, logger="worker.partitions"):
        result = maintenance.ensure_partitions(deps)

    assert result.dropped == [old[0].name, old[1].name]
    present = partitions.existing_partitions
    with deps.engine.connect() as conn:
        names = present(conn)
    assert old[0].name not in names and old[1].name not in names
    assert old[2].name in names and old[3].name in names
    assert fetch(deps, "SELECT count(*) FROM articles WHERE id = ANY(:i)", i=doomed) == [(0,)]
    assert fetch(
        deps, "SELECT count(*) FROM article_embeddings WHERE article_id = ANY(:i)", i=doomed
    ) == [(0,)]
    assert fetch(deps, "SELECT count(*) FROM embedding_jobs") == [(0,)]
    assert fetch(
        deps, "SELECT count(*) FROM article_embeddings WHERE article_id = ANY(:i)", i=kept
    ) == [(3,)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(old[0].name in m and "retention" in m for m in warnings)


def test_retention_is_off_by_default(deps: Deps) -> None:
    today = datetime.now(UTC).date()
    ancient = partitions.month_partition(*partitions.add_months(today, -40))
    with deps.engine.begin() as conn:
        partitions.create_month_partition(conn, ancient)
    result = maintenance.ensure_partitions(deps)
    assert result.dropped == []
    with deps.engine.connect() as conn:
        assert ancient.name in partitions.existing_partitions(conn)


# --- HNSW -----------------------------------------------------------------------------------


def small_info(deps: Deps) -> Any:
    return deps.model(SMALL_MODEL)


ROWS = 2000  # "a few thousand" 384-dim vectors: a rebuild of ~1 s on one core


def test_rebuild_under_write_load_never_blocks_an_insert_for_the_whole_rebuild(
    make_deps: Callable[..., Deps], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "PROGRESS_INTERVAL_S", 0.02)
    deps = make_deps(maintenance_parallel_workers=0)
    load_vectors(database_url, SMALL_MODEL, unit_vectors(ROWS, 384))
    name = hnsw.index_name(SMALL_MODEL)
    latencies: list[tuple[float, float]] = []  # (start, seconds)
    errors: list[BaseException] = []
    stop = threading.Event()
    extra = unit_vectors(5000, 384, seed=9)

    def writer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            register_vector(conn)
            i = 0
            while not stop.is_set() and i < len(extra):
                started = time.perf_counter()
                try:
                    with conn.transaction():
                        row = conn.execute(
                            "INSERT INTO articles (title, published_at) VALUES ('w', now()) "
                            "RETURNING id, published_at"
                        ).fetchone()
                        assert row is not None
                        conn.execute(
                            "INSERT INTO article_embeddings (article_id, published_at, model, "
                            "embedding, content_hash) VALUES (%s, %s, %s, %s, 'x')",
                            (row[0], row[1], SMALL_MODEL, extra[i]),
                        )
                except BaseException as exc:
                    errors.append(exc)
                latencies.append((started, time.perf_counter() - started))
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until(lambda: len(latencies) >= 10)
        begin = time.perf_counter()
        result = maintenance.rebuild_hnsw(deps, force=True, model=SMALL_MODEL)
        end = time.perf_counter()
        mark = len(latencies)
        wait_until(lambda: len(latencies) >= mark + 5)
    finally:
        stop.set()
        thread.join(10)

    rebuild_s = end - begin
    during = [lat for start, lat in latencies if begin <= start <= end]
    assert result.rebuilt == [name] and result.durations[name] > 0
    assert errors == []
    assert rebuild_s > 0.5, "rebuild too fast to prove anything"
    assert len(during) >= 10
    assert max(during) < rebuild_s / 2
    phases = [p["phase"] for p in result.progress]
    assert any(p.startswith("building index") for p in phases), phases
    with deps.engine.connect() as conn:
        assert hnsw.index_state(conn, name) == "valid"
    count = fetch(deps, "SELECT count(*) FROM article_embeddings WHERE model = :m", m=SMALL_MODEL)
    assert count == [(ROWS + len(latencies),)]


def test_invalid_index_from_a_failed_concurrent_build_is_dropped_and_rebuilt(
    deps: Deps, database_url: str
) -> None:
    info = small_info(deps)
    name = hnsw.index_name(SMALL_MODEL)
    load_vectors(database_url, SMALL_MODEL, unit_vectors(50, 384))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {name}")
        # A vector of the wrong size makes the cast in the index expression fail mid-build.
        conn.execute("INSERT INTO articles (id, title, published_at) VALUES (999999, 'bad', now())")
        conn.execute(
            "INSERT INTO article_embeddings (article_id, published_at, model, embedding, content_hash) "
            "SELECT 999999, published_at, %s, '[1,2,3]', 'x' FROM articles WHERE id = 999999",
            (SMALL_MODEL,),
        )
        with pytest.raises(psycopg.errors.DataException):
            conn.execute(maintenance.create_index_sql(info, deps.settings))
        conn.execute("DELETE FROM articles WHERE id = 999999")
    with deps.engine.connect() as conn:
        assert hnsw.index_state(conn, name) == "invalid"

    result = maintenance.rebuild_hnsw(deps, model=SMALL_MODEL)

    assert (result.dropped_invalid, result.created) == ([name], [name])
    with deps.engine.connect() as conn:
        assert hnsw.index_state(conn, name) == "valid"


def test_invalid_reindex_leftover_is_dropped_before_the_next_rebuild(
    deps: Deps, database_url: str
) -> None:
    name = hnsw.index_name(SMALL_MODEL)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # What a cancelled REINDEX CONCURRENTLY leaves behind: an invalid `<name>_ccnew`.
        conn.execute(
            f"CREATE INDEX {name}_ccnew ON article_embeddings (model) WHERE model = 'none'"
        )
        conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
            (f"{name}_ccnew",),
        )

    result = maintenance.rebuild_hnsw(deps, force=True, model=SMALL_MODEL)

    assert (result.dropped_invalid, result.rebuilt) == ([f"{name}_ccnew"], [name])
    assert fetch(deps, "SELECT to_regclass(:n)", n=f"{name}_ccnew") == [(None,)]


def _flush_stats(database_url: str, sql: str, params: Sequence[Any] = ()) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql, params)
        conn.execute("SELECT pg_stat_force_next_flush()")


def test_churn_past_the_ratio_triggers_a_rebuild_and_resets_the_count(
    make_deps: Callable[..., Deps], database_url: str
) -> None:
    deps = make_deps(hnsw_rebuild_churn_ratio=0.2)
    info = small_info(deps)
    name = hnsw.index_name(SMALL_MODEL)
    ids = load_vectors(database_url, SMALL_MODEL, unit_vectors(100, 384))
    _flush_stats(database_url, "SELECT 1")
    first = maintenance.rebuild_hnsw(deps, force=True, model=SMALL_MODEL)
    assert first.rebuilt == [name]

    quiet = maintenance.rebuild_hnsw(deps, model=SMALL_MODEL)
    assert quiet.rebuilt == [] and quiet.churn == {SMALL_MODEL: 0.0}

    _flush_stats(
        database_url,
        "UPDATE article_embeddings SET content_hash = 'y' WHERE article_id = ANY(%s)",
        (ids[:15],),
    )
    _flush_stats(database_url, "DELETE FROM articles WHERE id = ANY(%s)", (ids[15:25],))

    def churn() -> float:
        with deps.engine.connect() as conn:
            measured = maintenance.hnsw_churn(conn, info)
        assert measured is not None
        return measured.ratio

    wait_until(lambda: churn() >= 0.2)
    due = maintenance.rebuild_hnsw(deps, model=SMALL_MODEL)
    after = maintenance.rebuild_hnsw(deps, model=SMALL_MODEL)

    assert due.rebuilt == [name] and due.churn[SMALL_MODEL] == pytest.approx(0.25)
    assert after.rebuilt == [] and after.churn[SMALL_MODEL] == 0.0


def test_below_the_ratio_nothing_is_rebuilt(
    make_deps: Callable[..., Deps], database_url: str
) -> None:
    deps = make_deps(hnsw_rebuild_churn_ratio=0.5)
    ids = load_vectors(database_url, SMALL_MODEL, unit_vectors(100, 384))
    _flush_stats(database_url, "SELECT 1")
    maintenance.rebuild_hnsw(deps, force=True, model=SMALL_MODEL)
    _flush_stats(database_url, "DELETE FROM articles WHERE id = ANY(%s)", (ids[:10],))
    info = small_info(deps)

    def churn() -> float:
        with deps.engine.connect() as conn:
            measured = maintenance.hnsw_churn(conn, info)
        assert measured is not None
        return measured.ratio

    wait_until(lambda: churn() > 0)
    result = maintenance.rebuild_hnsw(deps, model=SMALL_MODEL)
    assert result.rebuilt == [] and result.churn[SMALL_MODEL] == pytest.approx(0.1)


def test_build_parameters_come_from_settings(make_deps: Callable[..., Deps]) -> None:
    deps = make_deps(hnsw_m=8, hnsw_ef_construction=40)
    name = hnsw.index_name(SMALL_MODEL)
    with deps.engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {name}"))

    result = maintenance.rebuild_hnsw(deps, model=SMALL_MODEL)

    assert result.created == [name]
    options = fetch(deps, "SELECT reloptions FROM pg_class WHERE relname = :n", n=name)
    assert options == [(["m=8", "ef_construction=40"],)]
    stored = fetch(
        deps, "SELECT model, index_name FROM hnsw_index_builds WHERE model = :m", m=SMALL_MODEL
    )
    assert stored == [(SMALL_MODEL, name)]


def test_rebuild_is_locked_out_while_another_holds_the_models_lock(deps: Deps) -> None:
    with (
        deps.engine.connect() as conn,
        maintenance.advisory_lock(conn, f"hnsw:{SMALL_MODEL}") as held,
    ):
        conn.commit()
        assert held
        result = maintenance.rebuild_hnsw(deps, force=True, model=SMALL_MODEL)
    assert result.is_locked_out and result.rebuilt == []


def test_backfill_mode_builds_the_index_once_the_backlog_is_done(
    make_deps: Callable[..., Deps], make_article: Callable[..., int]
) -> None:
    from worker import pipeline
    from worker.errors import PermanentError
    from worker.search import search_text

    deps = make_deps(embedding_model="text-embedding-3-small@384")
    info = maintenance.register_model(
        deps, "text-embedding-3-small@384", 384, "openai", build_index=False
    )
    name = hnsw.index_name(info.name)
    assert not info.is_indexed
    ids = [make_article() for _ in range(20)]
    pipeline.intake(deps, ids)
    pipeline.drain(deps, max_claims=1)  # 16 of 20 embedded: backlog not done

    early = maintenance.rebuild_hnsw(deps)
    with pytest.raises(PermanentError, match="backfilled"):
        search_text(deps, "Article")

    pipeline.drain(deps)
    done = maintenance.rebuild_hnsw(deps)

    assert (early.created, done.created) == ([], [name])
    assert fetch(
        deps, "SELECT is_indexed FROM embedding_models WHERE name = 'text-embedding-3-small@384'"
    )[0][0]
    assert len(search_text(deps, "Article", k=3)) == 3


def test_backfill_index_is_built_on_demand_by_name(
    make_deps: Callable[..., Deps], make_article: Callable[..., int]
) -> None:
    from worker import pipeline

    deps = make_deps(embedding_model="text-embedding-3-small@384")
    maintenance.register_model(deps, "text-embedding-3-small@384", 384, "openai", build_index=False)
    pipeline.intake(deps, [make_article() for _ in range(3)])  # pending, never drained

    result = maintenance.rebuild_hnsw(deps, model="text-embedding-3-small@384")

    assert result.created == [hnsw.index_name("text-embedding-3-small@384")]


# --- model names, one model's failure, two beats ------------------------------------------


@pytest.mark.parametrize(
    "model", ["nice-model :x", "it's 100% \\ sure:v1.5", 'quoted "name" :x :y']
)
def test_a_model_name_with_colons_quotes_or_percent_gets_a_working_index(
    deps: Deps, database_url: str, model: str
) -> None:
    """`:x` in text() is a bind parameter and `%` is doubled for the driver: DDL built from
    a name runs as written, its literal quoted, whatever the characters."""
    from worker import diagnostics, search

    info = maintenance.register_model(deps, model, 384, "openai")
    name = hnsw.index_name(model)
    ids = load_vectors(database_url, model, unit_vectors(30, 384, seed=3))

    with deps.engine.connect() as conn:
        assert hnsw.index_state(conn, name) == "valid"
        definition = conn.execute(
            text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": name}
        ).scalar_one()
        hits = search.search_vector(conn, info, unit_vectors(30, 384, seed=3)[7], k=1)
    assert definition.endswith("WHERE (model = " + "'" + model.replace("'", "''") + "'::text)")
    assert [h.article_id for h in hits] == [ids[7]]
    rebuilt = maintenance.rebuild_hnsw(deps, force=True, model=model)
    assert (rebuilt.rebuilt, rebuilt.failed) == ([name], {})
    checks = {c.name: c for c in diagnostics.run_diagnostics(deps)}
    assert checks[f"plan: vector search {model}"].status == "pass"


def test_one_models_failure_is_reported_and_the_others_are_rebuilt(
    deps: Deps,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """mini-384 (first by name) cannot get an index; text-embedding-3-small after it still does."""
    from worker import cli

    small = hnsw.index_name(SMALL_MODEL)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {small}")
        # A vector of another size makes the cast in the index expression fail mid-build.
        conn.execute("INSERT INTO articles (id, title, published_at) VALUES (999999, 'bad', now())")
        conn.execute(
            "INSERT INTO article_embeddings (article_id, published_at, model, embedding, "
            "content_hash) SELECT 999999, published_at, %s, '[1,2,3]', 'x' FROM articles "
            "WHERE id = 999999",
            (SMALL_MODEL,),
        )

    result = maintenance.rebuild_hnsw(deps, force=True)

    assert list(result.failed) == [SMALL_MODEL]
    assert "expected 384 dimensions, not 3" in result.failed[SMALL_MODEL]
    assert result.rebuilt == [hnsw.index_name(MODEL)]
    for key, value in deps.settings.to_env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["maintain", "hnsw", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert list(report["failed"]) == [SMALL_MODEL]
    assert report["rebuilt"] == [hnsw.index_name(MODEL)]


def _built_days_ago(deps: Deps, model: str, days: float) -> None:
    with deps.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hnsw_index_builds SET built_at = now() - make_interval(secs => :s) "
                "WHERE model = :m"
            ),
            {"s": days * 86400, "m": model},
        )


def test_the_weekly_rebuild_sent_twice_rebuilds_each_index_once(deps: Deps) -> None:
    """Two beats (a deploy) send the weekly forced rebuild twice: the second run finds the
    builds of the first within HNSW_REBUILD_MIN_INTERVAL_H and leaves them; on demand
    (`embedder maintain hnsw`, no interval) still rebuilds."""
    day = 24 * 3600.0
    small, big = hnsw.index_name(SMALL_MODEL), hnsw.index_name(MODEL)
    _built_days_ago(deps, SMALL_MODEL, 7)
    _built_days_ago(deps, MODEL, 7)

    first = maintenance.rebuild_hnsw(deps, force=True, min_interval_s=day)
    second = maintenance.rebuild_hnsw(deps, force=True, min_interval_s=day)
    _built_days_ago(deps, MODEL, 2)  # a week later, only one of them is due again
    third = maintenance.rebuild_hnsw(deps, force=True, min_interval_s=day)
    on_demand = maintenance.rebuild_hnsw(deps, force=True)

    assert sorted(first.rebuilt) == sorted([small, big]) and first.recently_built == {}
    assert second.rebuilt == [] and sorted(second.recently_built) == sorted([SMALL_MODEL, MODEL])
    assert third.rebuilt == [big] and list(third.recently_built) == [SMALL_MODEL]
    assert sorted(on_demand.rebuilt) == sorted([small, big])
    # The daily check (not forced) is unaffected: churn decides, and none is due.
    assert maintenance.rebuild_hnsw(deps, min_interval_s=day).rebuilt == []


def test_an_index_with_no_recorded_build_is_not_taken_as_recently_built(deps: Deps) -> None:
    """An index built before builds were recorded gets a row that only starts the churn
    count (no build time): the weekly rebuild still rebuilds it."""
    with deps.engine.begin() as conn:
        conn.execute(text("DELETE FROM hnsw_index_builds WHERE model = :m"), {"m": SMALL_MODEL})

    result = maintenance.rebuild_hnsw(deps, force=True, model=SMALL_MODEL, min_interval_s=86400)

    assert result.rebuilt == [hnsw.index_name(SMALL_MODEL)]


def test_maintain_prints_text_for_people_and_json_on_request(
    deps: Deps, settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker import cli

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("EMBEDDING_PROVIDER", "local")

    assert cli.main(["maintain", "partitions", "--months", "5"]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in text[:-1]] == ["created"] * len(text[:-1])
    assert len(text) >= 2 and text[-1].startswith("done in ")
    assert cli.main(["maintain", "partitions", "--months", "5"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[0] == "partitions: nothing to do"

    assert cli.main(["maintain", "partitions", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["job"] == "partitions" and report["created"] == []
