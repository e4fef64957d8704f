"""Schema knowledge: where the migrations are, which revision the code expects, migrate.

The one module that knows Alembic. The CLI, health, diagnostics, the dev stack, benches and
tests all ask here; nothing below it (repository, pipeline) needs to know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

# alembic.ini and migrations/ sit beside the packages in a checkout and in the image
# (an editable install: they are not part of a built wheel).
REPO_ROOT = Path(__file__).resolve().parent.parent


def alembic_config(connection: Connection | None = None) -> Any:
    """Alembic's Config for migrations/; with `connection`, env.py migrates on it."""
    from alembic.config import Config

    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> set[str]:
    """The head revision(s) of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def head_revision() -> str | None:
    """The single head revision of the shipped migrations (None if there are none)."""
    from alembic.script import ScriptDirectory

    head: str | None = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return head


def applied_revisions(conn: Connection) -> set[str]:
    """The revision(s) recorded in the database; empty when it was never migrated."""
    if conn.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return set()
    return {r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))}


def upgrade(engine: Engine, revision: str = "head") -> None:
    """`alembic upgrade` on one connection of `engine`, then drop the pool's connections.

    Fresh connections register the pgvector types, which a first migration has only just
    created.
    """
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    engine.dispose()
