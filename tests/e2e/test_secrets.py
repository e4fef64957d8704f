"""A whole run's output never shows a secret, and JSON logs are one object per line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from devstack.services import LocalRedis, free_port
from tests.conftest import REPO, base_settings, fetch
from tests.e2e.conftest import StartWorker, settings_env, wait_until
from tests.fakes.openai_server import FakeOpenAI
from worker.client import enqueue, task_message
from worker.config import Settings
from worker.deps import Deps

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DB_PASSWORD = "db-pass-Qx81vv"
BROKER_PASSWORD = "broker-pass-Zk42ww"


@pytest.fixture
def broker_url(tmp_path: Path) -> Iterator[str]:
    """A private Redis that requires a password (the shared one must not be changed)."""
    server = LocalRedis(tmp_path / "redis", free_port())
    server.start()
    client = redis.Redis(port=server.port)
    client.config_set("requirepass", BROKER_PASSWORD)
    client.close()
    yield f"redis://:{BROKER_PASSWORD}@127.0.0.1:{server.port}/0"
    server.stop()


@pytest.fixture
def settings(database_url: str, broker_url: str, fake_openai: FakeOpenAI) -> Settings:
    # The embedded server trusts local connections, so the password is carried, not checked.
    url = database_url.replace("postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")
    return replace(base_settings(url, broker_url, fake_openai.url), log_format="json")


def run_cli(settings: Settings, *args: str) -> str:
    env = {"PATH": "/usr/bin:/bin", **settings_env(settings)}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def test_a_whole_run_never_prints_a_secret(
    start_worker: StartWorker,
    settings: Settings,
    deps: Deps,
    fake_openai: FakeOpenAI,
    make_article,
) -> None:
    secrets = [DB_PASSWORD, BROKER_PASSWORD, settings.openai_api_key or ""]
    broker = redis.Redis.from_url(settings.redis_url)
    worker = start_worker(concurrency=1)
    ids = [make_article() for _ in range(5)]
    empty = make_article(title=" ", content=" ")
    enqueue([*ids, empty], client=broker)
    wait_until(
        lambda: fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 5,
        what="5 vectors",
    )
    # A refused key and a malformed message: both must be logged without secrets.
    fake_openai.require_api_key = "sk-some-other-key"
    refused = make_article()
    enqueue([refused], client=broker)
    broker.lpush("embeddings", json.dumps(task_message("embeddings.embed_articles", ["x"], {})))
    wait_until(
        lambda: (
            fetch(deps, "SELECT reason FROM embedding_jobs WHERE article_id = :a", a=refused)
            == [("auth_error",)]
        ),
        what="the refused key to be recorded",
    )
    wait_until(lambda: "refused a message" in worker.log(), what="the malformed message")

    outputs = [
        worker.log(),
        run_cli(settings, "status"),
        run_cli(settings, "health", "--json", "--skip", "worker"),
        run_cli(
            replace(
                settings, database_url=settings.database_url.replace("127.0.0.1:", "127.0.0.1:1")
            ),
            "status",
        ),
        run_cli(
            replace(settings, redis_url=settings.redis_url.replace(BROKER_PASSWORD, "wrong")),
            "health",
            "--json",
        ),
    ]
    broker.close()

    for text in outputs:
        for secret in secrets:
            assert secret not in text
    json_lines = [line for line in worker.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in json_lines]  # each line is one object
    accepted = [r for r in records if r["msg"].startswith("accepted")]
    assert accepted and {"task_id", "model", "article_count"} <= set(accepted[0])
    assert any(r["level"] == "ERROR" and "OPENAI_API_KEY" in r["msg"] for r in records)
