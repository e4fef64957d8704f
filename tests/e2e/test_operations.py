"""What an operator watches, against a real worker: Flower's API, `embedder health`, and the
Prometheus exporter aggregating the prefork children's counters."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from devstack.services import free_port, stop_process
from tests.conftest import MODEL, REPO, fetch
from tests.e2e.conftest import StartWorker, register_log, settings_env, wait_until
from tests.fakes.openai_server import FakeOpenAI
from worker import pipeline
from worker.client import enqueue
from worker.config import Settings
from worker.deps import Deps
from worker.health import check_health

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

FLOWER_AUTH = ("flower-user", "flower-pass-9z")


@pytest.fixture
def start_process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a helper process (Flower, the exporter) with the test's environment; stop it after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"{name}.log"
        register_log(request, log_path)
        full_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        full_env.update(env)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc)


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """(status, body); status 0 when nothing answers yet."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def get_json(url: str, auth: tuple[str, str] | None = FLOWER_AUTH) -> Any:
    status, body = http_get(url, auth)
    return json.loads(body) if status == 200 else None


def test_flower_shows_the_worker_and_a_finished_task_without_secrets(
    start_worker: StartWorker,
    start_process: Callable[..., subprocess.Popen[bytes]],
    settings: Settings,
    make_article: Callable[..., int],
    make_deps: Callable[..., Deps],
    redis_client: redis.Redis[bytes],
) -> None:
    deps = make_deps()
    real = [make_article() for _ in range(3)]
    worker = start_worker(concurrency=1)
    port = free_port()
    env = {**settings_env(settings), "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}
    start_process(
        "flower",
        ["-m", "celery", "-A", "tasks.app", "flower", f"--port={port}", "--address=127.0.0.1"],
        env,
    )
    base = f"http://127.0.0.1:{port}"
    workers = wait_until(
        lambda: (get_json(f"{base}/api/workers?refresh=1") or {}).get(worker.name),
        30,
        what="Flower listing the worker",
    )
    assert "embeddings" in json.dumps(workers.get("active_queues", []))
    assert http_get(f"{base}/api/workers")[0] == 401

    ids = [*real, *range(10_000_000, 10_000_997)]  # 1000 ids, most unknown: recorded, not fatal
    (task_id,) = enqueue(ids, client=redis_client)

    def finished() -> Any:
        task = (get_json(f"{base}/api/tasks") or {}).get(task_id)
        return task if task and task.get("state") == "SUCCESS" else None

    task = wait_until(finished, 30, what="the task finished in Flower")
    assert task["name"] == "embeddings.embed_articles"
    assert task["worker"] == worker.name
    assert "1000 ids" in task["args"] and len(task["args"]) < 120, task["args"]
    everything = json.dumps(get_json(f"{base}/api/tasks"))
    assert settings.openai_api_key and settings.openai_api_key not in everything
    wait_until(
        lambda: fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 3,
        20,
        what="the three real articles embedded",
    )


def test_health_sees_the_live_worker(
    start_worker: StartWorker, settings: Settings, tmp_path: Path
) -> None:
    worker = start_worker(concurrency=1)

    health = check_health(settings, worker_names=[worker.name], timeout_s=2.0)

    assert health.ok, health.as_dict()
    assert health.checks["worker"].data["workers"] == [worker.name]
    env = {**os.environ, **settings_env(settings)}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "health", "--json", "--worker", worker.name],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["checks"]["worker"]["workers"] == [worker.name]
    assert settings.openai_api_key and settings.openai_api_key not in done.stdout

    worker.stop()
    health = check_health(settings, worker_names=[worker.name], timeout_s=1.0)
    assert not health.ok
    assert [name for name, c in health.checks.items() if not c.ok] == ["worker"]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    status, body = http_get(url)
    if status != 200:
        return None
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid")))
            samples[key] = samples.get(key, 0.0) + s.value
    return samples


def test_metrics_exporter_aggregates_the_pool_and_reads_the_backlog(
    start_worker: StartWorker,
    start_process: Callable[..., subprocess.Popen[bytes]],
    settings: Settings,
    make_article: Callable[..., int],
    make_deps: Callable[..., Deps],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
    tmp_path: Path,
) -> None:
    multiproc = tmp_path / "prometheus"
    deps = make_deps(embed_batch_max=10)
    ids = [make_article() for _ in range(25)]
    start_worker(
        concurrency=2, embed_batch_max=10, env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    )
    enqueue(ids, client=redis_client, chunk_size=5)  # 5 messages, possibly two children
    wait_until(
        lambda: fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 25,
        30,
        what="25 articles embedded",
    )
    port = free_port()
    start_process(
        "metrics-server",
        ["-m", "worker.cli", "metrics-server", "--port", str(port)],
        {**settings_env(settings), "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
    )
    url = f"http://127.0.0.1:{port}/metrics"
    model = (("model", MODEL),)

    samples = wait_until(lambda: scrape(url), 30, what="the exporter answering")

    requests = fake_openai.request_count
    assert samples[("embedder_articles_embedded_total", model)] == 25
    assert samples[("embedder_batches_total", model)] == requests
    assert samples[("embedder_api_request_seconds_count", ())] == requests
    assert samples[("embedder_batch_size_sum", ())] == 25
    assert samples[("embedder_backlog_items", model)] == 0
    assert samples[("embedder_backlog_up", ())] == 1

    pipeline.intake(deps, [ids[0], 987654321])  # pending work nobody drains: the backlog shows it
    samples = scrape(url)
    assert samples is not None
    assert samples[("embedder_backlog_items", model)] == 2
    assert samples[("embedder_jobs", (("model", MODEL), ("state", "pending")))] == 2
    assert samples[("embedder_oldest_pending_seconds", model)] >= 0
