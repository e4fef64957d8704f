"""Migrations: upgrade on an empty database, models match migrations, down and up again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from devstack.services import LocalPostgres
from worker.schema import alembic_config

pytestmark = pytest.mark.integration

TABLES = {"articles", "article_embeddings", "embedding_jobs", "embedding_models"}


@pytest.fixture
def empty_engine(pg: LocalPostgres) -> Iterator[Engine]:
    name = f"m_{uuid.uuid4().hex[:12]}"
    pg.create_database(name)
    engine = create_engine(pg.url(name).replace("postgresql://", "postgresql+psycopg://"))
    yield engine
    engine.dispose()
    pg.drop_database(name)


def _upgrade(engine: Engine, target: str = "head") -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), target)


def _downgrade(engine: Engine, target: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), target)


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_creates_schema_partitions_and_indexes(empty_engine: Engine) -> None:
    _upgrade(empty_engine)
    assert _tables(empty_engine) >= TABLES
    with empty_engine.connect() as conn:
        parts = (
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'articles'::regclass ORDER BY 1"
                )
            )
            .scalars()
            .all()
        )
        indexes = set(
            conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'articles'")
            ).scalars()
        )
        options = conn.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = 'article_embeddings'::regclass")
        ).scalar_one()
    assert "articles_default" in parts
    assert len([p for p in parts if p != "articles_default"]) == 4  # this month + 3 ahead
    assert {
        "articles_user_read_published_idx",
        "articles_feed_idx",
        "articles_title_trgm_idx",
    } <= indexes
    assert options == ["parallel_workers=8"]  # HNSW builds get parallel workers (0005)


def test_models_match_migrations(empty_engine: Engine) -> None:
    _upgrade(empty_engine)
    with empty_engine.begin() as conn:
        command.check(alembic_config(conn))  # raises when autogenerate finds a difference


def test_downgrade_and_upgrade_again(empty_engine: Engine) -> None:
    _upgrade(empty_engine)
    script = ScriptDirectory.from_config(alembic_config())
    newest = script.get_current_head()
    previous = script.get_revision(newest).down_revision
    assert isinstance(previous, str)
    _downgrade(empty_engine, previous)
    _downgrade(empty_engine, "base")
    assert not (TABLES & _tables(empty_engine))
    _upgrade(empty_engine)
    assert _tables(empty_engine) >= TABLES


def test_hnsw_index_exists_for_registered_models(deps) -> None:  # type: ignore[no-untyped-def]
    from worker.maintenance import index_name

    with deps.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, i.indisvalid, pg_get_indexdef(c.oid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE '%hnsw%'"
            )
        ).all()
    by_name = {r[0]: (r[1], r[2]) for r in rows}
    for model, dims in (("text-embedding-3-small", 1536), ("mini-384", 384)):
        assert index_name(model) in by_name, sorted(by_name)
        valid, definition = by_name[index_name(model)]
        assert valid
        assert f"::halfvec({dims})" in definition and "halfvec_cosine_ops" in definition
        assert f"model = '{model}'" in definition
