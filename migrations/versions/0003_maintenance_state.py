"""Maintenance state: the counters snapshot taken at each model's last HNSW build.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per model (its partial HNSW index): when it was last built and the
    # article_embeddings counters from pg_stat_user_tables at that moment, so churn since
    # the build (updates + deletes) can be compared with the live rows. See
    # worker.maintenance.hnsw_churn.
    op.execute(
        """
        CREATE TABLE hnsw_index_builds (
            model text PRIMARY KEY REFERENCES embedding_models (name)
                ON DELETE CASCADE ON UPDATE CASCADE,
            index_name text NOT NULL,
            built_at timestamptz NOT NULL DEFAULT now(),
            build_seconds double precision,
            live_rows bigint NOT NULL DEFAULT 0,
            tup_upd bigint NOT NULL DEFAULT 0,
            tup_del bigint NOT NULL DEFAULT 0,
            stats_reset timestamptz
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE hnsw_index_builds")
