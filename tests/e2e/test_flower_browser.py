"""Flower as an operator sees it, in a real browser: Debian's chromium, headless, driven by
playwright (its bundled driver; no browser is downloaded).

Beat, Flower and the metrics exporter run exactly as their Procfile lines say; an embeddings
worker and a maintenance worker run as in production (one queue each). Two unknown ids among
real ones must show as a failed drain with its reason, on the Workers page (Failed) and the
Tasks page (state and Exception column); a refused message too; both queues are on the
Broker page; beat's 30-second sweep runs (the exporter counts it) but is not in the task
list. The exporter serves every series the alerts read, zeros included.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from devstack.services import free_port, stop_process
from tests.conftest import MODEL, REPO, fetch
from tests.e2e.conftest import StartWorker, register_log, settings_env, wait_until
from worker.client import task_message
from worker.config import Settings
from worker.deps import Deps

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

CHROMIUM = "/usr/bin/chromium"  # Debian's package (make system-deps)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLOWER_AUTH = ("operator", "flower-pass-7q")
# Beat's first sweep is due 30 s after it starts; the worker runs it within a few seconds.
SWEEP_TIMEOUT_S = 60

StartProcfile = Callable[[str, dict[str, str]], subprocess.Popen[bytes]]


def procfile_command(name: str) -> str:
    for line in (REPO / "Procfile").read_text(encoding="utf-8").splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return command.strip()
    raise AssertionError(f"no {name!r} line in the Procfile")


@pytest.fixture
def start_procfile(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartProcfile]:
    """Run a Procfile line as honcho would (a shell expands its ${VAR:-default}); stop it after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"{name}.log"
        register_log(request, log_path)
        full_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        full_env.update(env)
        # `celery` from this interpreter's environment, as devstack runs the Procfile.
        full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {procfile_command(name)}"],
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


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The exporter's samples: (name, labels) -> value; empty while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def queue_names(page: Page) -> list[str]:
    return sorted(
        page.locator("#queue-table tbody tr td:first-child").all_inner_texts(),
    )


def task_rows(page: Page) -> list[dict[str, str]]:
    """The Tasks page's rows, each as {column header: cell text}, once the table has loaded."""
    page.wait_for_selector("#tasks-table tbody tr td")
    # Lower case: the page's style may upper-case header text.
    headers = [h.strip().lower() for h in page.locator("#tasks-table thead th").all_inner_texts()]
    rows = []
    for row in page.locator("#tasks-table tbody tr").all():
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        if len(cells) == len(headers):
            rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def test_flower_shows_failed_items_and_both_queues_without_housekeeping(
    start_worker: StartWorker,
    start_procfile: StartProcfile,
    browser: Browser,
    settings: Settings,
    make_article: Callable[..., int],
    make_deps: Callable[..., Deps],
    redis_client: redis.Redis[bytes],
    tmp_path: Path,
) -> None:
    deps = make_deps()
    port, metrics_port = free_port(), free_port()
    multiproc = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    env = {
        **settings_env(settings),
        **multiproc,
        "FLOWER_PORT": str(port),
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "CELERY_BEAT_SCHEDULE": str(tmp_path / "celerybeat-schedule"),
        "METRICS_PORT": str(metrics_port),
        "LOG_LEVEL": "INFO",
    }
    start_procfile("beat", env)  # started first: its first sweep is due in 30 s
    start_procfile("flower", env)
    start_procfile("metrics", env)
    base = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    wait_until(lambda: http_status(f"{base}/healthcheck") == 200, 30, what="Flower answering")
    user, password = FLOWER_AUTH
    page = browser.new_context(http_credentials={"username": user, "password": password}).new_page()

    # Before Flower has inspected any worker, its Broker page lists the declared queues.
    page.goto(f"{base}/broker")
    assert queue_names(page) == ["embeddings", "maintenance"]

    embeddings = start_worker(queues="embeddings", concurrency=1, env=multiproc, wait=False)
    maintenance = start_worker(queues="maintenance", concurrency=1, env=multiproc, wait=False)
    embeddings.wait_ready()
    maintenance.wait_ready()

    real = [make_article() for _ in range(3)]
    unknown = [990_000_101, 990_000_102]
    # One message, as a producer sends it: one intake, one drain claims all five.
    redis_client.lpush(
        "embeddings",
        json.dumps(task_message("embeddings.embed_articles", [[*real, *unknown]], {})),
    )
    redis_client.lpush(
        "embeddings", json.dumps(task_message("embeddings.embed_articles", [["not-an-id"]], {}))
    )
    wait_until(
        lambda: (
            fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 3
            and fetch(deps, "SELECT state, reason, count(*) FROM embedding_jobs GROUP BY 1, 2")
            == [("failed", "not_found", 2)]
        ),
        30,
        what="3 vectors and 2 items failed not_found",
    )
    sweeps = (
        "embedder_tasks_total",
        frozenset({("task", "embeddings.sweep"), ("state", "success")}),
    )
    wait_until(
        lambda: scrape(metrics_url).get(sweeps, 0) >= 1,
        SWEEP_TIMEOUT_S,
        interval=0.5,
        what="beat's first sweep, run by the embeddings worker and counted",
    )

    # Workers page: two failures (the drain with unknown ids, the refused message).
    page.goto(f"{base}/workers")

    def failed_on_workers_page() -> bool:
        page.reload()
        page.wait_for_function("document.getElementById('workers-failed').textContent !== '—'")
        return page.inner_text("#workers-failed").strip() == "2"

    wait_until(failed_on_workers_page, 20, interval=0.5, what="Failed 2 on the Workers page")
    worker_row = page.locator("#workers-table tbody tr", has_text=embeddings.name)
    cells = [c.strip() for c in worker_row.locator("td").all_inner_texts()]
    headers = [h.strip().lower() for h in page.locator("#workers-table thead th").all_inner_texts()]
    assert dict(zip(headers, cells, strict=True))["failed"] == "2", (headers, cells)

    # Tasks page: how many failed and why; no sweep among the tasks.
    page.goto(f"{base}/tasks")
    rows = task_rows(page)
    names = [row["name"] for row in rows]
    assert "embeddings.sweep" not in names
    assert "embeddings.reconcile" not in names
    failed_drains = [r for r in rows if r["name"] == "embeddings.drain" and r["state"] == "FAILURE"]
    assert len(failed_drains) == 1, rows  # failed once: never retried nor redelivered
    assert (
        f"2 items failed: not_found=2 (model {MODEL}; 3 embedded" in failed_drains[0]["exception"]
    )
    assert "ItemsFailed" in failed_drains[0]["exception"]
    refused = [r for r in rows if "MessageRefused" in r["exception"]]
    assert len(refused) == 1 and refused[0]["state"] == "FAILURE", rows
    assert "invalid_ids" in refused[0]["exception"] and "dead letter" in refused[0]["exception"]
    assert any(
        r["name"] == "embeddings.embed_articles" and r["state"] == "SUCCESS" for r in rows
    ), rows
    assert not any(r["state"] == "RETRY" for r in rows), rows

    # The Broker page still lists both queues, and nothing is left unacked for redelivery.
    page.goto(f"{base}/broker")
    assert queue_names(page) == ["embeddings", "maintenance"]
    assert redis_client.hlen("unacked") == 0
    assert redis_client.llen("embeddings") == 0
    # The worker log says it too, without a traceback (an expected outcome, not a crash).
    log = embeddings.log()
    assert re.search(rf"WARNING .*drain {MODEL}: 2 items failed: not_found=2", log), log
    assert re.search(r"ERROR .*embed_articles refused a message", log), log
    assert "Traceback" not in log
    assert maintenance.is_alive()

    # The exporter serves what the alerts read: the counts, and zeros from the start.
    def value(name: str, **labels: str) -> float | None:
        return scrape(metrics_url).get((name, frozenset(labels.items())))

    assert value("embedder_failures_total", model=MODEL, reason="not_found") == 2
    assert value("embedder_failures_total", model=MODEL, reason="lease_expired") == 0
    assert value("embedder_articles_embedded_total", model=MODEL) == 3
    assert value("embedder_api_retries_total", reason="rate_limited") == 0
    assert value("embedder_tasks_total", task="embeddings.drain", state="failure") == 1
    assert value("embedder_tasks_total", task="embeddings.sweep", state="failure") == 0
    assert value("embedder_tasks_total", task="maintenance.rebuild_hnsw", state="failure") == 0
    assert value("embedder_hnsw_index", model=MODEL, state="valid") == 1
    assert value("embedder_oldest_in_flight_seconds", model=MODEL) == 0
    assert value("embedder_backlog_up") == 1
