"""Smoke runs of the benchmarks in bench/: each script at a tiny size, run as a user runs it.

Each test starts the script as a subprocess with this interpreter from the repository root
and checks that it completes (exit code 0) and prints the figures it exists to print. At
this size the figures themselves mean nothing; the point is that a broken script fails
`make test` instead of the next person who wants a number.

bench/chaos.py has no smoke run here: tests/e2e/test_chaos.py already runs it end to end
in `make test` (1,500 articles, every fault, marker `chaos`), and checks its report.

The scripts start their own PostgreSQL (data under .data/test/, removed afterwards) and,
for the ingest bench, real Celery workers and the fake OpenAI server. The ingest bench gets
a redis-server of its own: it flushes its database, and on a shared Redis another
session's workers would take its messages off the `embeddings` queue (and it theirs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.services import LocalPostgres, LocalRedis, free_port
from tests.conftest import REPO, TEST_DATA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RUN_TIMEOUT_S = 240  # below the test's timeout: the script is stopped and its output shown
NUMBER = r"[\d,]+(?:\.\d+)?"


def run_bench(script: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run bench/<script> with `args`; its output, once it has exited 0 (else the test fails)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / script), *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        code: int | None = None
        try:
            code = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass  # reported below, with its output
        finally:
            if proc.poll() is None:  # timed out or interrupted: SIGTERM runs its clean-up
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
    output = log.read_text(errors="replace")
    outcome = f"exited {code}" if code is not None else f"ran over {RUN_TIMEOUT_S} s"
    assert code == 0, f"bench/{script} {outcome}:\n{output[-6000:]}"
    return output


def find(pattern: str, output: str) -> list[tuple[str, ...]]:
    """Every match of `pattern` (one line each); the test fails when there is none."""
    found = [m.groups() or (m.group(0),) for m in re.finditer(pattern, output, flags=re.MULTILINE)]
    assert found, f"no line matches {pattern!r} in:\n{output[-6000:]}"
    return found


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data directory for the script's own server; stopped (if left running) and removed."""
    path = TEST_DATA / f"bench-pg-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    LocalPostgres(path, 0).stop("immediate")  # a no-op when the script stopped it
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[str]:
    """The URL of a private redis-server (free port, no persistence), stopped afterwards."""
    server = LocalRedis(TEST_DATA / f"bench-redis-{os.getpid()}", free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def test_ingest_bench_smoke(pg_dir: Path, own_redis: str, tmp_path: Path) -> None:
    articles, naive = 200, 20
    result = tmp_path / "ingest.json"
    output = run_bench(
        "ingest.py",
        [
            *("--articles", str(articles), "--latency-ms", "0"),
            *("--concurrency", "2", "--batch-max", "256"),
            *("--naive-articles", str(naive), "--hnsw", "8:32", "--backfill"),
            *("--pg-dir", str(pg_dir), "--json", str(result)),
        ],
        tmp_path / "ingest.log",
        env={"REDIS_URL": own_redis},
    )

    find(rf"^fake API ceiling: {NUMBER} inputs/s", output)
    run = rf"{articles} in {NUMBER} s = {NUMBER} articles/s"
    calls = rf"; {NUMBER} API requests, mean batch \d+$"
    find(rf"^\(a\) worker -c 2, EMBED_BATCH_MAX 256: {run}{calls}", output)
    find(rf"^\(b\) raw COPY, 2 writer\(s\): {run}$", output)
    naive_run = rf"{naive} in {NUMBER} s = {NUMBER} articles/s"
    find(
        rf"^\(c\) naive loop \({naive} articles measured, extrapolated\): {naive_run}; "
        rf"{naive} API requests, mean batch 1$",
        output,
    )
    find(rf"^backfill -c 2, EMBED_BATCH_MAX 256: {run}{calls}", output)
    find(r"^    ingest .* s \+ index build .* s \(CREATE INDEX CONCURRENTLY", output)
    find(r"^    CPU ms per article: .*worker", output)
    find(r"^== ratios ==$", output)
    find(rf"\(a\)/\(b\) = {NUMBER}; CPU per article \(b\)/\(a\) = {NUMBER}; \(a\)/\(c\) = ", output)
    find(rf"^  backfill incl\. index build {NUMBER} s vs steady state", output)

    results = {r["label"]: r for r in json.loads(result.read_text())["results"]}
    (a,) = (r for label, r in results.items() if label.startswith("(a)"))
    assert (a["articles"], a["failed"]) == (articles, 0), a
    # What the fake API received during the run: every article at least once, in requests
    # of at most EMBED_BATCH_MAX (256) inputs.
    assert a["inputs"] >= articles, a
    assert a["inputs"] / 256 <= a["requests"] <= a["inputs"], a
    assert a["mean_batch"] == a["inputs"] / a["requests"], a
    (c,) = (r for label, r in results.items() if label.startswith("(c)"))
    assert (c["requests"], c["inputs"]) == (naive, naive), c  # one request per article


def test_search_bench_smoke(pg_dir: Path, tmp_path: Path) -> None:
    result = tmp_path / "search.json"
    output = run_bench(
        "search.py",
        [
            *("--rows", "500", "--clusters", "20", "--queries", "20"),
            *("--ef", "40,100", "--builds", "8:32", "--kinds", "vector,halfvec"),
            # Not the fresh server's 256MB: the bench changes it and restarts, as at full size.
            *("--shared-buffers", "128MB", "--prewarm", "--diagnose", "--inserts", "100"),
            *("--quiet-wait", "0", "--pg-dir", str(pg_dir), "--json", str(result)),
        ],
        tmp_path / "search.log",
    )

    find(r"^shared_buffers = 128MB$", output)
    find(r"^loaded 500 x 1536 vectors in ", output)
    for kind in ("vector", "halfvec"):
        find(rf"^built {kind} m=8 ef_construction=32 in {NUMBER}s \({NUMBER} MB\)", output)
        find(rf"^diagnosis {kind} ef_search 100: .*'search_vector_ms': ", output)
        find(rf"^insert with {kind} index: {NUMBER} rows/s$", output)
    find(rf"^insert with none index: {NUMBER} rows/s$", output)
    header = (
        "| index | m | ef_construction | build s | index MB | ef_search | filter | p50 ms "
        "| p95 ms | p99 ms | recall@10 | plan | load |"
    )
    assert header in output, output[-6000:]
    rows = find(
        rf"^\| (vector|halfvec) \| 8 \| 32 \| {NUMBER} \| {NUMBER} \| (40|100) "
        rf"\| (none|30 days) \| {NUMBER} \| {NUMBER} \| {NUMBER} \| ({NUMBER}) \| ([^|]*) \|",
        output,
    )
    # Each row twice: as measured, and in the final table.
    assert len(rows) == 2 * 2 * 2 * 2, rows
    for _kind, _ef, _filter, recall, plan in rows:
        assert 0.8 <= float(recall) <= 1.0, rows  # exact top-10 of 500 clustered vectors
        assert "(hnsw)" in plan, rows  # the search used the HNSW index it was measuring

    saved = json.loads(result.read_text())
    assert len(saved["results"]) == 8, saved
    assert set(saved["diagnosis"]) == {"vector", "halfvec"}, saved
    assert set(saved["insert_rows_per_s"]) == {"vector", "halfvec", "none"}, saved


def test_ratelimit_bench_smoke(pg_dir: Path, own_redis: str, tmp_path: Path) -> None:
    result = tmp_path / "ratelimit.json"
    output = run_bench(
        "ratelimit.py",
        [
            *("--workers", "2", "--seconds", "15", "--window-s", "4"),
            *("--articles-per-s", "10", "--latency-ms", "20", "--batch-max", "16"),
            *("--pg-dir", str(pg_dir), "--json", str(result)),
        ],
        tmp_path / "ratelimit.log",
        env={"REDIS_URL": own_redis},
    )

    find(
        rf"^== limits {NUMBER} requests and {NUMBER} tokens per 4 s .*no RATE_LIMIT_\* set", output
    )
    find(
        rf"^2 worker\(s\): TPM utilisation {NUMBER}, RPM utilisation {NUMBER} over "
        rf"{NUMBER}-{NUMBER} s; {NUMBER} 429s per 100 requests \(\d+ of \d+\); "
        rf"{NUMBER} articles/s; failed jobs 0 \(rate_limited 0\)$",
        output,
    )
    find(rf"^    TPM utilisation per 10 s: {NUMBER}", output)
    (run,) = json.loads(result.read_text())["runs"]
    # At this size the figures are rough; the workers must still be paced by the learned
    # limits (neither idle nor far over) and no job may fail.
    assert 0.5 <= run["tpm_utilisation"] <= 1.3, run
    assert (run["failed_jobs"], run["rate_limited_failed"]) == (0, 0), run
