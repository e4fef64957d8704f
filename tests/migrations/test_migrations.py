"""Migrations: upgrade on an empty database, models match migrations, down and up again,
and 0006 (per-model provider settings) on a database that already has models."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

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


def _models(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT name, dimensions, provider, is_indexed FROM embedding_models ORDER BY 1"
                )
            )
        ]


def _model_columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("embedding_models")}


NEW_COLUMNS = {"base_url", "api_key_env", "batch_max", "batch_max_tokens"}


def test_0006_keeps_existing_models_on_process_defaults_and_downgrades(
    empty_engine: Engine,
) -> None:
    _upgrade(empty_engine, "0005")
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO embedding_models (name, dimensions, provider, is_indexed) VALUES "
                "('hosted', 1536, 'openai', true), ('typed', 384, 'OpenAI', false), "
                "('offline', 256, 'local', true)"
            )
        )

    _upgrade(empty_engine, "0006")

    # Rows keep their provider (as typed, lower-cased) and get nulls: the process defaults.
    assert _models(empty_engine) == [
        ("hosted", 1536, "openai", True),
        ("offline", 256, "local", True),
        ("typed", 384, "openai", False),
    ]
    with empty_engine.connect() as conn:
        settings = conn.execute(
            text(
                "SELECT DISTINCT base_url, api_key_env, batch_max, batch_max_tokens "
                "FROM embedding_models"
            )
        ).all()
    assert [tuple(r) for r in settings] == [(None, None, None, None)]
    insert = (
        "INSERT INTO embedding_models (name, dimensions, provider, base_url, api_key_env, "
        "batch_max, batch_max_tokens) VALUES ('new', 8, :p, :u, :k, :bm, :bt)"
    )
    good = {"p": "openai", "u": "http://h:1/v1", "k": "MODEL_KEY", "bm": 64, "bt": 10_000}
    refused = {
        "embedding_models_api_key_env_check": {**good, "k": "sk-live-0123456789"},
        "embedding_models_provider_check": {**good, "p": "cohere"},
        "embedding_models_base_url_check": {**good, "u": "h:1/v1"},
        "embedding_models_local_check": {**good, "p": "local"},
        "embedding_models_batch_max_check": {**good, "bm": 0},
        "embedding_models_batch_max_tokens_check": {**good, "bt": 0},
    }
    for constraint, params in refused.items():
        with pytest.raises(IntegrityError, match=constraint), empty_engine.begin() as conn:
            conn.execute(text(insert), params)
    with empty_engine.begin() as conn:
        conn.execute(text(insert), good)

    _downgrade(empty_engine, "0005")

    assert not (NEW_COLUMNS & _model_columns(empty_engine))
    assert ("new", 8, "openai", True) in _models(empty_engine)
    _upgrade(empty_engine)
    assert _model_columns(empty_engine) >= NEW_COLUMNS


def test_0006_refuses_a_provider_it_cannot_interpret_naming_the_row(
    empty_engine: Engine,
) -> None:
    _upgrade(empty_engine, "0005")
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO embedding_models (name, dimensions, provider) "
                "VALUES ('legacy', 8, 'cohere'), ('fine', 8, 'openai')"
            )
        )

    with pytest.raises(RuntimeError, match=r"'legacy' \('cohere'\).*set each to 'openai'"):
        _upgrade(empty_engine, "0006")

    assert not (NEW_COLUMNS & _model_columns(empty_engine))  # nothing half-applied
    with empty_engine.begin() as conn:
        conn.execute(text("UPDATE embedding_models SET provider = 'openai' WHERE name = 'legacy'"))
    _upgrade(empty_engine, "0006")
    assert _model_columns(empty_engine) >= NEW_COLUMNS
