"""Search against real PostgreSQL + pgvector: each model's own index, exact-order checks,
partition pruning and iterative scans for date-bounded queries, the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text

from tests.conftest import MODEL, SMALL_MODEL, fetch
from tests.fakes.openai_server import FakeOpenAI, fake_vector
from tests.integration.test_maintenance import load_vectors, month_start, unit_vectors
from worker import cli, hnsw, maintenance, partitions
from worker.deps import Deps
from worker.search import (
    apply_search_settings,
    search_like,
    search_sql,
    search_text,
    search_vector,
)

pytestmark = pytest.mark.integration


ROWS = {MODEL: 3000, SMALL_MODEL: 2000}


def explain(deps: Deps, sql: str, **params: Any) -> str:
    """The plan search would get: same settings as worker.search applies per query."""
    with deps.engine.begin() as conn:
        apply_search_settings(conn, deps.settings.hnsw_ef_search, filtered="since" in params)
        return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql), params))


def as_indexed(vectors: np.ndarray) -> np.ndarray:
    """The values the default (halfvec) index and search compare: float16-rounded."""
    return vectors.astype(np.float16).astype(np.float32)


def exact_order(vectors: np.ndarray, ids: list[int], query: np.ndarray, k: int) -> list[int]:
    vectors, query = as_indexed(vectors), as_indexed(query)
    scores = (vectors @ query) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_each_model_is_searched_through_its_own_index(deps: Deps, database_url: str) -> None:
    big, small = hnsw.index_name(MODEL), hnsw.index_name(SMALL_MODEL)
    with deps.engine.begin() as conn:  # bulk load, then build: much faster than row by row
        conn.execute(text(f"DROP INDEX {big}"))
        conn.execute(text(f"DROP INDEX {small}"))
    # Enough rows that the planner prefers each HNSW index to sorting the model's rows
    # (pgvector's cost model: ~3,000 rows for 1536 dims with these proportions).
    load_vectors(database_url, MODEL, unit_vectors(ROWS[MODEL], 1536))
    load_vectors(database_url, SMALL_MODEL, unit_vectors(ROWS[SMALL_MODEL], 384, seed=1))
    built = maintenance.rebuild_hnsw(deps)
    assert sorted(built.created) == sorted([big, small])
    with deps.engine.begin() as conn:
        conn.execute(text("ANALYZE articles"))
        conn.execute(text("ANALYZE article_embeddings"))

    plans = {}
    for name, dims in ((MODEL, 1536), (SMALL_MODEL, 384)):
        info = deps.model(name)
        query = unit_vectors(1, dims, seed=7)[0]
        plans[name] = explain(
            deps,
            search_sql(info, has_since=False, kind="halfvec"),
            q=query,
            model=name,
            k=5,
            fetch=5,
        )

    assert f"Index Scan using {big}" in plans[MODEL] and small not in plans[MODEL]
    assert f"Index Scan using {small}" in plans[SMALL_MODEL] and big not in plans[SMALL_MODEL]


def test_index_names_are_distinct_and_fit_in_63_bytes() -> None:
    models = [
        "text-embedding-3-small",
        "Text Embedding 3 Small",
        "x" * 200,
        "x" * 200 + "y",
        "埋め込みモデル" * 20,
        "埋め込みモデル" * 20 + "2",
    ]
    names = [hnsw.index_name(m) for m in models]
    assert len(set(names)) == len(models)
    assert all(len(n.encode()) < 64 and re.fullmatch(r"[a-z0-9_]+", n) for n in names)


def test_a_model_over_2000_dimensions_is_indexed_as_halfvec(deps: Deps, database_url: str) -> None:
    maintenance.register_model(deps, "big-3072", 3072, "openai")
    name = hnsw.index_name("big-3072")
    (definition,) = fetch(deps, "SELECT indexdef FROM pg_indexes WHERE indexname = :n", n=name)[0]
    assert "halfvec(3072)" in definition and "halfvec_cosine_ops" in definition
    assert "WHERE (model = 'big-3072'::text)" in definition

    vectors = unit_vectors(40, 3072)
    ids = load_vectors(database_url, "big-3072", vectors)
    info = deps.model("big-3072")
    with deps.engine.begin() as conn:
        hits = search_vector(conn, info, vectors[3], k=5, ef_search=100)
    assert [h.article_id for h in hits] == exact_order(vectors, ids, vectors[3], 5)
    assert hits[0].distance == pytest.approx(0.0, abs=1e-3)  # halfvec precision


def test_nearest_neighbours_match_the_exact_order(deps: Deps, database_url: str) -> None:
    vectors = unit_vectors(500, 384, seed=3)
    ids = load_vectors(database_url, SMALL_MODEL, vectors)
    info = deps.model(SMALL_MODEL)
    for query in unit_vectors(5, 384, seed=4):
        with deps.engine.begin() as conn:
            hits = search_vector(conn, info, query, k=10, ef_search=200)
        assert [h.article_id for h in hits] == exact_order(vectors, ids, query, 10)
        expected = 1 - vectors[[ids.index(h.article_id) for h in hits]] @ query
        assert [h.distance for h in hits] == pytest.approx(list(expected), abs=2e-3)  # halfvec


def test_since_prunes_old_partitions_and_iterative_scan_fills_k(
    deps: Deps, database_url: str
) -> None:
    today = datetime.now(UTC).date()
    old_month = month_start(today, -4)
    with deps.engine.begin() as conn:
        for back in range(1, 6):
            partitions.create_month_partition(
                conn, partitions.month_partition(*partitions.add_months(today, -back))
            )
    now = datetime.now(UTC)
    old_vectors = unit_vectors(1900, 384, seed=5)
    new_vectors = unit_vectors(100, 384, seed=6)
    load_vectors(database_url, SMALL_MODEL, old_vectors, old_month)
    recent_ids = load_vectors(database_url, SMALL_MODEL, new_vectors, now - timedelta(hours=1))
    with deps.engine.begin() as conn:
        conn.execute(text("ANALYZE articles"))
        conn.execute(text("ANALYZE article_embeddings"))
    info = deps.model(SMALL_MODEL)
    since = now - timedelta(days=2)
    query = unit_vectors(1, 384, seed=8)[0]

    plan = explain(
        deps,
        search_sql(info, has_since=True, kind="halfvec"),
        q=query,
        model=SMALL_MODEL,
        k=5,
        fetch=40,
        since=since,
    )
    scanned = set(re.findall(r"articles_\d{4}_\d{2}", plan))
    with deps.engine.connect() as conn:
        monthly = {n for n in partitions.existing_partitions(conn) if n != "articles_default"}
    first = partitions.month_partition(since.year, since.month).name
    # Pruned at plan time: only the months from `since` on (and DEFAULT, which may hold any
    # date) appear; the older months do not (four of the five when `since`, two days back,
    # falls in the previous month: on the 1st or 2nd).
    assert scanned == {n for n in monthly if n >= first}
    assert len(monthly - scanned) >= 4

    def filtered(iterative: bool) -> list[int]:
        with deps.engine.begin() as conn:
            # Forces the index path so the test shows what the iterative scan adds; with a
            # 5% filter a plain HNSW scan of ef_search=10 candidates keeps too few rows.
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            conn.execute(text("SET LOCAL enable_sort = off"))
            hits = search_vector(conn, info, query, k=5, since=since, ef_search=10)
            if not iterative:
                conn.execute(text("SET LOCAL hnsw.iterative_scan = off"))
                rows = conn.execute(
                    text(search_sql(info, has_since=True, kind="halfvec")),
                    {"q": query, "model": SMALL_MODEL, "k": 5, "fetch": 5, "since": since},
                )
                return [r[0] for r in rows]
        return [h.article_id for h in hits]

    assert filtered(iterative=True) == exact_order(new_vectors, recent_ids, query, 5)
    assert len(filtered(iterative=False)) < 5


def test_search_text_uses_ef_search_from_settings(
    make_deps: Callable[..., Deps], database_url: str, fake_openai: FakeOpenAI
) -> None:
    deps = make_deps(hnsw_ef_search=77)
    target = fake_vector("quiet harbour at dawn", 1536)
    others = unit_vectors(30, 1536, seed=2)
    ids = load_vectors(database_url, MODEL, np.vstack([others, target[None, :]]))
    seen: list[tuple[str, Any]] = []
    event.listen(deps.engine, "before_cursor_execute", lambda *a: seen.append((a[2], a[3])))

    hits = search_text(deps, "quiet harbour at dawn", k=3)

    assert hits[0].article_id == ids[-1] and hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert len(hits) == 3
    settings = [params for sql, params in seen if "set_config('hnsw.ef_search'" in sql]
    assert len(settings) == 1 and "77" in settings[0].values()
    assert [r.inputs for r in fake_openai.requests] == [["quiet harbour at dawn"]]


def test_search_like_returns_neighbours_without_the_article_itself(
    deps: Deps, database_url: str
) -> None:
    vectors = unit_vectors(200, 384, seed=11)
    ids = load_vectors(database_url, SMALL_MODEL, vectors)

    hits = search_like(deps, ids[0], model=SMALL_MODEL, k=4)

    assert [h.article_id for h in hits] == exact_order(vectors, ids, vectors[0], 5)[1:]


def test_cli_search_prints_distance_id_date_and_title(
    settings: Any,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = fake_vector("harbour", 1536)
    ids = load_vectors(database_url, MODEL, np.vstack([unit_vectors(10, 1536), target[None, :]]))
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": MODEL,
        "OPENAI_API_KEY": settings.openai_api_key,
        "OPENAI_BASE_URL": settings.openai_base_url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    code = cli.main(["search", "harbour", "-k", "2", "--since", "2000-01-01"])

    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    # A header says what the number is: similarity (1 - cosine distance), higher is closer.
    assert lines[0].split() == ["similarity", "article", "published", "title"]
    similarity, article_id, day, title = lines[1].split(maxsplit=3)
    assert (float(similarity), int(article_id), title) == (1.0, ids[-1], "vector 10")
    assert day == datetime.now(UTC).strftime("%Y-%m-%d")

    assert cli.main(["search", "harbour", "-k", "2", "--json"]) == 0
    (first, _) = json.loads(capsys.readouterr().out)
    assert first["article_id"] == ids[-1]
    assert first["similarity"] == pytest.approx(1.0) and first["cosine_distance"] == 0.0


def test_search_settings_are_one_statement_and_last_only_for_the_transaction(
    deps: Deps,
) -> None:
    names = [
        "hnsw.ef_search",
        "plan_cache_mode",
        "enable_seqscan",
        "enable_sort",
        "hnsw.iterative_scan",
    ]
    current = "SELECT " + ", ".join(f"current_setting('{n}')" for n in names)
    statements: list[str] = []
    with deps.engine.connect() as conn:
        conn.execute(text("LOAD 'vector'"))  # so hnsw.* show their defaults, not errors
        conn.commit()
        before = tuple(conn.execute(text(current)).one())
        conn.commit()
        event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
        with conn.begin():
            apply_search_settings(conn, 321, filtered=True)
            inside = tuple(conn.execute(text(current)).one())
        count = len(statements)
        after = tuple(conn.execute(text(current)).one())
        conn.commit()

    assert count == 2  # the settings and the check: one round trip for settings
    assert inside == ("321", "force_custom_plan", "off", "off", "relaxed_order")
    assert after == before == ("40", "auto", "on", "on", "off")


def index_definition(deps: Deps, name: str) -> str:
    rows = fetch(deps, "SELECT indexdef FROM pg_indexes WHERE indexname = :n", n=name)
    return str(rows[0][0]) if rows else ""


def test_new_indexes_are_halfvec_by_default_and_vector_on_request(make_deps: Any) -> None:
    default, legacy = make_deps(), make_deps(hnsw_index_type="vector")
    assert "(embedding)::halfvec(1536)" in index_definition(default, hnsw.index_name(MODEL))
    maintenance.register_model(legacy, "as-vector", 768, "openai")
    assert "(embedding)::vector(768)" in index_definition(legacy, hnsw.index_name("as-vector"))
    with pytest.raises(ValueError, match="4001 dimensions cannot have an HNSW index"):
        maintenance.register_model(default, "too-wide", 4001, "openai", build_index=False)
    assert fetch(default, "SELECT count(*) FROM embedding_models WHERE name = 'too-wide'") == [(0,)]


def test_a_vector_index_serves_searches_until_the_rebuild_replaces_it_with_halfvec(
    make_deps: Any, database_url: str
) -> None:
    """An index built before halfvec became the default keeps working, then is replaced."""
    legacy, deps = make_deps(hnsw_index_type="vector"), make_deps()
    name = hnsw.index_name(SMALL_MODEL)
    with legacy.engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {name}"))
    vectors = unit_vectors(400, 384, seed=11)
    ids = load_vectors(database_url, SMALL_MODEL, vectors)
    maintenance.rebuild_hnsw(legacy, model=SMALL_MODEL)  # builds the missing index as vector
    assert "::vector(384)" in index_definition(deps, name)
    info, query = deps.model(SMALL_MODEL), vectors[7]

    def search() -> list[int]:
        with deps.engine.begin() as conn:
            return [h.article_id for h in search_vector(conn, info, query, k=5, ef_search=100)]

    def plan() -> str:
        with deps.engine.begin() as conn:
            kind = apply_search_settings(conn, 100, filtered=False, info=info)
            sql = search_sql(info, has_since=False, kind=kind or "halfvec")
            params = {"q": query, "model": SMALL_MODEL, "k": 5, "fetch": 5}
            return "\n".join(r[0] for r in conn.execute(text("EXPLAIN " + sql), params))

    assert f"Index Scan using {name}" in plan()  # the halfvec default reads the vector index
    before = search()
    assert before[0] == ids[7]

    result = maintenance.rebuild_hnsw(deps)  # no churn, not forced: replaced for its type

    assert result.rebuilt == [name] and not result.created
    assert "::halfvec(384)" in index_definition(deps, name)
    assert index_definition(deps, hnsw.replacement_name(SMALL_MODEL)) == ""
    assert f"Index Scan using {name}" in plan()
    assert search() == before
    assert maintenance.rebuild_hnsw(deps).rebuilt == []  # settled: nothing more to replace


@pytest.mark.parametrize("old_index", ["kept", "dropped"])
def test_an_interrupted_replacement_is_settled_by_the_next_rebuild(
    deps: Deps, database_url: str, old_index: str
) -> None:
    """Killed after building the replacement: the next run drops it, or finishes the swap."""
    name, temp = hnsw.index_name(SMALL_MODEL), hnsw.replacement_name(SMALL_MODEL)
    load_vectors(database_url, SMALL_MODEL, unit_vectors(50, 384, seed=12))
    info = deps.model(SMALL_MODEL)
    with deps.engine.begin() as conn:
        conn.execute(
            text(maintenance.create_index_sql(info, deps.settings, name=temp, concurrently=False))
        )
        if old_index == "dropped":
            conn.execute(text(f"DROP INDEX {name}"))

    result = maintenance.rebuild_hnsw(deps)

    assert index_definition(deps, temp) == ""
    assert "::halfvec(384)" in index_definition(deps, name)
    assert result.created == []  # the replacement was renamed or dropped, never rebuilt here
    with deps.engine.begin() as conn:
        assert hnsw.built_kind(conn, info) == "halfvec"
