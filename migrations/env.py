"""Alembic environment: reuses a connection passed in config.attributes["connection"]."""

from __future__ import annotations

import re

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from worker.config import Settings
from worker.models import metadata

# Created at run time, not by migrations: monthly partitions and per-model HNSW indexes.
_RUNTIME_TABLE = re.compile(r"^articles_(\d{4}_\d{2}|default)$")
_RUNTIME_INDEX = re.compile(r"^article_embeddings_.+_hnsw_cosine_idx$")
# PostgreSQL clones an FK to a partitioned table once per partition (…_fkey_1, …_fkey_2).
_PARTITION_FK = re.compile(r"_fkey_\d+$")


def include_object(  # alembic's hook signature
    obj: object,  # noqa: ARG001
    name: str | None,
    type_: str,
    reflected: bool,  # noqa: ARG001
    compare_to: object,  # noqa: ARG001
) -> bool:
    if type_ == "table" and name and _RUNTIME_TABLE.match(name):
        return False
    if type_ == "foreign_key_constraint" and name and _PARTITION_FK.search(name):
        return False
    return not (type_ == "index" and name and _RUNTIME_INDEX.match(name))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or Settings.from_env().sqlalchemy_url
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()
