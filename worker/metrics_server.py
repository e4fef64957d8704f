"""`embedder metrics-server`: one Prometheus endpoint for a whole prefork worker host.

Celery's prefork children each count in their own process. With PROMETHEUS_MULTIPROC_DIR
set (before prometheus_client is imported, so: in the environment of every worker process,
from the Procfile or compose) each child writes its samples to files in that directory;
this exporter aggregates them (MultiProcessCollector) and adds what no worker can know on
its own, read from PostgreSQL at scrape time: the backlog per model, its oldest age, the
oldest claim in flight, the state of each model's HNSW index, and the dead letters stored.
Wipe the directory when the whole worker fleet on the host restarts (docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from worker import hnsw, repository
from worker.errors import DEAD_LETTER_REASONS

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9808


INDEX_STATES = ("valid", "invalid", "missing")


class BacklogCollector:
    """Gauges read from PostgreSQL on every scrape: the backlog per model, the age of its
    oldest pending item and oldest claim, and the state of its HNSW index."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Any]:
        """The families collect() yields, without a query (registration must not need one)."""
        yield from self._families()

    def _families(self) -> tuple[Any, ...]:
        from prometheus_client.core import GaugeMetricFamily

        return (
            GaugeMetricFamily(
                "embedder_backlog_items", "Pending items per model", labels=["model"]
            ),
            GaugeMetricFamily(
                "embedder_oldest_pending_seconds",
                "Age of the oldest pending item",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "embedder_oldest_in_flight_seconds",
                "Seconds since the oldest claim still in flight was claimed or last renewed by "
                "its worker's heartbeat (0 when none); above JOB_LEASE_S the next claim or the "
                "sweep should have requeued it",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "embedder_jobs",
                "Jobs per model and state (pending, in_flight, failed, skipped)",
                labels=["model", "state"],
            ),
            GaugeMetricFamily(
                "embedder_hnsw_index",
                "1 for the state of the model's HNSW index: valid, invalid (left by an "
                "interrupted concurrent build, or one in progress) or missing",
                labels=["model", "state"],
            ),
            GaugeMetricFamily(
                "embedder_model_indexed",
                "1 if the model serves searches through its index, 0 in backfill mode "
                "(is_indexed: its index is built once the backfill is done)",
                labels=["model"],
            ),
            GaugeMetricFamily("embedder_backlog_up", "1 if the backlog query succeeded"),
        )

    def collect(self) -> Iterator[Any]:
        pending, oldest, in_flight, jobs, index, indexed, up = self._families()
        try:
            with self.engine.connect() as conn:
                models = repository.list_models(conn)
                counts = repository.job_counts(conn)
                states = {m.name: hnsw.index_state(conn, hnsw.index_name(m.name)) for m in models}
        except Exception as exc:  # a scrape must answer even when the database does not
            logger.warning("backlog query failed: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        by_state = repository.by_state(counts)
        claims = repository.oldest_claims(counts)
        for model in sorted({m.name for m in models} | {m for m, _ in by_state}):
            count, age = by_state.get((model, "pending"), (0, 0.0))
            pending.add_metric([model], count)
            oldest.add_metric([model], age)
            in_flight.add_metric([model], claims.get(model, 0.0))
            for state in ("pending", "in_flight", "failed", "skipped"):
                jobs.add_metric([model, state], by_state.get((model, state), (0, 0.0))[0])
        for info in models:
            for state in INDEX_STATES:
                index.add_metric([info.name, state], 1 if states[info.name] == state else 0)
            indexed.add_metric([info.name], 1 if info.is_indexed else 0)
        yield from (pending, oldest, in_flight, jobs, index, indexed, up)


class DeadLetterCollector:
    """embedder_dead_letters{reason}: dead letters stored now (every known reason, 0 too),
    read from PostgreSQL on every scrape. Separate from the backlog, so a database without
    the table (schema behind the code) does not hide the backlog."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Any]:
        yield self._family()

    def _family(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(
            "embedder_dead_letters",
            "Dead letters stored (refused messages or parts of them), by reason: "
            "embedder dead-letters list",
            labels=["reason"],
        )

    def collect(self) -> Iterator[Any]:
        family = self._family()
        try:
            with self.engine.connect() as conn:
                counts = repository.dead_letter_counts(conn)
        except Exception as exc:  # a scrape must answer even when the database does not
            logger.warning("dead letter query failed: %s", type(exc).__name__)
            return
        for reason in sorted(set(DEAD_LETTER_REASONS) | set(counts)):
            family.add_metric([reason], counts.get(reason, 0))
        yield family


def build_registry(engine: Any) -> Any:
    """The registry to serve: every worker process's samples plus the backlog from PostgreSQL."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc_dir:
        os.makedirs(multiproc_dir, exist_ok=True)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    else:
        # Without the directory only this process's own samples exist: say so once.
        logger.warning("PROMETHEUS_MULTIPROC_DIR is not set: worker processes are not visible")
        registry = REGISTRY
    registry.register(BacklogCollector(engine))
    registry.register(DeadLetterCollector(engine))
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def make_metrics_server(engine: Any, address: str, port: int) -> WSGIServer:
    """An HTTP server answering /metrics (any path) from build_registry(); call serve_forever."""
    from prometheus_client import make_wsgi_app

    app = make_wsgi_app(build_registry(engine))
    return make_server(address, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
