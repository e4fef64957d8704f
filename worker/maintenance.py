"""Maintenance jobs: partitions ahead, per-model HNSW builds and rebuilds, under advisory locks.

The HNSW vocabulary (names, kinds, expressions, what is built) is worker.hnsw.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker import metrics, partitions, repository, schema
from worker.config import Settings, check_model_name, check_model_settings
from worker.deps import Deps
from worker.hnsw import (
    built_kind,
    index_expression,
    index_kind,
    index_name,
    index_state,
    replacement_name,
)
from worker.repository import ModelInfo

logger = logging.getLogger(__name__)

# How often a build's progress (pg_stat_progress_create_index) is sampled.
PROGRESS_INTERVAL_S = 0.5


@dataclass
class MaintenanceResult:
    job: str
    is_locked_out: bool = False
    created: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    dropped_invalid: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # partitions removed by retention
    churn: dict[str, float] = field(default_factory=dict)  # model -> churn ratio since build
    # model -> when its index was built, for indexes the forced rebuild left alone because
    # they were built within HNSW_REBUILD_MIN_INTERVAL_H
    recently_built: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # model -> the error that stopped it
    durations: dict[str, float] = field(default_factory=dict)  # index -> build seconds
    progress: list[dict[str, Any]] = field(default_factory=list)  # phases seen while building
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
    """Create this month's and the next N months' partitions (idempotent, lock-guarded).

    With PARTITION_RETENTION_MONTHS > 0, partitions older than that are then detached and
    dropped (in a second transaction, so a failed drop never undoes the creation).
    """
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
        keep = deps.settings.partition_retention_months
        if keep > 0:
            with conn.begin():
                result.dropped = partitions.drop_old_partitions(conn, keep)
    result.seconds = time.perf_counter() - started
    metrics.MAINTENANCE_SECONDS.labels(job="partitions").observe(result.seconds)
    if result.created:
        logger.info("partitions created: %s", ", ".join(result.created))
    return result


def _quote_literal(value: str) -> str:
    """A SQL string constant for any text: the E'' form reads the same whatever
    standard_conforming_strings says (backslashes and quotes doubled)."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ddl(conn: Connection, statement: str) -> None:
    """Run a statement exactly as written, with no parameters.

    Through text() a model name in a literal is parsed: `'nice-model :x'` asks for a bind
    parameter x, and a `%` is doubled for the driver. exec_driver_sql with no_parameters
    hands the text to psycopg untouched (which then parses no placeholders either).
    """
    conn.exec_driver_sql(statement, execution_options={"no_parameters": True})


def create_index_sql(
    info: ModelInfo,
    settings: Settings,
    *,
    concurrently: bool = True,
    kind: str | None = None,
    name: str | None = None,
) -> str:
    expr, ops = index_expression(
        info, kind or index_kind(info.dimensions, settings.hnsw_index_type)
    )
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS "
        f"{_quote_ident(name or index_name(info.name))} "
        f"ON article_embeddings USING hnsw ({expr} {ops}) "
        f"WITH (m = {int(settings.hnsw_m)}, ef_construction = {int(settings.hnsw_ef_construction)}) "
        f"WHERE model = {_quote_literal(info.name)}"
    )


def _autocommit(engine: Engine) -> Connection:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _session_settings(conn: Connection, settings: Settings) -> None:
    _ddl(conn, "SET maintenance_work_mem = " + _quote_literal(settings.maintenance_work_mem))
    workers = max(0, int(settings.maintenance_parallel_workers))
    _ddl(conn, f"SET max_parallel_maintenance_workers = {workers}")
    _ddl(conn, "SET statement_timeout = 0")


def ensure_model_index(engine: Engine, info: ModelInfo, settings: Settings) -> MaintenanceResult:
    """Build the model's HNSW index concurrently if missing; replace an invalid leftover."""
    result = MaintenanceResult(job="hnsw_ensure")
    name = index_name(info.name)
    with _autocommit(engine) as conn, advisory_lock(conn, f"hnsw:{info.name}") as held:
        if not held:
            result.is_locked_out = True
            return result
        result.dropped_invalid += drop_invalid_leftovers(conn, name)
        _settle_replacement(conn, info)
        if index_state(conn, name) != "valid":
            _session_settings(conn, settings)
            with _ProgressWatcher(engine, conn, name) as watcher:
                started = time.perf_counter()
                _ddl(conn, create_index_sql(info, settings))
                seconds = time.perf_counter() - started
            record_build(conn, info, seconds)
            logger.info("built %s in %.1fs", name, seconds)
            result.created.append(name)
            result.durations[name] = seconds
            result.progress += watcher.samples
            result.seconds = seconds
    return result


def _settle_replacement(conn: Connection, info: ModelInfo) -> None:
    """Finish or undo a replacement interrupted between its build and its swap.

    The old index gone and the replacement valid: the replacement takes the name.
    Otherwise a leftover replacement is dropped (the next rebuild starts over).
    """
    temp, name = replacement_name(info.name), index_name(info.name)
    state = index_state(conn, temp)
    if state == "missing":
        return
    if state == "valid" and index_state(conn, name) == "missing":
        logger.warning("finishing an interrupted replacement of %s", name)
        _ddl(conn, f"ALTER INDEX {_quote_ident(temp)} RENAME TO {_quote_ident(name)}")
        return
    logger.warning("dropping %s left by an interrupted replacement", temp)
    _ddl(conn, f"DROP INDEX CONCURRENTLY IF EXISTS {_quote_ident(temp)}")


def drop_invalid_leftovers(conn: Connection, name: str) -> list[str]:
    """Drop invalid copies of index `name`: itself, or REINDEX's `_ccnew`/`_ccold` leftovers.

    A CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY that fails or is cancelled leaves an
    index marked invalid: never used by queries, yet still updated by every write. `conn`
    must be in autocommit mode (DROP INDEX CONCURRENTLY).
    """
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE NOT i.indisvalid AND c.relnamespace = current_schema()::regnamespace "
            "AND (c.relname = :n OR c.relname ~ ('^' || :n || '_cc(new|old)[0-9]*$'))"
        ),
        {"n": name},
    )
    dropped = [r[0] for r in rows]
    for leftover in dropped:
        logger.warning("dropping invalid index %s left by an interrupted build", leftover)
        _ddl(conn, f"DROP INDEX CONCURRENTLY IF EXISTS {_quote_ident(leftover)}")
    return dropped


@dataclass(frozen=True)
class TableCounters:
    """article_embeddings' cumulative counters from pg_stat_user_tables."""

    live_rows: int
    tup_upd: int
    tup_del: int


def table_counters(conn: Connection) -> TableCounters:
    row = conn.execute(
        text(
            "SELECT coalesce(n_live_tup, 0), coalesce(n_tup_upd, 0), coalesce(n_tup_del, 0) "
            "FROM pg_stat_user_tables WHERE relid = 'article_embeddings'::regclass"
        )
    ).one_or_none()
    return TableCounters(*row) if row is not None else TableCounters(0, 0, 0)


def record_build(conn: Connection, info: ModelInfo, seconds: float | None) -> None:
    """Remember when the model's index was built and the table counters at that moment."""
    counters = table_counters(conn)
    repository.record_index_build(
        conn,
        info.name,
        index_name(info.name),
        seconds,
        counters.live_rows,
        counters.tup_upd,
        counters.tup_del,
    )


@dataclass(frozen=True)
class Churn:
    model: str
    built_at: Any
    changed: int  # updates + deletes on article_embeddings since the build
    live_rows: int
    ratio: float


def hnsw_churn(conn: Connection, info: ModelInfo) -> Churn | None:
    """Updates + deletes since the model's last index build, as a share of the live rows.

    Derived from pg_stat_user_tables' cumulative n_tup_upd / n_tup_del on
    article_embeddings, minus the snapshot stored in hnsw_index_builds at the last build
    (migration 0003). Trade-offs, chosen over counting rows ourselves: the counters cost
    nothing to keep, but they are table-wide (PostgreSQL does not count per partial index),
    so heavy churn of one model also triggers the other models' rebuilds: conservative,
    never late. After a statistics reset (counters lower than the snapshot) the counters
    since the reset are taken as the churn. None when the index has no recorded build.
    """
    build = repository.index_build(conn, info.name)
    if build is None:
        return None
    built_at, live_then, upd_then, del_then = build
    now = table_counters(conn)
    if now.tup_upd < upd_then or now.tup_del < del_then:  # statistics were reset
        upd_then = del_then = 0
    changed = (now.tup_upd - upd_then) + (now.tup_del - del_then)
    live = max(int(live_then), now.live_rows, 1)
    return Churn(info.name, built_at, changed, live, changed / live)


class _ProgressWatcher:
    """Samples pg_stat_progress_create_index for the building session from another one."""

    def __init__(
        self, engine: Engine, building: Connection, name: str, interval_s: float | None = None
    ) -> None:
        self.engine = engine
        self.pid = int(building.execute(text("SELECT pg_backend_pid()")).scalar_one())
        self.name = name
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{name}", daemon=True)

    def __enter__(self) -> _ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            with _autocommit(self.engine) as conn:
                while not self._stop.is_set():
                    row = conn.execute(
                        text(
                            "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
                            "FROM pg_stat_progress_create_index WHERE pid = :p"
                        ),
                        {"p": self.pid},
                    ).one_or_none()
                    if row is not None and (
                        not self.samples or self.samples[-1]["phase"] != row[0]
                    ):
                        sample = {
                            "index": self.name,
                            "at_s": round(time.perf_counter() - started, 2),
                            "phase": row[0],
                            "blocks": [row[1], row[2]],
                            "tuples": [row[3], row[4]],
                        }
                        self.samples.append(sample)
                        logger.info(
                            "building %s: %s (blocks %s/%s, tuples %s/%s) after %.1fs",
                            self.name,
                            row[0],
                            row[1],
                            row[2],
                            row[3],
                            row[4],
                            sample["at_s"],
                        )
                    self._stop.wait(self.interval_s)
        except Exception:  # progress is a nicety: never let it break a rebuild
            logger.debug("progress watcher for %s stopped", self.name, exc_info=True)


def migrate(deps: Deps, *, register_default: bool = True) -> None:
    """Apply the migrations (worker.schema), then register the configured model and build
    its index: what `embedder migrate` does."""
    schema.upgrade(deps.engine)
    if register_default:
        s = deps.settings
        register_model(deps, s.embedding_model, s.embedding_dimensions, s.embedding_provider)


def register_model(
    deps: Deps,
    name: str,
    dimensions: int,
    provider: str | None = None,
    *,
    build_index: bool = True,
    base_url: str | None = None,
    api_key_env: str | None = None,
    batch_max: int | None = None,
    batch_max_tokens: int | None = None,
) -> ModelInfo:
    """Add a model to the registry (a row) and build its HNSW index; idempotent.

    The row says how the model is embedded: `provider` (default EMBEDDING_PROVIDER),
    `base_url`, `api_key_env` (the NAME of the variable holding the key; a value that is not
    a variable name is refused with ConfigError) and per-request limits `batch_max` /
    `batch_max_tokens`; each None means the process's setting, read when the model is
    embedded. For a model already registered, any of these four given must match its row.

    build_index=False registers a new model in backfill mode: vectors are written with no
    index to maintain per insert, searches of it are refused, and the index is built once
    when its backlog is done (rebuild_hnsw) or on demand (`embedder maintain hnsw --model`).
    A model too wide for any HNSW index (> 4000 dimensions) is refused before it is added,
    and so is a name outside the rule of config.check_model_name (ConfigError).
    """
    check_model_name(name)
    index_kind(dimensions, deps.settings.hnsw_index_type)  # raises ValueError if impossible
    provider = provider or deps.settings.embedding_provider
    own = {
        "base_url": base_url,
        "api_key_env": api_key_env,
        "batch_max": batch_max,
        "batch_max_tokens": batch_max_tokens,
    }
    # ConfigError (naming the option, never echoing a key) before anything is written.
    check_model_settings(
        provider,
        base_url=base_url,
        api_key_env=api_key_env,
        batch_max=batch_max,
        batch_max_tokens=batch_max_tokens,
    )
    with deps.engine.begin() as conn:
        info = repository.insert_model(
            conn,
            name,
            dimensions,
            provider,
            is_indexed=build_index,
            base_url=base_url,
            api_key_env=api_key_env,
            batch_max=batch_max,
            batch_max_tokens=batch_max_tokens,
        )
    if info.dimensions != dimensions:
        raise ValueError(
            f"model {name!r} is registered with {info.dimensions} dimensions, not {dimensions}"
        )
    differ = [k for k, v in own.items() if v is not None and getattr(info, k) != v]
    if differ:
        raise ValueError(
            f"model {name!r} is registered with another {', '.join(differ)}; registering "
            "does not change a row (edit its embedding_models row, then restart the workers)"
        )
    if build_index and info.is_indexed:
        ensure_model_index(deps.engine, info, deps.settings)
    deps.forget_models()
    return info


def rebuild_hnsw(
    deps: Deps, *, force: bool = False, model: str | None = None, min_interval_s: float = 0.0
) -> MaintenanceResult:
    """REINDEX CONCURRENTLY each model's HNSW index (writes keep flowing meanwhile).

    An index whose type differs from HNSW_INDEX_TYPE (vector built before halfvec became
    the default) is replaced instead, whatever its churn: built concurrently under a
    temporary name, then swapped in; searches keep using the old one until the swap.
    force=False (the daily beat check) rebuilds only indexes whose churn since their last
    build (see hnsw_churn) reaches HNSW_REBUILD_CHURN_RATIO; force=True (weekly, and
    `embedder maintain hnsw`) rebuilds every one. Missing indexes and invalid leftovers of
    interrupted builds are built or dropped either way. A model in backfill mode
    (is_indexed false) gets its index once its backlog is done, or when named in `model`.

    min_interval_s > 0 (the weekly beat: HNSW_REBUILD_MIN_INTERVAL_H) makes the forced
    rebuild skip an index whose last build ended that recently, checked under the model's
    lock: two beats during a deploy send it twice, and the advisory lock only keeps the
    two runs from overlapping. `embedder maintain hnsw` passes 0: on demand it rebuilds.

    One model's failure (listed in `failed`, logged) does not stop the others.
    """
    result = MaintenanceResult(job="hnsw_rebuild")
    started = time.perf_counter()
    with deps.engine.connect() as conn:
        models = [m for m in repository.list_models(conn) if model is None or m.name == model]
    for info in models:
        try:
            _rebuild_model(
                deps,
                info,
                force=force,
                is_requested=model == info.name,
                min_interval_s=min_interval_s if force else 0.0,
                result=result,
            )
        except Exception as exc:
            result.failed[info.name] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            logger.error(
                "HNSW maintenance of model %s failed (%s); going on with the other models",
                info.name,
                result.failed[info.name],
            )
            logger.debug("HNSW maintenance of model %s failed", info.name, exc_info=True)
    result.seconds = time.perf_counter() - started
    metrics.MAINTENANCE_SECONDS.labels(job="hnsw_rebuild").observe(result.seconds)
    return result


def _rebuild_model(
    deps: Deps,
    info: ModelInfo,
    *,
    force: bool,
    is_requested: bool,
    min_interval_s: float,
    result: MaintenanceResult,
) -> None:
    """rebuild_hnsw for one model."""
    settings = deps.settings
    if not info.is_indexed:
        _finish_backfill(deps, info, is_requested=is_requested, result=result)
        return
    name = index_name(info.name)
    wanted = index_kind(info.dimensions, settings.hnsw_index_type)
    with _autocommit(deps.engine) as conn:
        if index_state(conn, replacement_name(info.name)) != "missing":
            with advisory_lock(conn, f"hnsw:{info.name}") as held:
                if held:  # else a replacement is being built right now: leave it
                    _settle_replacement(conn, info)
        state = index_state(conn, name)
        churn = hnsw_churn(conn, info) if state == "valid" else None
        if state == "valid" and churn is None:
            record_build(conn, info, None)  # built before tracking: start counting now
        built = built_kind(conn, info) if state == "valid" else None
    if churn is not None:
        result.churn[info.name] = round(churn.ratio, 4)
    if state != "valid":
        # Missing or left invalid by an interrupted build: build it (replacing a leftover).
        ensured = ensure_model_index(deps.engine, info, settings)
        result.created += ensured.created
        result.dropped_invalid += ensured.dropped_invalid
        result.durations.update(ensured.durations)
        result.progress += ensured.progress
        result.is_locked_out = result.is_locked_out or ensured.is_locked_out
        return
    if built is not None and built != wanted:
        logger.info("%s is a %s index; replacing it with a %s one", name, built, wanted)
        if not _replace(deps, info, wanted, result):
            result.is_locked_out = True
        return
    due = force or (
        churn is not None
        and settings.hnsw_rebuild_churn_ratio > 0
        and churn.ratio >= settings.hnsw_rebuild_churn_ratio
    )
    if not due:
        return
    if churn is not None and not force:
        logger.info(
            "%s: churn %.2f since %s reaches %.2f; rebuilding",
            name,
            churn.ratio,
            churn.built_at,
            settings.hnsw_rebuild_churn_ratio,
        )
    if not _reindex(deps, info, name, result, min_interval_s=min_interval_s):
        result.is_locked_out = True


def _finish_backfill(
    deps: Deps, info: ModelInfo, *, is_requested: bool, result: MaintenanceResult
) -> bool:
    """Build a backfilled model's index once its backlog is done (or when asked by name),
    then serve searches from it. Returns whether the index was built."""
    with deps.engine.connect() as conn:
        open_jobs = repository.open_job_count(conn, info.name)
    if open_jobs and not is_requested:
        logger.info(
            "%s: backfill in progress (%s open jobs); index build deferred", info.name, open_jobs
        )
        return False
    ensured = ensure_model_index(deps.engine, info, deps.settings)
    result.created += ensured.created
    result.durations.update(ensured.durations)
    result.progress += ensured.progress
    if ensured.is_locked_out:
        result.is_locked_out = True
        return False
    with deps.engine.begin() as conn:
        repository.mark_indexed(conn, info.name)
    deps.forget_models()
    logger.info("%s: backfill done, index built; searches now served", info.name)
    return True


def _replace(deps: Deps, info: ModelInfo, kind: str, result: MaintenanceResult) -> bool:
    """Build the model's index anew as `kind` beside the old one, then swap them.

    CREATE INDEX CONCURRENTLY under replacement_name, DROP INDEX CONCURRENTLY the old one,
    RENAME: writes never stop, and searches find a valid index of one type or the other at
    every moment (search reads the type of whichever is built). False when locked out.
    """
    name, temp = index_name(info.name), replacement_name(info.name)
    with _autocommit(deps.engine) as conn, advisory_lock(conn, f"hnsw:{info.name}") as held:
        if not held:
            return False
        result.dropped_invalid += drop_invalid_leftovers(conn, name)
        _settle_replacement(conn, info)
        _session_settings(conn, deps.settings)
        with _ProgressWatcher(deps.engine, conn, temp) as watcher:
            started = time.perf_counter()
            _ddl(conn, create_index_sql(info, deps.settings, kind=kind, name=temp))
            seconds = time.perf_counter() - started
        _ddl(conn, f"DROP INDEX CONCURRENTLY IF EXISTS {_quote_ident(name)}")
        _ddl(conn, f"ALTER INDEX {_quote_ident(temp)} RENAME TO {_quote_ident(name)}")
        record_build(conn, info, seconds)
        logger.info("replaced %s with a %s index built in %.1fs", name, kind, seconds)
        result.rebuilt.append(name)
        result.durations[name] = seconds
        result.progress += watcher.samples
        return True


def _reindex(
    deps: Deps, info: ModelInfo, name: str, result: MaintenanceResult, *, min_interval_s: float
) -> bool:
    """REINDEX INDEX CONCURRENTLY under the model's lock; False when someone else holds it.

    With min_interval_s > 0, an index built that recently is left alone (recorded in
    `recently_built`): read under the lock, so a run that waited for another's build sees it.
    """
    with _autocommit(deps.engine) as conn, advisory_lock(conn, f"hnsw:{info.name}") as held:
        if not held:
            return False
        if min_interval_s > 0:
            built_at = repository.recent_build(conn, info.name, min_interval_s)
            if built_at is not None:
                logger.info(
                    "%s was built at %s, within HNSW_REBUILD_MIN_INTERVAL_H (%.4gh); "
                    "not rebuilding it again",
                    name,
                    built_at,
                    min_interval_s / 3600,
                )
                result.recently_built[info.name] = built_at.isoformat()
                return True
        result.dropped_invalid += drop_invalid_leftovers(conn, name)
        _session_settings(conn, deps.settings)
        with _ProgressWatcher(deps.engine, conn, name) as watcher:
            started = time.perf_counter()
            _ddl(conn, f"REINDEX INDEX CONCURRENTLY {_quote_ident(name)}")
            seconds = time.perf_counter() - started
        record_build(conn, info, seconds)
        logger.info("rebuilt %s in %.1fs", name, seconds)
        result.rebuilt.append(name)
        result.durations[name] = seconds
        result.progress += watcher.samples
        return True
