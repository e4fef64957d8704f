"""`embedder health` against real PostgreSQL and Redis (the live-worker ping is in tests/e2e)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from sqlalchemy import text

from devstack.services import free_port
from tests.conftest import MODEL, REPO
from tests.e2e.conftest import settings_env
from worker import pipeline
from worker.config import Settings
from worker.deps import Deps
from worker.health import check_health
from worker.schema import head_revision as alembic_head

pytestmark = [pytest.mark.integration, pytest.mark.redis]

NO_WORKER = ("worker",)


def test_healthy_stack_passes_every_check_but_the_missing_worker(
    settings: Settings, deps: Deps, redis_client: object
) -> None:
    health = check_health(settings, engine=deps.engine, timeout_s=0.5)

    assert {name: c.ok for name, c in health.checks.items()} == {
        "database": True,
        "broker": True,
        "worker": False,  # nothing consumes this test's Redis database
        "backlog": True,
    }
    database = health.checks["database"]
    assert database.data == {
        "revision": alembic_head(),
        "head": alembic_head(),
        "server_version": database.data["server_version"],
        "pgvector": database.data["pgvector"],
    }
    assert database.detail == (
        f"reachable, at head {alembic_head()}; PostgreSQL {database.data['server_version']}, "
        f"pgvector {database.data['pgvector']}"
    )
    assert health.checks["worker"].detail == "no worker answered a ping within 0.5s"
    assert not health.ok


def test_old_backlog_fails_and_names_the_model(
    settings: Settings, deps: Deps, make_article
) -> None:
    fresh, stale = make_article(), make_article()
    pipeline.intake(deps, [fresh])
    pipeline.intake(deps, [stale], "mini-384")
    with deps.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE embedding_jobs SET enqueued_at = now() - interval '2 hours' WHERE model = 'mini-384'"
            )
        )

    health = check_health(settings, engine=deps.engine, skip=NO_WORKER, max_backlog_age_s=600)

    backlog = health.checks["backlog"]
    assert not backlog.ok and not health.ok
    assert backlog.detail.startswith("oldest pending 7200s > 600s for mini-384")
    assert backlog.data["models"][MODEL]["pending"] == 1
    assert backlog.data["models"]["mini-384"]["pending"] == 1
    assert check_health(settings, engine=deps.engine, skip=NO_WORKER, max_backlog_age_s=9000).ok


def test_schema_behind_the_code_fails(settings: Settings, deps: Deps) -> None:
    with deps.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))

    check = check_health(settings, engine=deps.engine, skip=NO_WORKER).checks["database"]

    assert not check.ok
    assert check.detail == f"schema at ['0001'], code expects {alembic_head()}"


def test_unreachable_services_fail_with_one_line_and_no_password(settings: Settings) -> None:
    port = free_port()  # nothing listens there
    broken = replace(
        settings,
        database_url=f"postgresql://embedder:db-secret-pw@127.0.0.1:{port}/nope",
        redis_url=f"redis://:redis-secret-pw@127.0.0.1:{port}/0",
    )

    health = check_health(broken, timeout_s=0.5)

    assert {name: c.ok for name, c in health.checks.items()} == dict.fromkeys(
        ("database", "broker", "worker", "backlog"), False
    )
    dumped = json.dumps(health.as_dict())
    assert "db-secret-pw" not in dumped and "redis-secret-pw" not in dumped
    assert all("\n" not in c.detail for c in health.checks.values())


def test_cli_prints_json_and_exits_1_when_a_check_fails(settings: Settings, deps: Deps) -> None:
    env = {**os.environ, **settings_env(settings)}
    command = [sys.executable, "-m", "worker.cli", "health", "--json", "--timeout", "0.5"]

    failing = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    passing = subprocess.run(
        [*command, "--skip", "worker"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert failing.returncode == 1, failing.stderr
    report = json.loads(failing.stdout)
    assert (report["ok"], report["checks"]["worker"]["ok"], report["checks"]["database"]["ok"]) == (
        False,
        False,
        True,
    )
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert sorted(json.loads(passing.stdout)["checks"]) == ["backlog", "broker", "database"]


def test_liveness_runs_broker_and_worker_only_so_an_old_backlog_or_a_lost_database_pass(
    settings: Settings, deps: Deps, make_article, redis_client: object
) -> None:
    pipeline.intake(deps, [make_article()])
    with deps.engine.begin() as conn:
        conn.execute(text("UPDATE embedding_jobs SET enqueued_at = now() - interval '2 hours'"))
    lost_database = replace(
        settings, database_url=f"postgresql://embedder@127.0.0.1:{free_port()}/nope"
    )

    keeping_up = check_health(settings, engine=deps.engine, skip=NO_WORKER)
    liveness = check_health(settings, engine=deps.engine, liveness=True, timeout_s=0.5)
    liveness_without_database = check_health(lost_database, liveness=True, timeout_s=0.5)

    assert [name for name, c in keeping_up.checks.items() if not c.ok] == ["backlog"]
    for health in (liveness, liveness_without_database):
        assert list(health.checks) == ["broker", "worker"]
        assert health.checks["broker"].ok
        # No worker consumes this test's Redis database; tests/e2e/test_liveness.py has one.
        assert not health.checks["worker"].ok


def test_a_pgvector_before_084_is_a_warning_that_fails_nothing(
    settings: Settings, deps: Deps, database_url: str
) -> None:
    """Health decides restarts and pages; an old extension is planned work (diagnose fails)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        # What the catalog of a server with an older pgvector says.
        conn.execute("UPDATE pg_extension SET extversion = '0.8.3' WHERE extname = 'vector'")

    health = check_health(settings, engine=deps.engine, skip=NO_WORKER)

    database = health.checks["database"]
    assert database.ok and health.ok
    assert database.data["pgvector"] == "0.8.3"
    (warning,) = database.data["warnings"]
    assert warning.startswith("pgvector 0.8.3 is older than 0.8.4: before it, VACUUM could corrupt")
    assert database.as_dict()["warnings"] == [warning]
    assert f"    WARNING: {warning}" in health.render().splitlines()
