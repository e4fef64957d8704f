"""Models as data: each embedding_models row says how its model is embedded.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from worker.config: a migration is frozen history.
PROVIDERS = ("openai", "local")


def _normalize_providers() -> None:
    """Lower-case provider names the CLI stored as typed; refuse any other value, by name.

    Before this revision `--provider` took any text and nothing read it. A row whose
    provider is neither openai nor local cannot be given a meaning here: the operator
    decides (UPDATE it to openai or local) and runs the upgrade again.
    """
    op.execute(
        "UPDATE embedding_models SET provider = lower(provider) "
        "WHERE lower(provider) IN ('openai', 'local') AND provider <> lower(provider)"
    )
    unknown = (
        op.get_bind()
        .execute(
            text(
                "SELECT name, provider FROM embedding_models "
                "WHERE provider NOT IN ('openai', 'local') ORDER BY name"
            )
        )
        .all()
    )
    if unknown:
        rows = ", ".join(f"{name!r} ({provider!r})" for name, provider in unknown)
        raise RuntimeError(
            f"embedding_models rows with a provider other than {' or '.join(PROVIDERS)}: "
            f"{rows}; set each to 'openai' or 'local' "
            "(UPDATE embedding_models SET provider = ... WHERE name = ...) and upgrade again"
        )


def upgrade() -> None:
    _normalize_providers()
    # Every new column is null for existing rows, and null means "the process's setting"
    # (OPENAI_BASE_URL, OPENAI_API_KEY, EMBED_BATCH_MAX, EMBED_BATCH_MAX_TOKENS): a row
    # registered with the process's EMBEDDING_PROVIDER is embedded exactly as before.
    # api_key_env holds the NAME of the variable with the key; the CHECK refuses anything
    # that is not a variable name, so a pasted key cannot be stored.
    op.execute(
        """
        ALTER TABLE embedding_models
            ADD COLUMN base_url text,
            ADD COLUMN api_key_env text,
            ADD COLUMN batch_max integer,
            ADD COLUMN batch_max_tokens integer,
            ADD CONSTRAINT embedding_models_provider_check
                CHECK (provider IN ('openai', 'local')),
            ADD CONSTRAINT embedding_models_base_url_check
                CHECK (base_url ~ '^https?://'),
            ADD CONSTRAINT embedding_models_api_key_env_check
                CHECK (api_key_env ~ '^[A-Z_][A-Z0-9_]*$'),
            ADD CONSTRAINT embedding_models_local_check
                CHECK (provider <> 'local' OR (base_url IS NULL AND api_key_env IS NULL)),
            ADD CONSTRAINT embedding_models_batch_max_check
                CHECK (batch_max BETWEEN 1 AND 2048),
            ADD CONSTRAINT embedding_models_batch_max_tokens_check
                CHECK (batch_max_tokens >= 1)
        """
    )


def downgrade() -> None:
    # The per-model settings are lost: after this every model embeds through the process's
    # provider again, as it did before 0006.
    op.execute(
        """
        ALTER TABLE embedding_models
            DROP CONSTRAINT embedding_models_batch_max_tokens_check,
            DROP CONSTRAINT embedding_models_batch_max_check,
            DROP CONSTRAINT embedding_models_local_check,
            DROP CONSTRAINT embedding_models_api_key_env_check,
            DROP CONSTRAINT embedding_models_base_url_check,
            DROP CONSTRAINT embedding_models_provider_check,
            DROP COLUMN batch_max_tokens,
            DROP COLUMN batch_max,
            DROP COLUMN api_key_env,
            DROP COLUMN base_url
        """
    )
