"""`embedder diagnose` against real PostgreSQL: a healthy database passes, a broken one is
reported check by check and exits 1."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from devstack.sample import sample_articles
from tests.conftest import MODEL, SMALL_MODEL
from worker import cli, diagnostics, hnsw, partitions, pipeline, repository
from worker.deps import Deps

pytestmark = pytest.mark.integration


def by_name(checks: list[diagnostics.Check]) -> dict[str, diagnostics.Check]:
    return {c.name: c for c in checks}


def run_cli(
    settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("EMBEDDING_PROVIDER", "local")
    code = cli.main(["diagnose", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_healthy_database_passes_every_check(
    deps: Deps, settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checks = diagnostics.run_diagnostics(deps)

    failures = [c for c in checks if c.status == "fail"]
    assert failures == []
    names = {c.name for c in checks}
    assert {
        "migrations",
        "fk_indexes",
        "expected_indexes",
        "invalid_indexes",
        "duplicate_indexes",
        "partitions",
        "plan: batch article load",
        "plan: upsert conflict target",
        "plan: recent-articles browse",
        f"plan: vector search {SMALL_MODEL}",
    } <= names
    code, report = run_cli(settings, monkeypatch, capsys)
    assert (code, report["ok"]) == (0, True)


def test_a_demo_sized_database_passes_every_check(deps: Deps) -> None:
    """The checks accept every correct plan: on the demo's row counts, analysed, the planner
    picks other indexes than on an empty database (the upsert's lookup by article_id once
    went through article_embeddings_article_published_idx and failed a healthy stack)."""
    articles = list(sample_articles(300, seed=11))
    with deps.engine.begin() as conn:
        repository.insert_articles(
            conn,
            [
                {
                    "feed_id": a.feed_id,
                    "user_id": a.user_id,
                    "title": a.title,
                    "content": a.content,
                    "tags": list(a.tags),
                    "is_read": a.is_read,
                    "published_at": a.published_at,
                }
                for a in articles
            ],
        )
        ids = [r[0] for r in conn.execute(text("SELECT id FROM articles ORDER BY id"))]
    pipeline.intake(deps, ids, MODEL)
    result = pipeline.drain(deps, MODEL, linger=False)
    assert result.embedded == 300
    with deps.engine.begin() as conn:
        conn.execute(text("ANALYZE"))

    checks = diagnostics.run_diagnostics(deps)

    assert [c for c in checks if c.status == "fail"] == []
    assert by_name(checks)["plan: upsert conflict target"].summary == (
        "Conflict Arbiter Indexes: article_embeddings_pkey"
    )


def test_broken_database_reports_each_problem_and_exits_1(
    deps: Deps,
    database_url: str,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    today = datetime.now(UTC).date()
    coming = partitions.month_partition(*partitions.add_months(today, 2)).name
    small_index = hnsw.index_name(SMALL_MODEL)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP INDEX article_embeddings_article_published_idx")  # the FK's index
        conn.execute(f"ALTER TABLE articles DETACH PARTITION {coming}")
        conn.execute(f"DROP TABLE {coming}")
        conn.execute(
            f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{small_index}'::regclass"
        )
        conn.execute("CREATE INDEX jobs_dup_idx ON embedding_jobs (model, state, reason)")
        conn.execute("UPDATE alembic_version SET version_num = '0002'")

    checks = by_name(diagnostics.run_diagnostics(deps))

    assert checks["fk_indexes"].status == "fail"
    assert checks["fk_indexes"].details == [
        "article_embeddings.article_embeddings_article_fkey (article_id, published_at)"
    ]
    assert checks["expected_indexes"].status == "fail"
    assert checks["expected_indexes"].details == [
        "article_embeddings: article_embeddings_article_published_idx"
    ]
    assert (checks["invalid_indexes"].status, checks["invalid_indexes"].details) == (
        "fail",
        [small_index],
    )
    assert checks["partitions"].status == "fail" and coming in checks["partitions"].summary
    assert checks["duplicate_indexes"].status == "fail"
    assert checks["duplicate_indexes"].details == [
        "embedding_jobs: embedding_jobs_model_state_idx, jobs_dup_idx"
    ]
    assert checks["migrations"].status == "fail" and "0002" in checks["migrations"].summary
    assert checks[f"plan: vector search {SMALL_MODEL}"].status == "fail"  # invalid: unusable
    assert checks["plan: upsert conflict target"].status == "pass"

    code, report = run_cli(settings, monkeypatch, capsys)
    assert code == 1 and report["ok"] is False
    failing = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert {"fk_indexes", "invalid_indexes", "partitions", "migrations"} <= failing


def test_text_report_marks_failures(deps: Deps, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP INDEX embedding_jobs_model_state_idx")
    checks = diagnostics.run_diagnostics(deps)
    report = diagnostics.render(checks)
    assert "[FAIL] fk_indexes: 1 foreign key(s) without an index" in report
    assert "embedding_jobs.embedding_jobs_model_fkey (model)" in report
    assert report.endswith(f"{len(checks)} checks, 2 failed")  # FK index and expected index


def _installed_pgvector(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
    assert row is not None
    return str(row[0])


def _pretend_pgvector(database_url: str, version: str) -> None:
    """What the catalog of a server with an older pgvector says (the binaries here are newer)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE pg_extension SET extversion = %s WHERE extname = 'vector'", (version,))


def test_versions_are_reported_and_a_pgvector_before_084_fails(
    deps: Deps,
    database_url: str,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with deps.engine.connect() as conn:
        server = conn.execute(text("SHOW server_version")).scalar_one()
    installed = _installed_pgvector(database_url)
    assert hnsw.version_tuple(installed) >= (0, 8, 4)

    current = by_name(diagnostics.run_diagnostics(deps))["versions"]
    assert (current.status, current.summary) == (
        "pass",
        f"PostgreSQL {server}, pgvector {installed}",
    )

    _pretend_pgvector(database_url, "0.8.1")
    old = by_name(diagnostics.run_diagnostics(deps))["versions"]
    code, report = run_cli(settings, monkeypatch, capsys)

    assert (old.status, old.summary) == ("fail", f"PostgreSQL {server}, pgvector 0.8.1")
    assert "older than 0.8.4" in old.details[0] and "VACUUM could corrupt" in old.details[0]
    assert code == 1 and not report["ok"]
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == ["versions"]
