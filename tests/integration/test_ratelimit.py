"""The shared rate limit (worker/ratelimit.py) against real Redis, the fake provider enforcing
OpenAI-style limits, the real openai client and real PostgreSQL.

The utilisation test here runs three drains in threads (three Deps, three limiter instances:
what three worker processes share is Redis) for a few seconds, with generous bounds because
these machines are shared and noisy; the ≥ 95% target with real Celery workers is measured
by bench/ratelimit.py (docs/benchmarks.md, "## Rate limits").
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis

from tests.conftest import fetch
from tests.fakes.openai_server import FakeOpenAI
from worker import pipeline
from worker.config import Settings
from worker.deps import Deps
from worker.embedder import OpenAIEmbedder, build_embedder
from worker.errors import RateLimitDeferred
from worker.ratelimit import (
    PREFIX,
    PROBE_TIMEOUT_MS,
    STAGGER_MS,
    EndpointLimiter,
    RateLimits,
    build_limiter,
)
from worker.repository import ModelInfo

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def limited() -> Iterator[FakeOpenAI]:
    """A fake provider of its own (its limits are changed by the tests), cl100k tokens."""
    with FakeOpenAI(dimensions=1536, tokenizer="cl100k") as server:
        yield server


def limiter_for(
    client: redis.Redis[bytes], url: str, **options: Any
) -> tuple[RateLimits, EndpointLimiter]:
    limits = RateLimits(lambda: client, **options)
    return limits, limits.for_endpoint(url, "OPENAI_API_KEY")


def state(client: redis.Redis[bytes], limiter: EndpointLimiter) -> dict[str, float]:
    raw = client.hgetall(f"{PREFIX}:{limiter.endpoint}")
    return {k.decode(): float(v) for k, v in raw.items()}


def embedder_for(url: str, limiter: EndpointLimiter) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        model="text-embedding-3-small",
        dimensions=1536,
        api_key="sk-test",
        base_url=url,
        timeout_s=5,
        retry_attempts=4,
        retry_max_wait_s=0.05,
        limiter=limiter,
    )


def test_limits_are_learned_from_headers_and_follow_a_change(
    redis_client: redis.Redis[bytes], limited: FakeOpenAI
) -> None:
    # A window of an hour: refill is negligible during the test, so levels can be compared.
    limited.set_limits(rpm=1000, tpm=100_000, window_s=3600)
    _, limiter = limiter_for(redis_client, limited.url)
    embedder = embedder_for(limited.url, limiter)

    embedder.embed(["hello world"] * 4, 400)  # an estimate 50 times what the provider counts

    (request,) = limited.requests
    assert request.tokens == 8  # cl100k: "hello world" is 2 tokens
    assert limiter.limits == (1000, 100_000)
    learned = state(redis_client, limiter)
    assert (learned["rl"], learned["tl"]) == (1000, 100_000)
    # Settled with usage: the level is the bucket (98% share) less 8 tokens, not less 400.
    assert 98_000 - 8 - 20 <= learned["tv"] <= 98_000 - 8 + 1, learned
    # The refill rate from x-ratelimit-reset-tokens: 100k per hour, per millisecond.
    assert learned["tr"] == pytest.approx(100_000 / 3_600_000, rel=0.05)

    limited.set_limits(rpm=500, tpm=50_000, window_s=3600)  # the provider lowers the limit
    embedder.embed(["hello world"], 2)

    assert limiter.limits == (500, 50_000)
    changed = state(redis_client, limiter)
    assert changed["tl"] == 50_000 and changed["tv"] <= 50_000 * 0.98, changed


def test_configured_limits_apply_where_the_provider_sends_no_headers(
    redis_client: redis.Redis[bytes],
) -> None:
    _, limiter = limiter_for(redis_client, "http://no-headers/v1", rpm=2, max_wait_s=0.3)
    grant = limiter.acquire(10)  # the bucket of RATE_LIMIT_RPM=2 starts full (1.96)
    limiter.settle(grant, used_tokens=10, headers=None)

    with pytest.raises(RateLimitDeferred) as deferred:
        limiter.acquire(10)  # 0.96 left: the next request is ~1.2 s away

    assert deferred.value.retry_after_s is not None and deferred.value.retry_after_s > 0.3


def test_a_429_closes_the_endpoint_and_callers_go_back_in_turn(
    redis_client: redis.Redis[bytes], limited: FakeOpenAI
) -> None:
    _, limiter = limiter_for(redis_client, limited.url, max_wait_s=5)
    embedder = embedder_for(limited.url, limiter)
    limited.fail_next(429, retry_after_ms=400)

    embedder.embed(["hello"], 1)  # 429, then the next try after the shared closure

    first, second = limited.requests
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.39

    # Everyone waiting on a closure leaves one stagger gap after the other, not together.
    grant = limiter.acquire(1)
    limiter.settle(grant, used_tokens=None, headers=None, rejected=True, retry_after_s=0.5)
    started = time.monotonic()
    left: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        g = limiter.acquire(1)
        with lock:
            left.append(time.monotonic() - started)
        limiter.settle(g, used_tokens=1, headers=None)

    threads = [threading.Thread(target=caller) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    left.sort()
    assert len(left) == 5 and left[0] >= 0.45, left
    gaps = [b - a for a, b in itertools.pairwise(left)]
    assert min(gaps) >= STAGGER_MS / 1000 * 0.8, left


def test_rate_limited_items_go_back_to_pending_without_counting_an_attempt(
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    redis_client: redis.Redis[bytes],
    limited: FakeOpenAI,
) -> None:
    # One attempt allowed: an attempt counted for the rate limit would fail the items.
    deps = make_deps(
        openai_base_url=limited.url,
        job_max_attempts=1,
        rate_limit_max_wait_s=0.5,
    )
    deps.limiter = build_limiter(deps.settings, lambda: redis_client)
    ids = [make_article() for _ in range(3)]
    limited.fail_next(429, retry_after=30)
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps, budget_s=1.0, linger=False)

    assert (result.embedded, result.failed, result.released) == (0, 0, 3), result
    assert [r.status for r in limited.requests] == [429]  # no retry storm, nothing failed
    rows = fetch(
        deps,
        "SELECT state, attempts, reason, not_before > now() + interval '20 seconds' "
        "FROM embedding_jobs ORDER BY article_id",
    )
    assert [tuple(r) for r in rows] == [("pending", 0, "rate_limited", True)] * 3


def _insert_articles(database_url: str, count: int) -> list[int]:
    """`count` articles of ~250 cl100k tokens each (~1,300 bytes: estimated at ~650)."""
    words = (
        "Rate limits, tokens and budgets: workers share one provider whose headers tell "
        "them what is left; a settled estimate refunds the difference, closures stagger. "
    )
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO articles (feed_id, user_id, title, content, tags, is_read, "
            "published_at) SELECT 1, 1, 'Article ' || n, %s || n, ARRAY['t'], false, %s "
            "FROM generate_series(1, %s) AS n RETURNING id",
            (words * 8, datetime.now(UTC), count),
        )
        return [int(r[0]) for r in cur.fetchall()]


def test_three_workers_use_the_token_budget_without_429s(
    make_deps: Callable[..., Deps],
    database_url: str,
    redis_client: redis.Redis[bytes],
    limited: FakeOpenAI,
) -> None:
    # 6,000 tokens/s (12,000 per 2 s window), ~24 articles/s: well below what this machine
    # writes with the HNSW index; no RATE_LIMIT_* configured: the limits are learned.
    rate, window_s = 6000, 2.0
    limited.set_limits(rpm=600, tpm=int(rate * window_s), window_s=window_s)
    limited.latency_s = 0.05
    ids = _insert_articles(database_url, 320)
    workers = []
    for _ in range(3):
        deps = make_deps(
            openai_base_url=limited.url,
            embed_batch_max=8,
            rate_limit_max_wait_s=2.0,
        )
        deps.limiter = build_limiter(deps.settings, lambda: redis_client)
        workers.append(deps)
    pipeline.intake(workers[0], ids)

    results: list[pipeline.DrainResult] = []
    threads = [
        threading.Thread(
            target=lambda d=d: results.append(pipeline.drain(d, budget_s=40, linger=False))
        )
        for d in workers
    ]
    # Empty buckets at the start: a full one would add a window's worth of burst to what
    # is measured (the bench measures from full buckets, over a longer run). The first
    # request, sent before anything is known, may be answered 429.
    limited.set_limits(rpm=600, tpm=int(rate * window_s), window_s=window_s, empty=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert sum(r.embedded for r in results) == len(ids), results
    records = limited.requests
    ok = [r for r in records if r.status == 200]
    start, end = ok[0].at + 1, ok[-1].at
    assert end - start >= 3, (start, end)
    # [start, end): the request admitted at `end` was paid for by the time after it.
    used = sum(r.tokens for r in ok if start <= r.at < end)
    utilisation = used / ((end - start) * rate)
    steady = [r for r in records if start <= r.at < end]
    rejected = sum(1 for r in steady if r.status == 429)
    print(f"utilisation {utilisation:.3f}, {rejected} 429s in {len(steady)} requests")
    assert 0.85 <= utilisation <= 1.15, utilisation  # (one request is ~5% of a second)
    assert rejected <= 2 * len(steady) / 100, (rejected, len(steady))
    assert sum(1 for r in records if r.status == 429) <= 2, [r.status for r in records]


def test_each_endpoint_and_key_variable_has_its_own_budget(
    redis_client: redis.Redis[bytes], limited: FakeOpenAI
) -> None:
    settings = Settings(
        embedding_provider="openai", openai_api_key="sk-a", openai_base_url=limited.url
    )
    limits = RateLimits(lambda: redis_client)
    env = {"OTHER_KEY": "sk-b"}

    def limiter_of(info: ModelInfo) -> Any:
        embedder = build_embedder(settings, info, limits, env=env)
        assert isinstance(embedder, OpenAIEmbedder)
        return embedder.limiter

    shared_a = limiter_of(ModelInfo("a", 8, "openai", True))
    shared_b = limiter_of(ModelInfo("b", 8, "openai", True))
    own_url = limiter_of(ModelInfo("c", 8, "openai", True, base_url="http://elsewhere/v1"))
    own_key = limiter_of(ModelInfo("d", 8, "openai", True, api_key_env="OTHER_KEY"))

    assert shared_a is shared_b  # the process's endpoint: one budget
    assert len({shared_a.endpoint, own_url.endpoint, own_key.endpoint}) == 3
    assert "sk-" not in shared_a.endpoint + own_key.endpoint  # a hash, never the key


def test_a_first_request_whose_worker_died_blocks_the_endpoint_only_briefly(
    redis_client: redis.Redis[bytes],
) -> None:
    # Nothing known about the endpoint: one request at a time until one is answered.
    _, limiter = limiter_for(redis_client, "http://dead-probe/v1", max_wait_s=5)
    limiter.acquire(10)  # never settled: its worker was killed mid-request
    started = time.monotonic()

    limiter.acquire(10)  # waits for the probe, then probes itself

    waited = time.monotonic() - started
    assert PROBE_TIMEOUT_MS / 1000 - 0.2 <= waited <= PROBE_TIMEOUT_MS / 1000 + 1.0, waited
