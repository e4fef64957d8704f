"""`make demo` / `make run` (`python -m devstack demo|run`) as a user sees them: the whole
local stack (real Procfile under honcho: workers, beat, Flower, exporter) against the
session's PostgreSQL, a Redis URL that does not answer (so a private redis-server starts),
and the real terminal signal for Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.services import LocalPostgres, free_port, redis_answers
from tests.conftest import REPO
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

SUMMARY = re.compile(
    r"^summary: articles=(\d+) embedded=(\d+) failed=(\d+) batches=(\d+) requests=(\d+) "
)
STACK_PREFIX = re.compile(
    r"\d\d:\d\d:\d\d (worker|maintenance|beat|flower|metrics|system)\.?\d* +\|"
)


class Stack:
    """One `python -m devstack MODE` process, its output collected line by line."""

    def __init__(self, mode: str, env: dict[str, str], articles: int) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack", mode, "--articles", str(articles)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def stack_env(pg: LocalPostgres, tmp_path: Path) -> Iterator[dict[str, str]]:
    name = f"t_devstack_{uuid.uuid4().hex[:10]}"
    pg.create_database(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBED", "OPENAI", "REDIS"))}
    env.update(
        DATABASE_URL=pg.url(name),
        # Nothing listens here: the stack must say so and start its private Redis.
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        EMBEDDING_PROVIDER="local",
        FLOWER_PORT=str(free_port()),
        METRICS_PORT=str(free_port()),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        CELERY_BEAT_SCHEDULE=str(tmp_path / "beat"),
        WORKER_CONCURRENCY="2",
        # The private Redis the stack starts, on a port of this test's own.
        LOCAL_REDIS_PORT=str(free_port()),
    )
    yield env
    pg.drop_database(name)


def test_demo_ingests_into_partitions_and_a_second_run_reports_only_its_own_work(
    stack_env: dict[str, str],
) -> None:
    first = Stack("demo", stack_env, articles=120)
    try:
        assert first.wait(240) == 0, first.output
    finally:
        first.stop()
    out = first.output
    port = stack_env["LOCAL_REDIS_PORT"]
    assert f"does not answer: starting a private redis-server on 127.0.0.1:{port}" in out
    assert "Traceback" not in out
    (summary,) = [m for line in first.lines if (m := SUMMARY.match(line))]
    articles, embedded, failed, batches, requests = map(int, summary.groups())
    assert (articles, embedded, failed) == (120, 120, 0)
    assert batches >= 1 and requests >= batches
    # Spread over monthly partitions, a few in DEFAULT (older than any partition).
    (spread,) = re.findall(r"\((\d+) in monthly partitions, (\d+) in articles_default\)", out)
    in_months, in_default = map(int, spread)
    assert in_months + in_default == 120 and in_months > 100 and in_default > 0
    # Search results are labelled, similarity first.
    assert out.count("similarity   article  published   title") == 2
    # Without a terminal there is no bar: progress and the relayed logs never share a line.
    for line in first.lines:
        if line.startswith("progress:") or line.startswith("summary:"):
            assert not STACK_PREFIX.search(line), line

    second = Stack("demo", stack_env, articles=120)
    try:
        assert second.wait(240) == 0, second.output
    finally:
        second.stop()
    assert "summary: nothing to embed: all 120 articles have a vector" in second.output
    assert not any(SUMMARY.match(line) for line in second.lines)


def test_ctrl_c_stops_the_workers_first_and_the_private_redis_last_without_a_traceback(
    stack_env: dict[str, str],
) -> None:
    private_url = f"redis://127.0.0.1:{stack_env['LOCAL_REDIS_PORT']}/0"
    stack = Stack("run", stack_env, articles=30)
    try:
        wait_until(lambda: stack.has("running; Ctrl-C to stop"), 180, what="the stack to run")
        assert redis_answers(private_url)
        # What a terminal does on Ctrl-C: SIGINT to the whole foreground process group.
        os.killpg(stack.process.pid, signal.SIGINT)
        assert stack.wait(90) == 0, stack.output
    finally:
        stack.stop()
    out = stack.output
    assert "Traceback" not in out, out
    assert stack.lines[-1] == "stopped"
    assert not redis_answers(private_url)
    # The workers were told to stop while Redis still answered: no lost-broker errors.
    assert "Cannot connect to redis" not in out and "Connection refused" not in out
