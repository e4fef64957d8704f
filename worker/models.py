"""The schema as SQLAlchemy Core tables; migrations/ creates it, `alembic check` compares.

Objects created at run time are not described here and are ignored by autogenerate:
monthly partitions of `articles` (maintenance creates them) and the per-model HNSW
indexes (`register_model` creates one per row of `embedding_models`).
"""

from __future__ import annotations

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

metadata = MetaData()

JOB_STATES = ("pending", "in_flight", "failed", "skipped")

embedding_models = Table(
    "embedding_models",
    metadata,
    Column("name", Text, primary_key=True),
    Column("dimensions", Integer, nullable=False),
    # openai (any OpenAI-compatible API) or local; with the columns added by 0006 below it
    # decides how the model is embedded.
    Column("provider", Text, nullable=False, server_default="openai"),
    # Backfill mode: while false, the model's HNSW index is not maintained per insert and
    # searches of this model are refused rather than served from a half-built index.
    Column("is_indexed", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Null means the process's setting: OPENAI_BASE_URL, OPENAI_API_KEY, EMBED_BATCH_MAX,
    # EMBED_BATCH_MAX_TOKENS. api_key_env is the NAME of the key's variable, never the key.
    Column("base_url", Text, nullable=True),
    Column("api_key_env", Text, nullable=True),
    Column("batch_max", Integer, nullable=True),
    Column("batch_max_tokens", Integer, nullable=True),
    CheckConstraint("dimensions BETWEEN 1 AND 16000", name="embedding_models_dimensions_check"),
    CheckConstraint("provider IN ('openai', 'local')", name="embedding_models_provider_check"),
    CheckConstraint("base_url ~ '^https?://'", name="embedding_models_base_url_check"),
    CheckConstraint(
        "api_key_env ~ '^[A-Z_][A-Z0-9_]*$'", name="embedding_models_api_key_env_check"
    ),
    CheckConstraint(
        "provider <> 'local' OR (base_url IS NULL AND api_key_env IS NULL)",
        name="embedding_models_local_check",
    ),
    CheckConstraint("batch_max BETWEEN 1 AND 2048", name="embedding_models_batch_max_check"),
    CheckConstraint("batch_max_tokens >= 1", name="embedding_models_batch_max_tokens_check"),
)

articles = Table(
    "articles",
    metadata,
    Column("id", BigInteger, Identity(always=False), nullable=False),
    Column("feed_id", BigInteger, nullable=True),
    Column("user_id", BigInteger, nullable=True),
    Column("title", Text, nullable=False, server_default=""),
    Column("content", Text, nullable=False, server_default=""),
    Column("tags", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("is_read", Boolean, nullable=False, server_default=text("false")),
    Column("published_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("id", "published_at", name="articles_pkey"),
    Index("articles_user_read_published_idx", "user_id", "is_read", text("published_at DESC")),
    Index("articles_feed_idx", "feed_id", postgresql_include=["tags"]),
    Index(
        "articles_title_trgm_idx",
        "title",
        postgresql_using="gin",
        postgresql_ops={"title": "gin_trgm_ops"},
    ),
    postgresql_partition_by="RANGE (published_at)",
)

article_embeddings = Table(
    "article_embeddings",
    metadata,
    Column("article_id", BigInteger, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False),
    Column(
        "model",
        Text,
        ForeignKey("embedding_models.name", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
    ),
    # No fixed dimension: each model's rows are indexed through a cast to its own size.
    Column("embedding", Vector(), nullable=False),
    Column("content_hash", LargeBinary, nullable=False),
    Column("token_count", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The primary key is the UNIQUE (article_id, model) the seed asks for.
    PrimaryKeyConstraint("article_id", "model", name="article_embeddings_pkey"),
    # A partitioned table can only be referenced through a key that includes the partition
    # key, so the FK carries published_at (the seed's plain FK on id cannot be created).
    ForeignKeyConstraint(
        ["article_id", "published_at"],
        ["articles.id", "articles.published_at"],
        name="article_embeddings_article_fkey",
        ondelete="CASCADE",
        onupdate="CASCADE",
    ),
    Index("article_embeddings_article_published_idx", "article_id", "published_at"),
    Index("article_embeddings_model_updated_idx", "model", "updated_at"),
)

embedding_jobs = Table(
    "embedding_jobs",
    metadata,
    Column("article_id", BigInteger, nullable=False),
    Column(
        "model",
        Text,
        ForeignKey("embedding_models.name", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
    ),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("reason", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("claim_token", Text, nullable=True),
    Column("claimed_by", Text, nullable=True),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("not_before", DateTime(timezone=True), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # No FK to articles: a job for an unknown or deleted id is exactly what we must record.
    PrimaryKeyConstraint("article_id", "model", name="embedding_jobs_pkey"),
    CheckConstraint(
        "state IN ('pending', 'in_flight', 'failed', 'skipped')", name="embedding_jobs_state_check"
    ),
    Index(
        "embedding_jobs_pending_idx",
        "model",
        "enqueued_at",
        postgresql_where=text("state = 'pending'"),
    ),
    Index(
        "embedding_jobs_in_flight_idx",
        "claimed_at",
        postgresql_where=text("state = 'in_flight'"),
    ),
    # Serves the model FK (cascading deletes) and the status/retry-failed views.
    Index("embedding_jobs_model_state_idx", "model", "state", "reason"),
)

# The article_embeddings counters at each model's last HNSW build (worker.maintenance).
hnsw_index_builds = Table(
    "hnsw_index_builds",
    metadata,
    Column(
        "model",
        Text,
        ForeignKey("embedding_models.name", ondelete="CASCADE", onupdate="CASCADE"),
        primary_key=True,
    ),
    Column("index_name", Text, nullable=False),
    Column("built_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("build_seconds", Double, nullable=True),
    Column("live_rows", BigInteger, nullable=False, server_default="0"),
    Column("tup_upd", BigInteger, nullable=False, server_default="0"),
    Column("tup_del", BigInteger, nullable=False, server_default="0"),
    Column("stats_reset", DateTime(timezone=True), nullable=True),
)

# What a worker refused (migration 0007): the raw value (capped at 64 KiB, payload_size is
# its original size), why, when, where from. dedupe_key: a redelivered message is recorded
# once. `embedder dead-letters` lists, shows, replays and purges them.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("queue", Text, nullable=True),
    Column("task_name", Text, nullable=True),
    Column("task_id", Text, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("payload_size", BigInteger, nullable=False),
    Column("dedupe_key", Text, nullable=False),
    PrimaryKeyConstraint("id", name="dead_letters_pkey"),
    UniqueConstraint("dedupe_key", name="dead_letters_dedupe_key_key"),
    CheckConstraint(
        "payload_size >= octet_length(payload)", name="dead_letters_payload_size_check"
    ),
    Index("dead_letters_received_idx", "received_at"),
)
