"""A worker started with a bad environment stops with one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_celery_worker_with_bad_config_exits_with_one_line() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "EMBEDDING_PROVIDER": "bogus",
        "DATABASE_URL": "mysql://user:hunter2@db/x",
        "DB_POOL_SIZE": "zero",
    }
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "--loglevel=ERROR"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert any(
        line.startswith("embedder: invalid configuration")
        and "EMBEDDING_PROVIDER" in line
        and "DATABASE_URL" in line
        and "DB_POOL_SIZE" in line
        for line in lines
    ), done.stderr
    assert "hunter2" not in done.stderr + done.stdout
