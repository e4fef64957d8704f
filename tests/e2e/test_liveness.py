"""Liveness against a real worker: what compose's health check runs passes while the
deployment is not keeping up (docs/operations.md, "Health checks")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from devstack.services import free_port
from tests.conftest import REPO
from tests.e2e.conftest import StartWorker, settings_env
from worker import pipeline
from worker.config import Settings
from worker.deps import Deps

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def embedder_health(settings: Settings, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "health", "--json", *args],
        cwd=REPO,
        env={**os.environ, **settings_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def failing(report: dict[str, Any]) -> list[str]:
    return [name for name, check in report["checks"].items() if not check["ok"]]


def test_liveness_passes_on_an_old_backlog_that_fails_the_keeping_up_check(
    start_worker: StartWorker,
    settings: Settings,
    deps: Deps,
    make_article: Callable[..., int],
) -> None:
    worker = start_worker(concurrency=1)
    # A pending job enqueued two hours ago (nothing kicks a drain: no beat, no message).
    pipeline.intake(deps, [make_article()])
    with deps.engine.begin() as conn:
        conn.execute(text("UPDATE embedding_jobs SET enqueued_at = now() - interval '2 hours'"))
    # Compose names the worker `embeddings@%h` and checks it by the same pattern.
    assert worker.name.endswith(f"@{socket.gethostname()}")
    own = worker.name.split("@")[0] + "@%h"

    live_code, live = embedder_health(settings, "--liveness", "--worker", own)
    full_code, full = embedder_health(settings, "--worker", own)

    assert (live_code, live["ok"], sorted(live["checks"])) == (0, True, ["broker", "worker"])
    assert live["checks"]["worker"]["workers"] == [worker.name]
    assert (full_code, failing(full)) == (1, ["backlog"])
    assert full["checks"]["backlog"]["oldest_pending_s"] >= 7000

    # Liveness pings only the named worker: another container's name does not answer.
    other_code, other = embedder_health(settings, "--liveness", "--worker", "other@%h")
    assert (other_code, failing(other)) == (1, ["worker"])

    # A database outage is not a reason to restart the worker either.
    lost = f"postgresql://embedder@127.0.0.1:{free_port()}/nope"
    code, report = embedder_health(
        settings, "--liveness", "--worker", own, "--timeout", "2", DATABASE_URL=lost
    )
    assert (code, report["ok"]) == (0, True)
    full_code, full = embedder_health(settings, "--worker", own, DATABASE_URL=lost)
    assert (full_code, failing(full)) == (1, ["database", "backlog"])
