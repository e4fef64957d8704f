"""A worker whose consumer stopped consuming is caught: `embedder health` fails and the
worker exits (status 1, one ERROR line) for its supervisor to restart it.

The stall is made the way Celery allows from outside: remote control `cancel_consumer`
leaves the process alive, connected and answering pings, but taking nothing from its queue
(what Celery issues #10205 and #10302 describe after a Redis reset).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.conftest import MODEL, REPO
from tests.e2e.conftest import StartWorker, settings_env, wait_until
from tests.e2e.test_worker import (
    assert_every_vector_exact,
    embedded_count,
    job_states,
    publish,
)
from tests.fakes.openai_server import FakeOpenAI
from worker import pipeline
from worker.client import TASK_DRAIN, enqueue
from worker.config import Settings
from worker.deps import Deps
from worker.health import Health, check_health

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

STALL_TIMEOUT_S = 3.0


def liveness(settings: Settings, name: str) -> Health:
    """What a container's health check runs: `embedder health --liveness --worker NAME`."""
    return check_health(settings, worker_names=[name], liveness=True, timeout_s=1.0)


def test_a_worker_that_stopped_consuming_fails_health_and_exits_to_be_restarted(
    start_worker: StartWorker,
    settings: Settings,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
) -> None:
    overrides: dict[str, Any] = {"worker_stall_timeout_s": STALL_TIMEOUT_S}
    deps = make_deps(**overrides)
    stuck = start_worker(concurrency=1, queues="embeddings", **overrides)
    assert liveness(stuck.settings, stuck.name).ok

    stuck.control.control.cancel_consumer("embeddings", destination=[stuck.name], reply=True)
    ids = [make_article() for _ in range(5)]
    enqueue(ids, client=redis_client, chunk_size=1)  # five messages wait for it in Redis

    def stalled() -> Health | None:
        health = liveness(stuck.settings, stuck.name)
        return None if health.ok else health

    health = wait_until(stalled, STALL_TIMEOUT_S + 20, interval=0.2, what="health failing")
    worker = health.checks["worker"]
    assert worker.detail.startswith(f"stalled: {stuck.name} consumed nothing for "), worker
    assert "while embeddings had 5 ready" in worker.detail
    # The command an orchestrator runs says the same, exit 1.
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "health", "--liveness", "--worker", stuck.name],
        cwd=REPO,
        env={**os.environ, **settings_env(stuck.settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and f"stalled: {stuck.name}" in done.stdout, done

    assert stuck.wait_exit(30) == 1  # a warm shutdown, status 1: the supervisor restarts it
    errors = [line for line in stuck.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert "stalled: " in errors[0] and "exits with status 1" in errors[0]
    assert redis_client.llen("embeddings") == 5  # it took nothing: nothing lost either

    # What the supervisor starts in its place takes the waiting work.
    fresh = start_worker(concurrency=1, queues="embeddings", **overrides)
    wait_until(lambda: embedded_count(deps) == 5, 30, what="the five embedded")
    assert_every_vector_exact(deps, ids)
    assert job_states(deps) == {}
    assert liveness(fresh.settings, fresh.name).ok
    assert " ERROR " not in fresh.log()


def test_a_busy_worker_is_not_a_stalled_one(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
) -> None:
    """Its one slot busy on slow drains and more drains queued than it may hold (4): it is
    full, not stalled, and keeps going well past the stall timeout."""
    overrides: dict[str, Any] = {
        "worker_stall_timeout_s": STALL_TIMEOUT_S,
        "embed_batch_max": 1,
        "embed_drain_budget_s": 10.0,  # the first drain alone outlasts the stall timeout
    }
    deps = make_deps(**overrides)
    pipeline.intake(deps, [make_article() for _ in range(40)])
    fake_openai.latency_s = 0.4
    busy = start_worker(concurrency=1, queues="embeddings", **overrides)
    for _ in range(12):
        publish(redis_client, TASK_DRAIN, [MODEL])

    wait_until(lambda: embedded_count(deps) >= 15, 60, what="15 embedded, one at a time")
    assert redis_client.llen("embeddings") > 0  # drains kept waiting in Redis all along
    assert busy.is_alive() and liveness(busy.settings, busy.name).ok
    assert "stalled" not in busy.log()
