"""Maintenance: partitions ahead, per-model HNSW indexes, rebuilds; guarded by advisory locks."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker import metrics, partitions, repository
from worker.config import Settings
from worker.deps import Deps
from worker.repository import ModelInfo

logger = logging.getLogger(__name__)

# pgvector's HNSW on `vector` supports up to 2000 dimensions; above that, index a halfvec cast.
HNSW_VECTOR_MAX_DIMS = 2000


@dataclass
class MaintenanceResult:
    job: str
    is_locked_out: bool = False
    created: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    dropped_invalid: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"embedder:{name}".encode()).digest()[:8], "big", signed=True
    )


@contextmanager
def advisory_lock(conn: Connection, name: str) -> Iterator[bool]:
    """Try a session advisory lock on `conn`; yields whether we hold it. Never waits."""
    key = _lock_key(name)
    held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
    try:
        yield held
    finally:
        if held:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def ensure_partitions(deps: Deps, months_ahead: int | None = None) -> MaintenanceResult:
    """Create this month's and the next N months' partitions (idempotent, lock-guarded)."""
    result = MaintenanceResult(job="partitions")
    started = time.perf_counter()
    ahead = deps.settings.partitions_ahead if months_ahead is None else months_ahead
    with deps.engine.connect() as conn, advisory_lock(conn, "partitions") as held:
        conn.commit()
        if not held:
            result.is_locked_out = True
            logger.info("partitions: another maintenance run holds the lock; skipping")
            return result
        with conn.begin():
            result.created = partitions.ensure_partitions(conn, ahead)
    result.seconds = time.perf_counter() - started
    metrics.MAINTENANCE_SECONDS.labels(job="partitions").observe(result.seconds)
    if result.created:
        logger.info("partitions created: %s", ", ".join(result.created))
    return result


def index_name(model: str) -> str:
    """`article_embeddings_<slug>_hnsw_cosine_idx`, within PostgreSQL's 63-byte limit."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
    digest = hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"article_embeddings_{slug[:18]}_{digest}_hnsw_cosine_idx"  # ≤ 63 bytes


def index_expression(info: ModelInfo) -> tuple[str, str]:
    """(indexed expression, operator class) for a model; search must use the same expression."""
    if info.dimensions > HNSW_VECTOR_MAX_DIMS:
        return f"(embedding::halfvec({info.dimensions}))", "halfvec_cosine_ops"
    return f"(embedding::vector({info.dimensions}))", "vector_cosine_ops"


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def create_index_sql(info: ModelInfo, settings: Settings, *, concurrently: bool = True) -> str:
    expr, ops = index_expression(info)
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {index_name(info.name)} "
        f"ON article_embeddings USING hnsw ({expr} {ops}) "
        f"WITH (m = {int(settings.hnsw_m)}, ef_construction = {int(settings.hnsw_ef_construction)}) "
        f"WHERE model = {_quote_literal(info.name)}"
    )


def index_state(conn: Connection, name: str) -> str:
    """'missing', 'invalid' (left by a failed concurrent build) or 'valid'."""
    row = conn.execute(
        text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :n AND c.relnamespace = current_schema()::regnamespace"
        ),
        {"n": name},
    ).one_or_none()
    if row is None:
        return "missing"
    return "valid" if row[0] else "invalid"


def _autocommit(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _session_settings(conn: Connection, settings: Settings) -> None:
    conn.execute(
        text("SET maintenance_work_mem = " + _quote_literal(settings.maintenance_work_mem))
    )
    conn.execute(text("SET statement_timeout = 0"))


def ensure_model_index(engine: Engine, info: ModelInfo, settings: Settings) -> MaintenanceResult:
    """Build the model's HNSW index concurrently if missing; replace an invalid leftover."""
    result = MaintenanceResult(job="hnsw_ensure")
    name = index_name(info.name)
    with _autocommit(engine) as conn, advisory_lock(conn, f"hnsw:{info.name}") as held:
        if not held:
            result.is_locked_out = True
            return result
        state = index_state(conn, name)
        if state == "invalid":
            logger.warning("dropping invalid index %s left by an interrupted build", name)
            conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
            result.dropped_invalid.append(name)
        if state != "valid":
            started = time.perf_counter()
            _session_settings(conn, settings)
            conn.execute(text(create_index_sql(info, settings)))
            result.created.append(name)
            result.seconds = time.perf_counter() - started
    return result


def register_model(
    deps: Deps, name: str, dimensions: int, provider: str | None = None, *, build_index: bool = True
) -> ModelInfo:
    """Add a model to the registry (a row) and build its HNSW index; idempotent."""
    with deps.engine.begin() as conn:
        info = repository.insert_model(
            conn, name, dimensions, provider or deps.settings.embedding_provider
        )
    if info.dimensions != dimensions:
        raise ValueError(
            f"model {name!r} is registered with {info.dimensions} dimensions, not {dimensions}"
        )
    if build_index and info.is_indexed:
        ensure_model_index(deps.engine, info, deps.settings)
    deps.forget_models()
    return info


def rebuild_hnsw(deps: Deps, *, force: bool = False, model: str | None = None) -> MaintenanceResult:
    """REINDEX CONCURRENTLY each model's HNSW index (writes keep flowing meanwhile)."""
    result = MaintenanceResult(job="hnsw_rebuild")
    started = time.perf_counter()
    with deps.engine.connect() as conn:
        models = [m for m in repository.list_models(conn) if model is None or m.name == model]
    for info in models:
        if not info.is_indexed:
            continue
        name = index_name(info.name)
        with _autocommit(deps.engine) as conn:
            state = index_state(conn, name)
        if state != "valid":
            # Missing or left invalid by an interrupted build: build it (replacing a leftover).
            ensured = ensure_model_index(deps.engine, info, deps.settings)
            result.created += ensured.created
            result.dropped_invalid += ensured.dropped_invalid
            result.is_locked_out = result.is_locked_out or ensured.is_locked_out
        elif force:
            if _reindex(deps, info, name):
                result.rebuilt.append(name)
            else:
                result.is_locked_out = True
    result.seconds = time.perf_counter() - started
    metrics.MAINTENANCE_SECONDS.labels(job="hnsw_rebuild").observe(result.seconds)
    return result


def _reindex(deps: Deps, info: ModelInfo, name: str) -> bool:
    """REINDEX INDEX CONCURRENTLY under the model's lock; False when someone else holds it."""
    with _autocommit(deps.engine) as conn, advisory_lock(conn, f"hnsw:{info.name}") as held:
        if not held:
            return False
        _session_settings(conn, deps.settings)
        started = time.perf_counter()
        conn.execute(text(f"REINDEX INDEX CONCURRENTLY {name}"))
        logger.info("rebuilt %s in %.1fs", name, time.perf_counter() - started)
        return True
