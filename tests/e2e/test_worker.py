"""A real Celery worker (prefork) against real PostgreSQL, Redis and the fake OpenAI server.

Messages are published the way any producer does (worker.client: raw protocol-2 JSON onto
the Redis list), faults are real signals and a real FLUSHDB, and every test ends by counting
articles: embedded exactly once, nothing lost, nothing half-written.
"""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
import pytest
import redis

from tests.conftest import MODEL, fetch
from tests.e2e.conftest import StartWorker, client_app, wait_until
from tests.fakes.openai_server import FakeOpenAI, fake_vector
from worker import pipeline
from worker.client import TASK_DRAIN, enqueue, task_message
from worker.deps import Deps
from worker.text import compose

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

TASK_SWEEP = "embeddings.sweep"


def publish(client: redis.Redis[bytes], task: str, args: list[Any]) -> None:
    """LPUSH one raw protocol-2 message onto the embeddings queue (what beat or a producer does)."""
    client.lpush("embeddings", json.dumps(task_message(task, args, {})))


def texts_of(deps: Deps, ids: list[int]) -> dict[str, int]:
    rows = fetch(deps, "SELECT id, title, content FROM articles WHERE id = ANY(:ids)", ids=ids)
    return {compose(r.title, r.content): r.id for r in rows}


def embedded_count(deps: Deps) -> int:
    return int(
        fetch(deps, "SELECT count(*) FROM article_embeddings WHERE model = :m", m=MODEL)[0][0]
    )


def job_states(deps: Deps) -> dict[str, int]:
    rows = fetch(deps, "SELECT state, count(*) FROM embedding_jobs GROUP BY state")
    return {r[0]: int(r[1]) for r in rows}


def assert_every_vector_exact(deps: Deps, ids: list[int]) -> None:
    """Each article has one row for MODEL whose vector is the provider's for its text."""
    rows = fetch(
        deps,
        "SELECT a.id, a.title, a.content, e.embedding FROM articles a "
        "JOIN article_embeddings e ON e.article_id = a.id AND e.model = :m "
        "WHERE a.id = ANY(:ids) ORDER BY a.id",
        m=MODEL,
        ids=ids,
    )
    assert [r.id for r in rows] == sorted(ids)
    for r in rows:
        expected = fake_vector(compose(r.title, r.content), 1536)
        assert np.allclose(r.embedding.to_numpy(), expected, atol=1e-6), r.id


@contextmanager
def beat(client: redis.Redis[bytes], every_s: float = 1.0) -> Iterator[None]:
    """Stand-in for celery beat: publish embeddings.sweep every `every_s` seconds."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            publish(client, TASK_SWEEP, [])

    thread = threading.Thread(target=run, name="e2e-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def test_single_id_messages_are_embedded_in_full_batches(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
) -> None:
    deps = make_deps()
    ids = [make_article() for _ in range(50)]
    start_worker(concurrency=2, embed_batch_max=10, embed_linger_ms=300)

    task_ids = enqueue(ids, client=redis_client, chunk_size=1)

    assert len(task_ids) == 50
    wait_until(lambda: embedded_count(deps) == 50, 30, what="50 articles embedded")
    sizes = [len(r.inputs) for r in fake_openai.requests]
    assert sum(sizes) == 50, sizes  # each article sent exactly once
    assert sizes.count(10) >= 4, sizes  # coalesced: most requests are full batches
    sent = Counter(text for r in fake_openai.requests for text in r.inputs)
    assert sent == Counter(texts_of(deps, ids).keys())
    assert_every_vector_exact(deps, ids)
    assert job_states(deps) == {}


def test_pickle_message_is_dead_lettered_and_the_worker_keeps_working(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    redis_client: redis.Redis[bytes],
    redis_url: str,
) -> None:
    deps = make_deps()
    pickled, good = make_article(), make_article()
    worker = start_worker(concurrency=1)
    producer = client_app(redis_url, accept_content=["pickle", "json"])
    try:
        producer.send_task(
            "embeddings.embed_articles", args=[[pickled]], queue="embeddings", serializer="pickle"
        )
    finally:
        producer.close()
    refused = wait_until(
        lambda: fetch(deps, "SELECT reason, task_name FROM dead_letters"), 20, what="the refusal"
    )
    assert [tuple(r) for r in refused] == [("unsupported_content", "embeddings.embed_articles")]

    enqueue([good], client=redis_client)

    wait_until(lambda: embedded_count(deps) == 1, 20, what="the JSON message embedded")
    rows = fetch(deps, "SELECT article_id FROM article_embeddings")
    assert [r.article_id for r in rows] == [good]
    assert (
        fetch(deps, "SELECT count(*) FROM embedding_jobs WHERE article_id = :a", a=pickled)[0][0]
        == 0
    )
    assert worker.is_alive() and worker.ping()
    # Refused means acknowledged and dropped: not left in the queue nor unacked for redelivery.
    wait_until(lambda: redis_client.hlen("unacked") == 0, 10, what="no unacked messages")
    assert redis_client.llen("embeddings") == 0


def test_sigkill_mid_batch_is_recovered_by_the_sweep(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
) -> None:
    overrides = {
        "embed_batch_max": 10,
        "job_lease_s": 3,
        "job_heartbeat_s": 1.0,
        "embed_drain_budget_s": 2.0,
    }
    deps = make_deps(**overrides)
    ids = [make_article() for _ in range(30)]
    fake_openai.latency_s = 1.0
    worker = start_worker(concurrency=2, **overrides)

    enqueue(ids, client=redis_client)
    wait_until(lambda: fake_openai.request_count >= 1, 20, what="the first embeddings request")
    victim = wait_until(
        lambda: worker.child_talking_to(fake_openai.port), 5, what="the child mid-request"
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    assert job_states(deps).get("in_flight", 0) >= 1  # the victim's claim is stranded

    fake_openai.latency_s = 0.0
    with beat(redis_client):
        wait_until(lambda: embedded_count(deps) == 30, 40, what="all 30 articles embedded")

    assert_every_vector_exact(deps, ids)
    assert job_states(deps) == {}  # lost = 0: nothing pending, in flight or failed
    dupes = fetch(deps, "SELECT article_id FROM article_embeddings GROUP BY 1 HAVING count(*) > 1")
    assert dupes == []
    assert f"pid:{victim.pid}" in worker.log() or "WorkerLostError" in worker.log()
    assert worker.is_alive() and worker.ping()


def test_pool_stays_bounded_with_eight_concurrent_tasks(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
    database_url: str,
) -> None:
    overrides = {"db_pool_size": 1, "db_max_overflow": 1, "embed_batch_max": 4}
    deps = make_deps(**overrides)
    ids = [make_article() for _ in range(64)]
    pipeline.intake(deps, ids)
    fake_openai.latency_s = 0.3
    worker = start_worker(concurrency=8, **overrides)
    children = {c.pid for c in worker.children()}
    assert len(children) == 8

    peaks: Counter[str] = Counter()
    peak_total = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_total
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() "
                    "AND application_name LIKE 'embedder-worker%' GROUP BY 1"
                ).fetchall()
                for name, count in rows:
                    peaks[name] = max(peaks[name], count)
                peak_total = max(peak_total, sum(count for _, count in rows))
                stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(8):
            publish(redis_client, TASK_DRAIN, [MODEL])
        wait_until(lambda: embedded_count(deps) == 64, 40, what="64 articles embedded")
    finally:
        stop.set()
        sampler.join(5)

    pids = {int(name.rsplit(":", 1)[1]) for name in peaks}
    assert len(pids & children) >= 6, peaks  # the work really was spread over the pool
    assert pids <= children | {worker.pid}, peaks
    assert max(peaks.values()) <= 2, peaks  # DB_POOL_SIZE + DB_MAX_OVERFLOW per process
    assert peak_total <= 8 * 2 + 2, peaks
    assert job_states(deps) == {}


def test_redis_flushed_mid_run_sweep_recovers_pending_work(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
) -> None:
    overrides = {
        "embed_batch_max": 5,
        "embed_drain_budget_s": 1.0,
        "job_lease_s": 3,
        "job_heartbeat_s": 1.0,
    }
    deps = make_deps(**overrides)
    ids = [make_article() for _ in range(100)]
    fake_openai.latency_s = 0.2
    worker = start_worker(concurrency=1, **overrides)
    enqueue(ids, client=redis_client)
    wait_until(lambda: embedded_count(deps) >= 5, 20, what="the first batch written")

    # Stop consuming so the drains' hand-over message waits in Redis, then lose everything.
    worker.control.control.cancel_consumer("embeddings", destination=[worker.name], reply=True)
    inspect = worker.control.control.inspect(destination=[worker.name], timeout=1.0)

    def idle_with_a_queued_hand_over() -> bool:
        if redis_client.llen("embeddings") < 1 or job_states(deps).get("in_flight"):
            return False
        busy = [*(inspect.active() or {}).values(), *(inspect.reserved() or {}).values()]
        return not any(busy)

    wait_until(idle_with_a_queued_hand_over, 20, what="the running drains to hand over and stop")
    redis_client.flushdb()
    remaining = job_states(deps).get("pending", 0)
    assert remaining > 0
    worker.control.control.add_consumer("embeddings", destination=[worker.name], reply=True)

    with beat(redis_client):
        wait_until(lambda: embedded_count(deps) == 100, 30, what="all 100 articles embedded")

    assert_every_vector_exact(deps, ids)
    assert job_states(deps) == {}
    sent = Counter(text for r in fake_openai.requests for text in r.inputs)
    assert sent == Counter(texts_of(deps, ids).keys())  # nothing embedded twice


def test_sigterm_finishes_the_current_batch_and_a_new_worker_resumes(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
) -> None:
    overrides = {"embed_batch_max": 5}
    deps = make_deps(**overrides)
    ids = [make_article() for _ in range(30)]
    fake_openai.latency_s = 1.0
    first = start_worker(concurrency=2, **overrides)
    enqueue(ids, client=redis_client)
    wait_until(lambda: fake_openai.request_count >= 1, 20, what="the first embeddings request")

    first.signal_group(signal.SIGTERM)  # what honcho, systemd and `docker stop` send

    assert first.wait_exit(15) is not None, "the worker did not exit within 15 s of SIGTERM"
    states = job_states(deps)
    done = embedded_count(deps)
    assert states.get("in_flight", 0) == 0  # the batch was finished or released, not stranded
    assert 0 < done < 30, done  # it stopped early, after writing what it had
    assert done + states.get("pending", 0) == 30
    assert_every_vector_exact(deps, fetch_ids(deps))  # nothing half-written

    fake_openai.latency_s = 0.0
    start_worker(concurrency=2, **overrides)
    with beat(redis_client, every_s=2.0):
        wait_until(lambda: embedded_count(deps) == 30, 30, what="the new worker finishing")
    assert_every_vector_exact(deps, ids)
    assert job_states(deps) == {}
    sent = Counter(text for r in fake_openai.requests for text in r.inputs)
    assert sent == Counter(texts_of(deps, ids).keys())  # finished, not re-done


def fetch_ids(deps: Deps) -> list[int]:
    return [r[0] for r in fetch(deps, "SELECT article_id FROM article_embeddings")]
