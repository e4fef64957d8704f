"""Engine and pool: one bounded SQLAlchemy QueuePool per process, created after fork.

Mapping of the seed's pgxpool settings onto SQLAlchemy (docs/operations.md has the table):
MaxConns = DB_POOL_SIZE + DB_MAX_OVERFLOW (hard bound; checkouts past it wait
DB_POOL_TIMEOUT_S, then fail), MinConns ≈ DB_POOL_SIZE (kept open once created),
MaxConnLifetime = DB_POOL_RECYCLE_S, MaxConnIdleTime = DB_POOL_IDLE_S (checked at
checkout), HealthCheckPeriod → DB_POOL_PRE_PING (a ping at every checkout instead of a timer).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from worker.config import Settings

logger = logging.getLogger(__name__)

_IDLE_SINCE = "embedder_idle_since"


@dataclass(frozen=True)
class PoolStats:
    size: int
    checked_out: int
    idle: int
    overflow: int
    max_connections: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def make_engine(settings: Settings, *, application_name: str | None = None) -> Engine:
    """A pooled engine bounded by pool_size + max_overflow, with pgvector registered."""
    connect_args: dict[str, Any] = {
        "application_name": application_name or settings.db_application_name,
        "connect_timeout": 10,
        "prepare_threshold": settings.db_prepare_threshold,
    }
    if settings.db_statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    engine = create_engine(
        settings.sqlalchemy_url,
        poolclass=QueuePool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=settings.db_pool_recycle_s,
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_use_lifo=True,  # lets surplus connections go idle, so the idle limit closes them
        connect_args=connect_args,
        hide_parameters=True,  # never log vectors or article text
    )
    _install_pool_hooks(engine, settings.db_pool_idle_s)
    return engine


def _install_pool_hooks(engine: Engine, idle_s: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: psycopg.Connection[Any], _record: ConnectionPoolEntry) -> None:
        register_vector_types(dbapi_conn)

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: object, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_conn: object, record: ConnectionPoolEntry, _proxy: object) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_s > 0 and idle_since is not None and time.monotonic() - idle_since > idle_s:
            # The pool discards this connection and retries the checkout with a new one.
            record.info.pop(_IDLE_SINCE, None)
            raise exc.DisconnectionError("connection idle longer than DB_POOL_IDLE_S")


def register_vector_types(dbapi_conn: psycopg.Connection[Any]) -> None:
    """Register pgvector's binary dumpers/loaders; a no-op before the extension exists."""
    from pgvector.psycopg import register_vector

    try:
        register_vector(dbapi_conn)
    except psycopg.ProgrammingError:
        pass  # "vector type not found": the database is not migrated yet
    finally:
        if not dbapi_conn.autocommit:
            dbapi_conn.rollback()


def pool_stats(engine: Engine) -> PoolStats:
    """A snapshot of this process's pool: size, checked out, idle, overflow, bound."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return PoolStats(
        size=pool.size(),
        checked_out=pool.checkedout(),
        idle=pool.checkedin(),
        overflow=max(pool.overflow(), 0),
        max_connections=pool.size() + pool._max_overflow,
    )


def ping(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
