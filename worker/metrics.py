"""Prometheus metrics. With Celery's prefork pool set PROMETHEUS_MULTIPROC_DIR so every child
writes its samples to shared files; `embedder metrics-server` aggregates them and adds the
backlog gauges (embedder_backlog_items, embedder_oldest_pending_seconds, embedder_jobs),
which it reads from PostgreSQL at scrape time (worker/metrics_server.py)."""

from __future__ import annotations

import os

# prometheus_client writes a file per process and metric type into this directory as soon
# as a metric is created (below): it must exist. The variable itself must already be in the
# environment when the process starts (Procfile, compose), before prometheus_client loads.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import Counter, Gauge, Histogram

ARTICLES_EMBEDDED = Counter(
    "embedder_articles_embedded_total", "Articles whose vector was written", ["model"]
)
ARTICLES_UNCHANGED = Counter(
    "embedder_articles_unchanged_total",
    "Articles skipped because their vector is current",
    ["model"],
)
FAILURES = Counter(
    "embedder_failures_total", "Items recorded as failed or skipped, by reason", ["model", "reason"]
)
BATCHES = Counter("embedder_batches_total", "Embedding requests planned", ["model"])
REQUESTS = Counter(
    "embedder_provider_requests_total",
    "Requests sent to the embedding provider (retries included; local provider calls too)",
    ["model"],
)
BATCH_SIZE = Histogram(
    "embedder_batch_size",
    "Inputs per embedding request",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
TOKENS = Counter(
    "embedder_tokens_total",
    "Tokens sent to the provider (planning estimate: exact or half the UTF-8 bytes)",
    ["model"],
)
API_LATENCY = Histogram(
    "embedder_api_request_seconds",
    "Latency of one embeddings API request",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
API_RETRIES = Counter("embedder_api_retries_total", "API retries by reason", ["reason"])
POOL = Gauge(
    "embedder_db_pool_connections",
    "Pool connections by state, per process",
    ["state"],
    multiprocess_mode="livesum",
)
MAINTENANCE_SECONDS = Histogram(
    "embedder_maintenance_seconds",
    "Duration of maintenance runs",
    ["job"],
    buckets=(0.1, 1, 5, 30, 60, 300, 900, 3600),
)
