"""Prometheus metrics. With Celery's prefork pool set PROMETHEUS_MULTIPROC_DIR so every child
writes its samples to shared files; `embedder metrics-server` aggregates them and adds the
gauges it reads from PostgreSQL at scrape time (backlog, oldest pending item and claim, HNSW
index state: worker/metrics_server.py).

Alerts need series before the first event: init_model() and init_tasks() create them at 0,
and the retry reasons are created at import (docs/operations.md, "Alerts and dashboard")."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from worker.errors import DEAD_LETTER_REASONS

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
LEASE_LOST = Counter(
    "embedder_lease_lost_total",
    "Claimed items whose result was not written: the claim's lease had run out and the jobs "
    "were taken over (fencing; the worker was paused or cut off longer than JOB_LEASE_S)",
    ["model"],
)
TASKS = Counter(
    "embedder_tasks_total",
    "Celery tasks finished in this worker, by task and final state (success, failure, retry)",
    ["task", "state"],
)

# Every reason an item can be recorded `failed` or `skipped` with (embedding_jobs.reason),
# which is what embedder_failures_total counts. tests/unit/test_metrics.py checks the code
# records no other.
ITEM_FAILURE_REASONS = (
    "not_found",  # pipeline.embed_claim: no such article (unknown or deleted id)
    "empty_text",  # pipeline.embed_claim: skipped, nothing to embed
    "invalid_input",  # the provider rejected the input (400/413/422, after bisection)
    "dimension_mismatch",  # the provider's vectors do not fit the registered dimensions
    "bad_vector",  # the provider's vector for the input was unusable twice (embed_isolating)
    "permanent",  # any other HTTP status the provider will answer the same way again
    # A transient error on every one of JOB_MAX_ATTEMPTS claims (pipeline.write_claim):
    "transient",
    "rate_limited",
    "provider_unavailable",
    "bad_response",
    "lease_expired",  # pipeline.sweep: in flight past JOB_LEASE_S on the last attempt
)
# What tenacity retries (TransientError's subclasses), the labels of embedder_api_retries_total.
RETRY_REASONS = ("transient", "rate_limited", "provider_unavailable", "bad_response")
TASK_STATES = ("success", "failure", "retry")

_initialised: set[str] = set()
_init_lock = threading.Lock()


def init_model(model: str) -> None:
    """Create `model`'s series at 0, so rates and alerts see them before the first event.

    Called when a process first uses a model (Deps.model) and for the default model when a
    worker process starts. In multiprocess mode a child at 0 is written to this process's
    file like any other value, so the exporter serves the zero series.
    """
    with _init_lock:
        if model in _initialised:
            return
        _initialised.add(model)
    for counter in (ARTICLES_EMBEDDED, ARTICLES_UNCHANGED, BATCHES, REQUESTS, TOKENS, LEASE_LOST):
        counter.labels(model=model)
    for reason in ITEM_FAILURE_REASONS:
        FAILURES.labels(model=model, reason=reason)


def init_tasks(names: Iterable[str]) -> None:
    """Create each task's embedder_tasks_total series at 0 (a worker process at start)."""
    for name in names:
        for state in TASK_STATES:
            TASKS.labels(task=name, state=state)


for _reason in RETRY_REASONS:
    API_RETRIES.labels(reason=_reason)

DEAD_LETTERS = Counter(
    "embedder_dead_letters_total",
    "Messages, or refused parts of messages, recorded in the dead-letter store, by reason",
    ["reason"],
)
for _reason in DEAD_LETTER_REASONS:
    DEAD_LETTERS.labels(reason=_reason)
