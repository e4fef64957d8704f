"""Nearest-article search that uses each model's own HNSW index."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from worker import repository
from worker.deps import Deps
from worker.errors import PermanentError
from worker.hnsw import (
    BUILT_DEFINITION_SQL,
    built_definition_params,
    index_cast,
    index_kind,
    kind_of_definition,
)
from worker.repository import Hit, ModelInfo
from worker.text import clean_text


def search_sql(info: ModelInfo, *, has_since: bool, kind: str) -> str:
    """The statement search runs for `info` when its index casts to `kind` (repository's)."""
    return repository.nearest_sql(index_cast(info, kind), has_since=has_since)


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
    params |= built_definition_params(info.name)
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
    return repository.nearest_articles(
        conn,
        info.name,
        index_cast(info, kind),
        np.asarray(vector, dtype=np.float32),
        k=k,
        fetch=max(k, fetch or k),
        since=since,
    )


def format_hits(hits: list[Hit], *, title_width: int | None = None) -> list[str]:
    """Hits as labelled lines: a header, then similarity (1 - cosine distance; higher is
    closer, 1 = same direction), article id, publication date and title."""
    lines = [f"{'similarity':>10}  {'article':>8}  {'published':<10}  title"]
    for hit in hits:
        title = hit.title if title_width is None else hit.title[:title_width]
        lines.append(
            f"{1.0 - hit.distance:>10.4f}  {hit.article_id:>8}  "
            f"{hit.published_at:%Y-%m-%d}  {title}"
        )
    return lines


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
        stored = repository.stored_vector(conn, article_id, info.name)
        if stored is None:
            raise PermanentError(f"article {article_id} has no vector for model {info.name}")
        hits = search_vector(
            conn, info, stored, k=k + 1, since=since, ef_search=deps.settings.hnsw_ef_search
        )
    return [h for h in hits if h.article_id != article_id][:k]
