"""`embedder metrics-server`: one Prometheus endpoint for a whole prefork worker host.

Celery's prefork children each count in their own process. With PROMETHEUS_MULTIPROC_DIR
set (before prometheus_client is imported, so: in the environment of every worker process,
from the Procfile or compose) each child writes its samples to files in that directory;
this exporter aggregates them (MultiProcessCollector) and adds what no worker can know on
its own, read from PostgreSQL at scrape time: the backlog per model and its oldest age.
Wipe the directory when the whole worker fleet on the host restarts (docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from worker import repository

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9808


class BacklogCollector:
    """Per-model backlog gauges, queried from embedding_jobs on every scrape."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        pending = GaugeMetricFamily(
            "embedder_backlog_items", "Pending items per model", labels=["model"]
        )
        oldest = GaugeMetricFamily(
            "embedder_oldest_pending_seconds", "Age of the oldest pending item", labels=["model"]
        )
        jobs = GaugeMetricFamily(
            "embedder_jobs",
            "Jobs per model and state (pending, in_flight, failed, skipped)",
            labels=["model", "state"],
        )
        up = GaugeMetricFamily("embedder_backlog_up", "1 if the backlog query succeeded")
        try:
            with self.engine.connect() as conn:
                models = [m.name for m in repository.list_models(conn)]
                counts = repository.by_state(repository.job_counts(conn))
        except Exception as exc:  # a scrape must answer even when the database does not
            logger.warning("backlog query failed: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for model in sorted(set(models) | {m for m, _ in counts}):
            count, age = counts.get((model, "pending"), (0, 0.0))
            pending.add_metric([model], count)
            oldest.add_metric([model], age)
            for state in ("pending", "in_flight", "failed", "skipped"):
                jobs.add_metric([model, state], counts.get((model, state), (0, 0.0))[0])
        yield from (pending, oldest, jobs, up)


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
