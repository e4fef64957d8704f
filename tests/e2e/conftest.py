"""End-to-end fixtures: a real Celery worker (prefork) in a subprocess, against the session's
PostgreSQL, Redis (DB 9, flushed per test) and fake OpenAI server.

The worker gets its whole configuration through the environment, from the test's Settings
(tasks/app.py reads Settings.from_env() at import). Readiness is a control ping, never a
sleep. Teardown sends SIGTERM to the worker's process group, then SIGKILL after a timeout.
A failing test shows the tail of every worker log it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery import Celery

from tests.conftest import REPO
from tests.workers import celery_worker_argv
from worker.config import Settings

WORKER_START_TIMEOUT_S = 40.0
WORKER_STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 60

_LOGS = pytest.StashKey[list[Path]]()


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or predicate!r}")
        time.sleep(interval)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make Settings.from_env() return `settings`."""
    return settings.to_env()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for path in item.stash.get(_LOGS, []):
            report.sections.append((f"tail of {path.name}", tail(path)))


def register_log(request: pytest.FixtureRequest, path: Path) -> None:
    request.node.stash.setdefault(_LOGS, []).append(path)


def client_app(redis_url: str, **conf: Any) -> Celery:
    """A Celery app for the test's side of the broker: control commands, odd messages."""
    app = Celery("e2e-client", broker=redis_url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    return app


@dataclass
class WorkerProcess:
    """One `celery worker` subprocess and the knobs to stop or inspect it."""

    name: str
    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path
    control: Celery
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ping(self, timeout: float = 0.5) -> bool:
        replies = self.control.control.ping(destination=[self.name], timeout=timeout)
        return any(self.name in reply for reply in replies)

    def wait_ready(self, timeout: float = WORKER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ping():
            if not self.is_alive():
                pytest.fail(f"worker {self.name} exited with {self.process.returncode} at start")
            if time.monotonic() > deadline:
                pytest.fail(f"worker {self.name} did not answer a ping within {timeout:.0f}s")

    def children(self) -> list[psutil.Process]:
        """The pool's child processes (where tasks run)."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def child_talking_to(self, port: int) -> psutil.Process | None:
        """The pool child with an open TCP connection to 127.0.0.1:`port` (mid-request)."""
        for child in self.children():
            try:
                for conn in child.net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == port and conn.status == "ESTABLISHED":
                        return child
            except psutil.NoSuchProcess:
                continue
        return None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT_S) -> int:
        """SIGTERM the whole process group (a warm shutdown); SIGKILL if it lingers."""
        if self.is_alive():
            self.signal_group(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                self.signal_group(signal.SIGKILL)
                self.process.wait(10)
        # Pool children outlive a killed parent only briefly (PDEATHSIG); make sure.
        self.signal_group(signal.SIGKILL)
        return self.process.returncode


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(
    request: pytest.FixtureRequest,
    settings: Settings,
    redis_client: redis.Redis[bytes],
    tmp_path: Path,
) -> Iterator[StartWorker]:
    """Start a real worker: start_worker(concurrency=2, env={...}, **Settings overrides)."""
    started: list[WorkerProcess] = []
    control = client_app(settings.redis_url)

    def start(
        *,
        concurrency: int = 2,
        queues: str = "embeddings,maintenance",
        env: dict[str, str] | None = None,
        wait: bool = True,
        **overrides: Any,
    ) -> WorkerProcess:
        worker_settings = replace(settings, **overrides)
        name = f"e2e-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        log_path = tmp_path / f"worker-{len(started) + 1}.log"
        register_log(request, log_path)
        full_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        full_env.update(settings_env(worker_settings))
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                celery_worker_argv(queues, concurrency, name, events=True),
                cwd=REPO,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: we signal the whole pool
            )
        worker = WorkerProcess(name, worker_settings, process, log_path, control, env or {})
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
    control.close()
