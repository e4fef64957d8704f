"""Dead letters: what a worker refused, kept so that nothing is lost and an operator can
fix and re-drive it (`embedder dead-letters`).

One row per refused message or refused part of a message: the raw value (at most 64 KiB;
`payload_size` is its original size), the reason, when, and where it came from (queue, task
name and id when they could be read). `dedupe_key` makes recording idempotent: a message
delivered twice (a worker lost mid-task) is recorded once.

Workers insert rows and the CLI deletes them (replay, purge), so `embedder_worker` gets
SELECT, INSERT, DELETE; the table belongs to `embedder_maintenance` like every other
(revision 0004).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported: a migration is frozen history (0004 made these roles).
WORKER = "embedder_worker"
MAINTENANCE = "embedder_maintenance"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE dead_letters (
            id bigint GENERATED ALWAYS AS IDENTITY,
            received_at timestamptz NOT NULL DEFAULT now(),
            reason text NOT NULL,
            detail text NOT NULL DEFAULT '',
            queue text,
            task_name text,
            task_id text,
            payload bytea NOT NULL,
            payload_size bigint NOT NULL,
            dedupe_key text NOT NULL,
            CONSTRAINT dead_letters_pkey PRIMARY KEY (id),
            CONSTRAINT dead_letters_dedupe_key_key UNIQUE (dedupe_key),
            CONSTRAINT dead_letters_payload_size_check
                CHECK (payload_size >= octet_length(payload))
        )
        """
    )
    # list (newest first) and purge --before walk received_at.
    op.execute("CREATE INDEX dead_letters_received_idx ON dead_letters (received_at)")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON dead_letters TO {WORKER}")
    op.execute(f"ALTER TABLE dead_letters OWNER TO {MAINTENANCE}")


def downgrade() -> None:
    # The stored dead letters go with the table: `embedder dead-letters list` them first.
    op.execute("DROP TABLE dead_letters")
