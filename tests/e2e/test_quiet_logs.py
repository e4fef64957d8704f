"""At INFO an idle worker says nothing: real events must stand out in the operator's log."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import MODEL
from tests.e2e.conftest import StartWorker, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def _processed(worker: Any, task: str) -> int:
    stats = worker.control.control.inspect(destination=[worker.name], timeout=1).stats() or {}
    return int(stats.get(worker.name, {}).get("total", {}).get(task, 0))


def test_an_idle_worker_logs_nothing_at_info(start_worker: StartWorker) -> None:
    worker = start_worker(log_level="INFO")
    ready_at = len(worker.log())
    # What beat sends an idle worker: sweeps, and drains that find nothing to claim.
    for _ in range(3):
        worker.control.send_task("embeddings.sweep", queue="embeddings")
        worker.control.send_task("embeddings.drain", args=[MODEL], queue="embeddings")
    wait_until(
        lambda: (
            _processed(worker, "embeddings.sweep") >= 3
            and _processed(worker, "embeddings.drain") >= 3
        ),
        30,
        what="three sweeps and three empty drains",
    )
    idle = worker.log()[ready_at:]
    assert [line for line in idle.splitlines() if " INFO " in line] == []
