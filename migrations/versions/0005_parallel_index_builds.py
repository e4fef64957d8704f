"""Parallel HNSW builds: article_embeddings declares its parallel workers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The vectors live in TOAST, so the heap itself is small (~40 bytes a row) and
    # PostgreSQL's size-based estimate plans no parallel worker for CREATE INDEX, whatever
    # max_parallel_maintenance_workers says. With the table's own parallel_workers set, a
    # build gets min(8, max_parallel_maintenance_workers) workers (MAINTENANCE_PARALLEL_WORKERS
    # in worker.maintenance): 20k x 1536 rows, m=16: 41 s alone, 23 s with parallel workers.
    # Queries: a parallel scan of this table is still capped by
    # max_parallel_workers_per_gather and costed as before.
    op.execute("ALTER TABLE article_embeddings SET (parallel_workers = 8)")


def downgrade() -> None:
    op.execute("ALTER TABLE article_embeddings RESET (parallel_workers)")
