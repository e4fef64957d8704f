"""Nearest-article search that uses each model's own HNSW index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, text

from worker.deps import Deps
from worker.errors import PermanentError
from worker.maintenance import index_expression
from worker.repository import ModelInfo
from worker.text import clean_text


@dataclass(frozen=True)
class Hit:
    article_id: int
    published_at: datetime
    title: str
    distance: float


def search_sql(info: ModelInfo, *, has_since: bool) -> str:
    """The query; its ORDER BY expression matches the partial index expression exactly."""
    expr, _ = index_expression(info)  # e.g. "(embedding::vector(1536))"
    kind = expr[len("(embedding::") : -1]  # e.g. "vector(1536)"
    column = f"(e.embedding::{kind})"
    query = f"CAST(CAST(:q AS vector) AS {kind})"
    since = "AND e.published_at >= :since AND a.published_at >= :since" if has_since else ""
    return f"""
        SELECT a.id, a.published_at, a.title, {column} <=> {query} AS distance
        FROM article_embeddings e
        JOIN articles a ON a.id = e.article_id AND a.published_at = e.published_at
        WHERE e.model = :model {since}
        ORDER BY {column} <=> {query}
        LIMIT :k
    """


def search_vector(
    conn: Connection,
    info: ModelInfo,
    vector: Any,
    *,
    k: int = 5,
    since: datetime | None = None,
    ef_search: int = 100,
) -> list[Hit]:
    """Top-k by cosine distance; iterative scan keeps filtered queries complete (pgvector 0.8)."""
    conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(int(ef_search), k)}"))
    if since is not None:
        conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    params: dict[str, Any] = {
        "q": np.asarray(vector, dtype=np.float32),
        "model": info.name,
        "k": k,
    }
    if since is not None:
        params["since"] = since
    rows = conn.execute(text(search_sql(info, has_since=since is not None)), params)
    hits = [Hit(r[0], r[1], r[2], float(r[3])) for r in rows]
    if since is not None:
        hits.sort(key=lambda h: h.distance)  # relaxed_order may return near-sorted rows
    return hits


def search_text(
    deps: Deps, query: str, *, model: str | None = None, k: int = 5, since: datetime | None = None
) -> list[Hit]:
    """Embed `query` with the model's provider and return the k nearest articles."""
    info = deps.model(model)
    if not info.is_indexed:
        raise PermanentError(
            f"model {info.name} is being backfilled and its index is not built yet; "
            "search it after `embedder maintain hnsw`"
        )
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
