"""Least privilege (migration 0004): a login in embedder_worker runs the pipeline but no DDL;
a login in embedder_maintenance creates partitions and builds and rebuilds HNSW indexes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from devstack.services import LocalPostgres
from tests.conftest import MODEL, SMALL_MODEL, fetch
from worker import hnsw, maintenance, partitions, pipeline
from worker.deps import Deps
from worker.schema import alembic_config

pytestmark = pytest.mark.integration

WORKER = "embedder_worker"
MAINTENANCE = "embedder_maintenance"


@pytest.fixture
def make_login(pg: LocalPostgres, database_url: str) -> Iterator[Callable[..., str]]:
    """Create LOGIN roles (random names) in a group role; dropped after the test."""
    created: list[str] = []

    def factory(group: str, *, default_role: str | None = None) -> str:
        name = f"t_login_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE {group}")
            if default_role:
                conn.execute(f"ALTER ROLE {name} SET role = '{default_role}'")
        created.append(name)
        return database_url.replace("postgres@", f"{name}@", 1)

    yield factory
    for name in created:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {name}")  # anything it created in the test database
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {name}")


def _months_ahead_of(deps: Deps) -> int:
    """How far ahead the test database's partitions already go (0002 made 3 months)."""
    with deps.engine.connect() as conn:
        names = partitions.existing_partitions(conn)
    return len([n for n in names if n != partitions.DEFAULT_PARTITION]) - 1


def test_worker_role_runs_the_pipeline_but_no_ddl(make_login, make_deps, make_article):
    deps = make_deps(database_url=make_login(WORKER))
    ids = [make_article() for _ in range(5)]

    pipeline.intake(deps, ids)
    result = pipeline.drain(deps, budget_s=30)
    pipeline.sweep(deps)

    assert (result.embedded, result.failed) == (5, 0)
    rows = fetch(deps, "SELECT article_id, model FROM article_embeddings ORDER BY article_id")
    assert [tuple(r) for r in rows] == [(i, MODEL) for i in ids]
    assert fetch(deps, "SELECT count(*) FROM alembic_version")[0][0] == 1  # health reads it
    denied = {
        "CREATE TABLE scratch (id int)": "permission denied for schema",
        "CREATE INDEX scratch_idx ON article_embeddings (created_at)": "must be owner of table",
        "ALTER TABLE embedding_jobs ADD COLUMN x int": "must be owner of table",
        "UPDATE articles SET title = 'x'": "permission denied for table articles",
        "DELETE FROM embedding_models": "permission denied for table embedding_models",
        "TRUNCATE article_embeddings": "permission denied for table article_embeddings",
    }
    for sql, message in denied.items():
        with (
            psycopg.connect(deps.settings.database_url) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match=message),
        ):
            conn.execute(sql)
    # Beat's jobs are out of reach too: a partition is a new table in the schema.
    with pytest.raises(ProgrammingError, match="permission denied for schema"):
        maintenance.ensure_partitions(deps, months_ahead=_months_ahead_of(deps) + 1)


def test_maintenance_role_creates_partitions_and_rebuilds_indexes(
    make_login, make_deps, make_article
):
    deps = make_deps(database_url=make_login(MAINTENANCE, default_role=MAINTENANCE))
    ahead = _months_ahead_of(deps)
    # A row for a month without a partition waits in DEFAULT until beat creates it.
    now = datetime.now(UTC)
    year, month = divmod(now.year * 12 + now.month - 1 + ahead + 1, 12)
    later = make_article(published_at=datetime(year, month + 1, 15, tzinfo=UTC))

    created = maintenance.ensure_partitions(deps, months_ahead=ahead + 2)
    rebuilt = maintenance.rebuild_hnsw(deps, force=True)
    info = maintenance.register_model(deps, "roles-test-8", 8, "openai")  # CREATE INDEX

    assert len(created.created) == 2 and not created.is_locked_out
    assert sorted(rebuilt.rebuilt) == sorted(hnsw.index_name(m) for m in (MODEL, SMALL_MODEL))
    owners = fetch(
        deps,
        "SELECT c.relname, c.relowner::regrole::text FROM pg_class c "
        "WHERE c.relname = ANY(:names) ORDER BY 1",
        names=[*created.created, hnsw.index_name(info.name)],
    )
    # Owned by the group role (the login's default role), not by the login itself.
    assert [tuple(r) for r in owners] == sorted(
        (n, MAINTENANCE) for n in [*created.created, hnsw.index_name(info.name)]
    )
    (where,) = fetch(deps, "SELECT tableoid::regclass::text FROM articles WHERE id = :i", i=later)
    assert where[0] == partitions.month_partition(year, month + 1).name


def test_downgrade_revokes_and_keeps_roles_other_databases_use(pg: LocalPostgres, template_db):
    name = f"m_{uuid.uuid4().hex[:12]}"
    pg.create_database(name)
    engine = create_engine(pg.url(name).replace("postgresql://", "postgresql+psycopg://"))
    privileges = text(
        "SELECT count(*) FROM information_schema.role_table_grants "
        "WHERE grantee IN ('embedder_worker', 'embedder_maintenance')"
    )
    owned = text("SELECT count(*) FROM pg_class WHERE relowner = 'embedder_maintenance'::regrole")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.connect() as conn:
            assert conn.execute(privileges).scalar_one() > 0
            assert conn.execute(owned).scalar_one() >= 10  # tables, partitions, their indexes
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0003")
        with engine.connect() as conn:
            assert conn.execute(privileges).scalar_one() == 0
            assert conn.execute(owned).scalar_one() == 0
            # The session's template database still uses the roles: they stay.
            roles = conn.execute(
                text("SELECT rolname FROM pg_roles WHERE rolname LIKE 'embedder_%' ORDER BY 1")
            ).scalars()
            assert list(roles) == [MAINTENANCE, WORKER]
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.connect() as conn:
            assert conn.execute(owned).scalar_one() >= 10
    finally:
        engine.dispose()
        pg.drop_database(name)
