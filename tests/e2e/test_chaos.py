"""The chaos run (bench/chaos.py) at CI size: every fault of issue 3 at once, nothing lost.

The driver starts its own PostgreSQL, Redis, fake API and two real Celery workers, kills
pool children (timing how long each kill's claims stay stranded), restarts Redis empty and
PostgreSQL, turns the API's key and responses bad, starves a worker of connections, and
counts every article at the end. This test
runs it as a subprocess (its clean-up runs on SIGTERM: a timeout here stops everything),
and checks the count and that each fault really was injected.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import register_log

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(330)]

ARTICLES = 1500
BAD_EACH = 5  # empty-text articles, and articles the API rejects with HTTP 400
RUN_TIMEOUT_S = 300
SUMMARY = re.compile(r"^lost=(\d+) duplicated=(\d+) failed_with_reason=(\d+)$", re.MULTILINE)
RECOVERY = re.compile(r"^recovery after SIGKILL \(s\): \[(.*)\] max=", re.MULTILINE)
RECOVERY_TARGET_S = 30.0  # a SIGKILLed worker's claims are taken up again within this


def run_driver(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    log = tmp_path / "chaos.log"
    register_log(request, log)
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "chaos.py"),
                "--articles",
                str(ARTICLES),
                "--bad",
                str(BAD_EACH),
                "--settle-timeout",
                "150",
                "--json",
                str(tmp_path / "chaos.json"),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            code = driver.wait(RUN_TIMEOUT_S)
        finally:
            if driver.poll() is None:  # timed out or interrupted: the driver cleans up
                driver.send_signal(signal.SIGTERM)
                try:
                    driver.wait(90)
                except subprocess.TimeoutExpired:
                    driver.kill()
                    driver.wait(10)
    return log.read_text(errors="replace"), code


def test_chaos_run_loses_nothing_and_duplicates_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    output, code = run_driver(request, tmp_path)

    summaries = SUMMARY.findall(output)
    assert len(summaries) == 1, output[-4000:]
    lost, duplicated, failed_with_reason = map(int, summaries[0])
    result = json.loads((tmp_path / "chaos.json").read_text())
    assert (lost, duplicated, failed_with_reason) == (0, 0, 2 * BAD_EACH), output[-4000:]
    assert result["settled"] is True
    assert result["corrupted"] == 0  # every stored vector is the API's for that text
    assert result["expected"] == ARTICLES
    assert result["embedded"] + result["failed_with_reason"] == ARTICLES
    assert result["unexpected_failures"] == []  # only the bad articles failed, nothing else
    assert result["reasons"] == {"skipped:empty_text": BAD_EACH, "failed:invalid_input": BAD_EACH}
    # Not one connection over the limit, however starved the tight worker was.
    assert result["peak_connections"]["b"] <= 1
    assert result["peak_connections"]["a"] <= 2
    faults = result["faults"]
    assert faults["sigkill"] >= 3, faults  # each a child holding an in-flight claim
    assert faults["sigkill_stranded"] > 0, faults
    # Every kill timed, from the SIGKILL to its claims taken up again (lease + sweep/claim).
    recovery = result["recovery_s"]
    assert RECOVERY.search(output), output[-4000:]
    assert len(recovery) == faults["sigkill"], recovery
    assert all(r is not None and r <= RECOVERY_TARGET_S for r in recovery), recovery
    assert faults["redis_restart"] == 2, faults
    assert faults["pg_restart"] == 2, faults
    assert faults["auth_window"] == 1 and faults["http_401"] >= 1, faults
    assert faults["http_429"] >= 0.2 * faults["api_requests"], faults
    assert faults["http_500"] >= 0.05 * faults["api_requests"], faults
    assert faults["http_400"] >= BAD_EACH, faults
    assert faults["timeouts"] >= 1, faults
    assert (faults["short"], faults["malformed"], faults["wrong_dim"]) == (3, 3, 1), faults
    assert faults["redriven"] >= 1, faults  # the wrong-dimension batch, re-driven and embedded
    assert faults["pool_timeouts"] >= 1, faults  # the pool really was exhausted
    assert code == 0, output[-4000:]
