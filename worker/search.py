"""Nearest-article search that uses each model's own HNSW index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from worker.deps import Deps
from worker.errors import PermanentError
from worker.maintenance import (
    BUILT_DEFINITION_SQL,
    index_expression,
    index_kind,
    index_name,
    kind_of_definition,
    replacement_name,
)
from worker.repository import ModelInfo
from worker.text import clean_text


@dataclass(frozen=True)
class Hit:
    article_id: int
    published_at: datetime
    title: str
    distance: float


def search_sql(info: ModelInfo, *, has_since: bool, kind: str) -> str:
    """The query; its ORDER BY expression matches the model's partial index expression exactly.

    The nearest rows are picked from `article_embeddings` alone in a LIMITed subquery, so the
    planner can walk the HNSW index in distance order; joining `articles` first would make
    it estimate one joined row (id and published_at are correlated) and sort a hash join
    of the whole table instead. The outer ORDER BY restores strict order after a relaxed
    iterative scan, as pgvector recommends. With a date bound, both tables are filtered on
    published_at: the embedding filter runs inside the (iterative) index scan, and the
    bound on `articles` prunes its partitions at plan time.

    Parameters: :q, :model, :k (rows returned), :fetch (rows taken from the index scan,
    at least :k; see search_vector), and :since when `has_since`. `kind` is the type the
    model's index casts to ('halfvec' or 'vector').
    """
    expr, _ = index_expression(info, kind)  # e.g. "(embedding::halfvec(1536))"
    cast = expr[len("(embedding::") : -1]  # e.g. "halfvec(1536)"
    column = f"(e.embedding::{cast})"
    query = f"CAST(CAST(:q AS vector) AS {cast})"
    since_e = "AND e.published_at >= :since" if has_since else ""
    since_a = "AND a.published_at >= :since" if has_since else ""
    return f"""
        SELECT a.id, a.published_at, a.title, n.distance
        FROM (
            SELECT e.article_id, e.published_at, {column} <=> {query} AS distance
            FROM article_embeddings e
            WHERE e.model = :model {since_e}
            ORDER BY {column} <=> {query}
            LIMIT :fetch
        ) n
        JOIN articles a ON a.id = n.article_id AND a.published_at = n.published_at {since_a}
        ORDER BY n.distance
        LIMIT :k
    """


def apply_search_settings(
    conn: Connection, ef_search: int, *, filtered: bool, info: ModelInfo | None = None
) -> str | None:
    """Session settings for one search, local to the caller's transaction.

    - hnsw.ef_search: the candidate list size (recall against latency).
    - hnsw.iterative_scan for filtered queries, so a date bound cannot starve the top k.
    - plan_cache_mode = force_custom_plan: the partial index matches only when the planner
      sees the model name; a generic plan of a prepared statement (psycopg prepares after
      5 runs) cannot use it.
    - enable_seqscan = off: the vectors (6 KB at 1536 dims) live out of line in TOAST, and
      the planner's sequential-scan cost ignores detoasting them, so at some ef_search
      values it prefers a parallel sequential scan: measured 285 ms instead of 6 ms at 100k
      rows (docs/benchmarks.md). Only a discouragement: with no usable index the scan
      still runs.
    - enable_sort = off: likewise for sorting every row of a model (the planner picks it
      for models with a few thousand rows, where its HNSW cost estimate is pessimistic);
      searches then behave the same at every size. The final sort of the k rows remains.

    All in one statement (set_config(..., is_local => true) is SET LOCAL): one round trip
    instead of five, about 1 ms of a 10 ms search at 100k x 1536 (docs/benchmarks.md).
    With `info`, the same statement returns the type the model's built index casts to
    (an index built before HNSW_INDEX_TYPE changed keeps serving until it is replaced).
    """
    values = {
        "hnsw.ef_search": str(int(ef_search)),
        "plan_cache_mode": "force_custom_plan",
        "enable_seqscan": "off",
        "enable_sort": "off",
    }
    if filtered:
        values["hnsw.iterative_scan"] = "relaxed_order"
    calls = ", ".join(f"set_config('{name}', :v{i}, true)" for i, name in enumerate(values))
    params: dict[str, Any] = {f"v{i}": value for i, value in enumerate(values.values())}
    if info is None:
        conn.execute(text(f"SELECT {calls}"), params)
        return None
    params |= {"index_name": index_name(info.name), "replacement_name": replacement_name(info.name)}
    row = conn.execute(text(f"SELECT ({BUILT_DEFINITION_SQL}), {calls}"), params).one()
    return kind_of_definition(row[0])


def search_vector(
    conn: Connection,
    info: ModelInfo,
    vector: Any,
    *,
    k: int = 5,
    since: datetime | None = None,
    ef_search: int = 100,
    fetch: int | None = None,
) -> list[Hit]:
    """Top-k by cosine distance; iterative scan keeps filtered queries complete (pgvector 0.8).

    `fetch` rows are taken from the index scan (default k). Filtered (`since`), a relaxed
    iterative scan hands out matching rows only roughly in distance order, so a larger
    `fetch` (e.g. ef_search) raises recall, at a cost: at 100k x 1536 with a 30-day
    filter, fetch = ef_search = 100 gave recall 1.0 in ~45 ms against 0.9 in ~12 ms for
    fetch = k (docs/benchmarks.md).
    """
    ef = max(int(ef_search), k)
    built = apply_search_settings(conn, ef, filtered=since is not None, info=info)
    kind = built or index_kind(info.dimensions)  # no index: a (slow) exact scan either way
    params: dict[str, Any] = {
        "q": np.asarray(vector, dtype=np.float32),
        "model": info.name,
        "k": k,
        "fetch": max(k, fetch or k),
    }
    if since is not None:
        params["since"] = since
    rows = conn.execute(text(search_sql(info, has_since=since is not None, kind=kind)), params)
    return [Hit(r[0], r[1], r[2], float(r[3])) for r in rows]


def _require_index(info: ModelInfo) -> None:
    if not info.is_indexed:
        raise PermanentError(
            f"model {info.name} is being backfilled and its index is not built yet; "
            f"search it after `embedder maintain hnsw --model {info.name}`"
        )


def search_text(
    deps: Deps, query: str, *, model: str | None = None, k: int = 5, since: datetime | None = None
) -> list[Hit]:
    """Embed `query` with the model's provider and return the k nearest articles."""
    info = deps.model(model)
    _require_index(info)
    cleaned = clean_text(query).strip()
    if not cleaned:
        raise PermanentError("search text is empty")
    vector = deps.embedder(info).embed([cleaned])[0]
    with deps.engine.begin() as conn:
        return search_vector(
            conn, info, vector, k=k, since=since, ef_search=deps.settings.hnsw_ef_search
        )


def search_like(
    deps: Deps,
    article_id: int,
    *,
    model: str | None = None,
    k: int = 5,
    since: datetime | None = None,
) -> list[Hit]:
    """The k articles nearest to article `article_id`'s stored vector (itself excluded)."""
    info = deps.model(model)
    _require_index(info)
    with deps.engine.begin() as conn:
        row = conn.execute(
            text("SELECT embedding FROM article_embeddings WHERE article_id = :a AND model = :m"),
            {"a": article_id, "m": info.name},
        ).one_or_none()
        if row is None:
            raise PermanentError(f"article {article_id} has no vector for model {info.name}")
        stored = row[0].to_numpy() if hasattr(row[0], "to_numpy") else row[0]
        hits = search_vector(
            conn, info, stored, k=k + 1, since=since, ef_search=deps.settings.hnsw_ef_search
        )
    return [h for h in hits if h.article_id != article_id][:k]
