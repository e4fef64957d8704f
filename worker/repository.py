"""Every SQL statement of the ingestion path. Functions take a Connection in a transaction
the caller owns; none opens its own."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection, text

from worker.errors import UnknownModel

# Ids per INSERT when recording intake: keeps one statement's parameters bounded even when
# a producer sends 100k ids in one message.
INTAKE_CHUNK = 10_000


@dataclass(frozen=True)
class ModelInfo:
    """A row of embedding_models: the model and how it is embedded.

    A None setting means the process's own (OPENAI_BASE_URL, OPENAI_API_KEY,
    EMBED_BATCH_MAX, EMBED_BATCH_MAX_TOKENS). `api_key_env` names the variable holding the
    key; the key itself is never stored.
    """

    name: str
    dimensions: int
    provider: str
    is_indexed: bool
    base_url: str | None = None
    api_key_env: str | None = None
    batch_max: int | None = None
    batch_max_tokens: int | None = None


@dataclass(frozen=True)
class Claim:
    """Jobs claimed together under one token: the lease the claiming process renews.

    `claimed_at` is the database's time of the claim. The column of that name is renewed by
    the process's heartbeat (worker.lease), so completion compares re-enqueues with this.
    """

    token: str
    article_ids: tuple[int, ...]
    claimed_at: datetime | None = None


@dataclass(frozen=True)
class ArticleRow:
    id: int
    published_at: datetime
    title: str
    content: str
    stored_hash: bytes | None


@dataclass(frozen=True)
class Hit:
    article_id: int
    published_at: datetime
    title: str
    distance: float


@dataclass(frozen=True)
class EmbeddingRow:
    article_id: int
    published_at: datetime
    embedding: Any  # numpy float32 vector
    content_hash: bytes
    token_count: int
    is_new: bool = False  # no stored vector when the article was loaded: COPY, not upsert


_MODEL_COLUMNS = (
    "name, dimensions, provider, is_indexed, base_url, api_key_env, batch_max, batch_max_tokens"
)


def get_model(conn: Connection, name: str) -> ModelInfo:
    row = conn.execute(
        text(f"SELECT {_MODEL_COLUMNS} FROM embedding_models WHERE name = :n"),
        {"n": name},
    ).one_or_none()
    if row is None:
        raise UnknownModel(
            f"model {name!r} is not registered; add it with `embedder models add {name} --dimensions N`"
        )
    return ModelInfo(*row)


def list_models(conn: Connection) -> list[ModelInfo]:
    rows = conn.execute(text(f"SELECT {_MODEL_COLUMNS} FROM embedding_models ORDER BY name"))
    return [ModelInfo(*r) for r in rows]


def insert_model(
    conn: Connection,
    name: str,
    dimensions: int,
    provider: str,
    *,
    is_indexed: bool = True,
    base_url: str | None = None,
    api_key_env: str | None = None,
    batch_max: int | None = None,
    batch_max_tokens: int | None = None,
) -> ModelInfo:
    """Register a model with its provider settings, or return the existing row unchanged."""
    conn.execute(
        text(
            "INSERT INTO embedding_models (name, dimensions, provider, is_indexed, base_url, "
            "api_key_env, batch_max, batch_max_tokens) "
            "VALUES (:n, :d, :p, :i, :u, :k, :bm, :bt) ON CONFLICT (name) DO NOTHING"
        ),
        {
            "n": name,
            "d": dimensions,
            "p": provider,
            "i": is_indexed,
            "u": base_url,
            "k": api_key_env,
            "bm": batch_max,
            "bt": batch_max_tokens,
        },
    )
    return get_model(conn, name)


def mark_indexed(conn: Connection, name: str) -> None:
    conn.execute(text("UPDATE embedding_models SET is_indexed = true WHERE name = :n"), {"n": name})


def open_job_count(conn: Connection, model: str) -> int:
    """Jobs of `model` still pending or in flight."""
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM embedding_jobs "
                "WHERE model = :m AND state IN ('pending', 'in_flight')"
            ),
            {"m": model},
        ).scalar_one()
    )


def record_intake(conn: Connection, model: str, article_ids: Sequence[int]) -> int:
    """Mark (article, model) pending; re-sent ids are merged, failed ones re-driven.

    A job already in flight keeps running but gets a fresh `enqueued_at`, so completion sees
    it was asked for again (the article may have changed) and puts it back to pending.
    Ids are sorted so concurrent intakes lock rows in the same order (no deadlocks).
    """
    ids = sorted(set(article_ids))
    total = 0
    for start in range(0, len(ids), INTAKE_CHUNK):
        chunk = ids[start : start + INTAKE_CHUNK]
        result = conn.execute(
            text(
                """
                INSERT INTO embedding_jobs AS j (article_id, model, state)
                SELECT id, :model, 'pending' FROM unnest(CAST(:ids AS bigint[])) AS id
                ON CONFLICT (article_id, model) DO UPDATE SET
                    state = CASE WHEN j.state = 'in_flight' THEN 'in_flight' ELSE 'pending' END,
                    enqueued_at = CASE WHEN j.state = 'pending' THEN j.enqueued_at ELSE now() END,
                    attempts = CASE WHEN j.state IN ('failed', 'skipped') THEN 0 ELSE j.attempts END,
                    not_before = CASE WHEN j.state = 'pending' THEN j.not_before END,
                    updated_at = now()
                """
            ),
            {"model": model, "ids": chunk},
        )
        total += result.rowcount
    return total


def pending_window(conn: Connection, model: str, limit: int) -> tuple[int, float]:
    """(pending ready now, capped at `limit`; age in seconds of the oldest of them)."""
    row = conn.execute(
        text(
            """
            SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(enqueued_at)), 0)
            FROM (SELECT enqueued_at FROM embedding_jobs
                  WHERE model = :m AND state = 'pending'
                    AND (not_before IS NULL OR not_before <= now())
                  ORDER BY enqueued_at LIMIT :n) AS ready
            """
        ),
        {"m": model, "n": limit},
    ).one()
    return int(row[0]), float(row[1])


def claim_pending(conn: Connection, model: str, limit: int, worker_id: str) -> Claim:
    """Claim up to `limit` pending jobs for this transaction; others skip them.

    The claim is a lease: `claimed_at` is its start, renewed by renew_leases while the
    claiming process holds it; requeue_stale takes back one not renewed in time.
    """
    token = uuid.uuid4().hex
    rows = conn.execute(
        text(
            """
            WITH ready AS (
                SELECT article_id FROM embedding_jobs
                WHERE model = :m AND state = 'pending'
                  AND (not_before IS NULL OR not_before <= now())
                ORDER BY enqueued_at
                LIMIT :n
                FOR UPDATE SKIP LOCKED
            )
            UPDATE embedding_jobs j
            SET state = 'in_flight', attempts = j.attempts + 1, claim_token = :t,
                claimed_by = :w, claimed_at = now(), updated_at = now()
            FROM ready
            WHERE j.model = :m AND j.article_id = ready.article_id
            RETURNING j.article_id, j.claimed_at
            """
        ),
        {"m": model, "n": limit, "t": token, "w": worker_id},
    ).all()
    return Claim(
        token=token,
        article_ids=tuple(sorted(r[0] for r in rows)),
        claimed_at=rows[0][1] if rows else None,
    )


def renew_leases(conn: Connection, claims: Sequence[tuple[str, Claim]]) -> int:
    """Renew the leases of these (model, claim)s: claimed_at = now() where a job still
    carries the claim's token. Returns how many jobs were renewed.

    Rows locked by someone else are skipped, never waited for: they are being written by
    their owner (this very process) or requeued, and a heartbeat must not deadlock with either.
    """
    models = [model for model, claim in claims for _ in claim.article_ids]
    ids = [i for _, claim in claims for i in claim.article_ids]
    tokens = [claim.token for _, claim in claims for _ in claim.article_ids]
    if not ids:
        return 0
    result = conn.execute(
        text(
            """
            UPDATE embedding_jobs j SET claimed_at = now()
            FROM (
                SELECT held.model, held.article_id FROM embedding_jobs held
                JOIN unnest(CAST(:models AS text[]), CAST(:ids AS bigint[]),
                            CAST(:tokens AS text[])) AS k(model, article_id, token)
                  ON held.model = k.model AND held.article_id = k.article_id
                 AND held.claim_token = k.token
                WHERE held.state = 'in_flight'
                FOR UPDATE OF held SKIP LOCKED
            ) AS mine
            WHERE j.model = mine.model AND j.article_id = mine.article_id
            """
        ),
        {"models": models, "ids": ids, "tokens": tokens},
    )
    return result.rowcount


def lock_claimed_jobs(conn: Connection, model: str, claim: Claim) -> set[int]:
    """Ids of the claim's jobs that still carry its token, locked until commit (fencing).

    A job whose lease ran out was requeued (token cleared) and may belong to another claim
    by now: its result is no longer this claim's to write. Locked in id order, as every
    writer of these rows does, so no requeue can take them until this transaction ends.
    """
    if not claim.article_ids:
        return set()
    rows = conn.execute(
        text(
            """
            SELECT article_id FROM embedding_jobs
            WHERE model = :m AND claim_token = :t AND article_id = ANY(CAST(:ids AS bigint[]))
            ORDER BY article_id
            FOR UPDATE
            """
        ),
        {"m": model, "t": claim.token, "ids": list(claim.article_ids)},
    )
    return {r[0] for r in rows}


# The readers' typical browse (seed 000: a user's unread articles, newest first), served by
# articles_user_read_published_idx; the worker never runs it, `embedder diagnose` checks it.
BROWSE_RECENT_UNREAD = (
    "SELECT id, title, published_at FROM articles WHERE user_id = :u AND NOT is_read "
    "ORDER BY published_at DESC LIMIT 20"
)

# Parameters :m (model) and :ids; diagnostics EXPLAINs this very statement.
LOAD_ARTICLES = """
SELECT a.id, a.published_at, a.title, a.content, e.content_hash
FROM articles a
LEFT JOIN article_embeddings e ON e.article_id = a.id AND e.model = :m
WHERE a.id = ANY(CAST(:ids AS bigint[]))
"""


def load_articles(conn: Connection, model: str, article_ids: Sequence[int]) -> list[ArticleRow]:
    """The articles and their current vector's hash for `model`, in one query."""
    rows = conn.execute(text(LOAD_ARTICLES), {"m": model, "ids": list(article_ids)})
    return [
        ArticleRow(r[0], r[1], r[2], r[3], bytes(r[4]) if r[4] is not None else None) for r in rows
    ]


def lock_existing_articles(conn: Connection, rows: Sequence[EmbeddingRow]) -> set[int]:
    """Ids of these rows whose (article, published_at) still exists, locked until commit.

    An article deleted or re-dated while its batch was being embedded would make the
    vector's foreign key fail, and with it the whole write.
    """
    if not rows:
        return set()
    found = conn.execute(
        text(
            """
            SELECT a.id FROM articles a
            JOIN unnest(CAST(:ids AS bigint[]), CAST(:ts AS timestamptz[])) AS k(id, published_at)
              ON a.id = k.id AND a.published_at = k.published_at
            FOR KEY SHARE OF a
            """
        ),
        {"ids": [r.article_id for r in rows], "ts": [r.published_at for r in rows]},
    )
    return {r[0] for r in found}


def lock_article_texts(conn: Connection, article_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """id -> (title, content) of these articles, share-locked (not edited) until commit."""
    if not article_ids:
        return {}
    rows = conn.execute(
        text(
            "SELECT id, title, content FROM articles WHERE id = ANY(CAST(:ids AS bigint[])) "
            "ORDER BY id FOR SHARE"
        ),
        {"ids": sorted(article_ids)},
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def delete_article_embeddings(conn: Connection, article_ids: Sequence[int]) -> int:
    """Delete these articles' vectors of every model; returns how many rows went."""
    if not article_ids:
        return 0
    result = conn.execute(
        text("DELETE FROM article_embeddings WHERE article_id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": sorted(article_ids)},
    )
    return result.rowcount


# psycopg placeholders (binary arrays), run on the driver's cursor; diagnostics EXPLAINs it.
UPSERT_EMBEDDINGS = """
INSERT INTO article_embeddings
    (article_id, published_at, model, embedding, content_hash, token_count)
SELECT r.article_id, r.published_at, %s, r.embedding, r.content_hash, r.token_count
FROM unnest(%b::bigint[], %b::timestamptz[], %b::vector[], %b::bytea[], %b::integer[])
    AS r(article_id, published_at, embedding, content_hash, token_count)
ON CONFLICT (article_id, model) DO UPDATE SET
    published_at = EXCLUDED.published_at,
    embedding = EXCLUDED.embedding,
    content_hash = EXCLUDED.content_hash,
    token_count = EXCLUDED.token_count,
    updated_at = now()
WHERE article_embeddings.content_hash IS DISTINCT FROM EXCLUDED.content_hash
"""


_COPY = (
    "COPY article_embeddings "
    "(article_id, published_at, model, embedding, content_hash, token_count) "
    "FROM STDIN WITH (FORMAT BINARY)"
)


def upsert_embeddings(conn: Connection, model: str, rows: Sequence[EmbeddingRow]) -> None:
    """Write vectors; rows whose hash is unchanged are left untouched.

    Rows with no stored vector when their article was loaded (`is_new`: first embeddings,
    the steady state) go in with binary COPY; the rest with one INSERT … SELECT FROM
    unnest(binary arrays) … ON CONFLICT. With an HNSW index present, PostgreSQL spends
    ~13% more per row on the upsert than on COPY, and ~25% more on one INSERT per row
    (docs/benchmarks.md). Should a new row exist after all (a claim whose lease ran out
    being written twice), the COPY is rolled back to a savepoint and every row is upserted.
    Rows go in article_id order (one per id), so writers take row locks in the same order.
    """
    if not rows:
        return
    unique = sorted({r.article_id: r for r in rows}.values(), key=lambda r: r.article_id)
    raw = conn.connection.driver_connection
    assert raw is not None
    new = [r for r in unique if r.is_new]
    rest = [r for r in unique if not r.is_new]
    if new:
        with raw.cursor() as cur:
            cur.execute("SAVEPOINT embedder_copy")
            try:
                with cur.copy(_COPY) as copy:
                    copy.set_types(["int8", "timestamptz", "text", "vector", "bytea", "int4"])
                    for r in new:
                        copy.write_row(
                            (
                                r.article_id,
                                r.published_at,
                                model,
                                r.embedding,
                                r.content_hash,
                                r.token_count,
                            )
                        )
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT embedder_copy")
                rest = unique
            else:
                cur.execute("RELEASE SAVEPOINT embedder_copy")
    if not rest:
        return
    with raw.cursor() as cur:
        cur.execute(UPSERT_EMBEDDINGS, upsert_params(model, rest))


def upsert_params(model: str, rows: Sequence[EmbeddingRow]) -> tuple[Any, ...]:
    """UPSERT_EMBEDDINGS' parameters: the model and one binary array per column."""
    return (
        model,
        [r.article_id for r in rows],
        [r.published_at for r in rows],
        [r.embedding for r in rows],
        [r.content_hash for r in rows],
        [r.token_count for r in rows],
    )


def complete_jobs(conn: Connection, model: str, claim: Claim, article_ids: Iterable[int]) -> None:
    """Finish these claimed jobs; a job re-enqueued while in flight goes back to pending.

    Re-enqueued = enqueued after the claim was made (`claim.claimed_at`; the column is the
    lease's last renewal).
    """
    ids = list(article_ids)
    if not ids:
        return
    params = {"m": model, "t": claim.token, "ids": ids}
    conn.execute(
        text(
            "DELETE FROM embedding_jobs WHERE model = :m AND claim_token = :t "
            "AND article_id = ANY(CAST(:ids AS bigint[])) "
            "AND enqueued_at <= COALESCE(CAST(:claimed AS timestamptz), claimed_at)"
        ),
        {**params, "claimed": claim.claimed_at},
    )
    conn.execute(
        text(
            "UPDATE embedding_jobs SET state = 'pending', claim_token = NULL, attempts = 0, "
            "updated_at = now() WHERE model = :m AND claim_token = :t "
            "AND article_id = ANY(CAST(:ids AS bigint[]))"
        ),
        params,
    )


def fail_jobs(
    conn: Connection,
    model: str,
    claim: Claim,
    failures: dict[int, tuple[str, str]],
    *,
    state: str = "failed",
) -> None:
    """Record these claimed jobs as failed (or skipped) with a reason and the error text."""
    if not failures:
        return
    ids = list(failures)
    conn.execute(
        text(
            """
            UPDATE embedding_jobs j
            SET state = :state, reason = f.reason, last_error = f.error,
                claim_token = NULL, updated_at = now()
            FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[]), CAST(:errors AS text[]))
                 AS f(article_id, reason, error)
            WHERE j.model = :m AND j.claim_token = :t AND j.article_id = f.article_id
            """
        ),
        {
            "state": state,
            "m": model,
            "t": claim.token,
            "ids": ids,
            "reasons": [failures[i][0] for i in ids],
            "errors": [failures[i][1][:2000] for i in ids],
        },
    )


def release_jobs(
    conn: Connection,
    model: str,
    claim: Claim,
    article_ids: Iterable[int],
    *,
    reason: str,
    error: str,
    delay_s: float,
    max_attempts: int,
    count_attempt: bool = True,
) -> int:
    """Give claimed jobs back for a later try, or fail them once attempts are used up.

    Returns how many were failed (their last attempt).
    """
    ids = list(article_ids)
    if not ids:
        return 0
    rows = conn.execute(
        text(
            """
            UPDATE embedding_jobs
            SET attempts = attempts - CASE WHEN :count THEN 0 ELSE 1 END,
                state = CASE WHEN :count AND attempts >= :max THEN 'failed' ELSE 'pending' END,
                not_before = now() + make_interval(secs => :delay),
                reason = :reason, last_error = :error, claim_token = NULL, updated_at = now()
            WHERE model = :m AND claim_token = :t AND article_id = ANY(CAST(:ids AS bigint[]))
            RETURNING state
            """
        ),
        {
            "count": count_attempt,
            "max": max_attempts,
            "delay": delay_s,
            "reason": reason,
            "error": error[:2000],
            "m": model,
            "t": claim.token,
            "ids": ids,
        },
    ).all()
    return sum(1 for r in rows if r[0] == "failed")


def requeue_stale(
    conn: Connection, lease_s: int, max_attempts: int, *, model: str | None = None
) -> dict[str, tuple[int, int]]:
    """Jobs in flight whose lease was not renewed for `lease_s` (their worker died, froze or
    lost the database): back to pending, or failed on their last attempt. Of every model, or
    of `model` only.

    Locked rows are skipped: their owner is writing them right now (fencing lock). Returns
    (requeued, failed) per model, for the models that had any.
    """
    rows = conn.execute(
        text(
            """
            UPDATE embedding_jobs j
            SET state = CASE WHEN j.attempts >= :max THEN 'failed' ELSE 'pending' END,
                reason = CASE WHEN j.attempts >= :max THEN 'lease_expired' ELSE j.reason END,
                last_error = 'lease not renewed within JOB_LEASE_S (worker killed, frozen or cut off)',
                claim_token = NULL, updated_at = now()
            FROM (
                SELECT model, article_id FROM embedding_jobs
                WHERE state = 'in_flight' AND claimed_at < now() - make_interval(secs => :lease)
                  AND (CAST(:model AS text) IS NULL OR model = :model)
                FOR UPDATE SKIP LOCKED
            ) AS stale
            WHERE j.model = stale.model AND j.article_id = stale.article_id
            RETURNING j.model, j.state
            """
        ),
        {"max": max_attempts, "lease": lease_s, "model": model},
    ).all()
    counts: dict[str, tuple[int, int]] = {}
    for model, state in rows:
        requeued, failed = counts.get(model, (0, 0))
        counts[model] = (requeued, failed + 1) if state == "failed" else (requeued + 1, failed)
    return counts


def models_with_ready_work(conn: Connection) -> list[str]:
    """Models with a pending job ready now: one index probe per registered model (the sweep
    runs every few seconds; a DISTINCT over the whole backlog would read all of it)."""
    rows = conn.execute(
        text(
            """
            SELECT m.name FROM embedding_models m
            WHERE EXISTS (SELECT 1 FROM embedding_jobs j
                          WHERE j.model = m.name AND j.state = 'pending'
                            AND (j.not_before IS NULL OR j.not_before <= now()))
            ORDER BY m.name
            """
        )
    )
    return [r[0] for r in rows]


def record_unasked(conn: Connection, model: str, since: datetime, limit: int) -> int:
    """Make pending the recent articles that have no vector and no job at all.

    Recovers ids whose messages Redis lost before intake. Bounded by `since` (recent
    partitions only, pruned) and `limit` per run. Failed or skipped jobs are left alone (no
    retry storms). Changed articles are the producers' to announce: an `updated_at`
    comparison would re-queue every metadata-only edit on every run.
    """
    result = conn.execute(
        text(
            """
            INSERT INTO embedding_jobs (article_id, model, state)
            SELECT a.id, :m, 'pending'
            FROM articles a
            LEFT JOIN article_embeddings e
              ON e.article_id = a.id AND e.published_at = a.published_at AND e.model = :m
            WHERE a.published_at >= :since
              AND e.article_id IS NULL
              AND NOT EXISTS (SELECT 1 FROM embedding_jobs j
                              WHERE j.article_id = a.id AND j.model = :m)
            ORDER BY a.published_at DESC
            LIMIT :n
            ON CONFLICT (article_id, model) DO NOTHING
            """
        ),
        {"m": model, "since": since, "n": limit},
    )
    return result.rowcount


def redrive_failed(
    conn: Connection, *, model: str | None, reason: str | None, include_skipped: bool = False
) -> int:
    """Put failed jobs back to pending; returns how many."""
    states = ["failed", "skipped"] if include_skipped else ["failed"]
    result = conn.execute(
        text(
            """
            UPDATE embedding_jobs
            SET state = 'pending', attempts = 0, not_before = NULL, enqueued_at = now(),
                updated_at = now()
            WHERE state = ANY(CAST(:states AS text[]))
              AND (CAST(:model AS text) IS NULL OR model = :model)
              AND (CAST(:reason AS text) IS NULL OR reason = :reason)
            """
        ),
        {"states": states, "model": model, "reason": reason},
    )
    return result.rowcount


def missing_vector_ids(conn: Connection, model: str, after_id: int, limit: int) -> list[int]:
    """Next `limit` article ids (> after_id) with no vector for `model`: keyset pagination."""
    rows = conn.execute(
        text(
            """
            SELECT a.id FROM articles a
            WHERE a.id > :after
              AND NOT EXISTS (SELECT 1 FROM article_embeddings e
                              WHERE e.article_id = a.id AND e.model = :m)
            ORDER BY a.id
            LIMIT :n
            """
        ),
        {"after": after_id, "m": model, "n": limit},
    )
    return [r[0] for r in rows]


@dataclass(frozen=True)
class JobCount:
    """One row of the backlog: jobs of a model in a state (and for a reason)."""

    model: str
    state: str
    reason: str | None
    count: int
    oldest_s: float | None  # age of the oldest job's enqueued_at, in seconds
    # In flight only: age of the oldest claim (claimed_at), in seconds; None otherwise.
    oldest_claim_s: float | None = None


def job_counts(conn: Connection) -> list[JobCount]:
    """The backlog by (model, state, reason): the one query behind status, health and metrics."""
    rows = conn.execute(
        text(
            """
            SELECT model, state, reason, count(*),
                   EXTRACT(EPOCH FROM now() - min(enqueued_at)),
                   CASE WHEN state = 'in_flight'
                        THEN EXTRACT(EPOCH FROM now() - min(claimed_at)) END
            FROM embedding_jobs GROUP BY model, state, reason ORDER BY model, state, reason
            """
        )
    )
    return [
        JobCount(
            r[0],
            r[1],
            r[2],
            int(r[3]),
            float(r[4]) if r[4] is not None else None,
            float(r[5]) if r[5] is not None else None,
        )
        for r in rows
    ]


def oldest_claims(counts: Iterable[JobCount]) -> dict[str, float]:
    """model -> age in seconds of its oldest in-flight claim (models with claims only)."""
    oldest: dict[str, float] = {}
    for c in counts:
        if c.state == "in_flight" and c.oldest_claim_s is not None:
            oldest[c.model] = max(oldest.get(c.model, 0.0), c.oldest_claim_s)
    return oldest


def by_state(counts: Iterable[JobCount]) -> dict[tuple[str, str], tuple[int, float]]:
    """(model, state) -> (jobs, age in seconds of the oldest), summed over reasons."""
    totals: dict[tuple[str, str], tuple[int, float]] = {}
    for c in counts:
        jobs, oldest = totals.get((c.model, c.state), (0, 0.0))
        totals[(c.model, c.state)] = (jobs + c.count, max(oldest, c.oldest_s or 0.0))
    return totals


def embedding_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(text("SELECT model, count(*) FROM article_embeddings GROUP BY model"))
    return {r[0]: int(r[1]) for r in rows}


def record_index_build(
    conn: Connection,
    model: str,
    index_name: str,
    seconds: float | None,
    live_rows: int,
    tup_upd: int,
    tup_del: int,
) -> None:
    """Store the model's latest index build and article_embeddings' counters at that time."""
    conn.execute(
        text(
            """
            INSERT INTO hnsw_index_builds
                (model, index_name, built_at, build_seconds, live_rows, tup_upd, tup_del)
            VALUES (:m, :n, now(), :s, :live, :upd, :del)
            ON CONFLICT (model) DO UPDATE SET
                index_name = EXCLUDED.index_name, built_at = EXCLUDED.built_at,
                build_seconds = EXCLUDED.build_seconds, live_rows = EXCLUDED.live_rows,
                tup_upd = EXCLUDED.tup_upd, tup_del = EXCLUDED.tup_del
            """
        ),
        {
            "m": model,
            "n": index_name,
            "s": seconds,
            "live": live_rows,
            "upd": tup_upd,
            "del": tup_del,
        },
    )


def index_build(conn: Connection, model: str) -> tuple[datetime, int, int, int] | None:
    """(built_at, live_rows, tup_upd, tup_del) of the model's last recorded build, or None."""
    row = conn.execute(
        text(
            "SELECT built_at, live_rows, tup_upd, tup_del FROM hnsw_index_builds WHERE model = :m"
        ),
        {"m": model},
    ).one_or_none()
    if row is None:
        return None
    return row[0], int(row[1]), int(row[2]), int(row[3])


def recent_build(conn: Connection, model: str, within_s: float) -> datetime | None:
    """When the model's index was last built, if that build ended within `within_s` seconds.

    Only real builds count: a row whose build_seconds is null only started the churn count
    for an index built before builds were recorded (maintenance.rebuild_hnsw).
    """
    return conn.execute(
        text(
            "SELECT built_at FROM hnsw_index_builds WHERE model = :m "
            "AND build_seconds IS NOT NULL AND built_at > now() - make_interval(secs => :s)"
        ),
        {"m": model, "s": within_s},
    ).scalar_one_or_none()


def nearest_sql(cast: str, *, has_since: bool) -> str:
    """The nearest-articles query for a model whose HNSW index casts to `cast`.

    `cast` is the indexed type, e.g. 'halfvec(1536)' (worker.hnsw.index_cast): the ORDER BY
    expression must match the model's partial index expression exactly. The nearest rows
    are picked from `article_embeddings` alone in a LIMITed subquery, so the planner can
    walk the HNSW index in distance order; joining `articles` first would make it estimate
    one joined row (id and published_at are correlated) and sort a hash join of the whole
    table instead. The outer ORDER BY restores strict order after a relaxed iterative scan,
    as pgvector recommends. With a date bound, both tables are filtered on published_at:
    the embedding filter runs inside the (iterative) index scan, and the bound on
    `articles` prunes its partitions at plan time.

    Parameters: :q, :model, :k (rows returned), :fetch (rows taken from the index scan,
    at least :k), and :since when `has_since`.
    """
    if not re.fullmatch(r"(vector|halfvec)\(\d+\)", cast):
        raise ValueError(f"not an index cast: {cast!r}")
    column = f"(e.embedding::{cast})"
    query = f"CAST(CAST(:q AS vector) AS {cast})"
    since_e = "AND e.published_at >= :since" if has_since else ""
    since_a = "AND a.published_at >= :since" if has_since else ""
    return f"""
        SELECT a.id, a.published_at, a.title, n.distance
        FROM (
            SELECT e.article_id, e.published_at, {column} <=> {query} AS distance
            FROM article_embeddings e
            WHERE e.model = :model {since_e}
            ORDER BY {column} <=> {query}
            LIMIT :fetch
        ) n
        JOIN articles a ON a.id = n.article_id AND a.published_at = n.published_at {since_a}
        ORDER BY n.distance
        LIMIT :k
    """


def nearest_articles(
    conn: Connection,
    model: str,
    cast: str,
    vector: Any,
    *,
    k: int,
    fetch: int,
    since: datetime | None = None,
) -> list[Hit]:
    """The k articles nearest to `vector` by cosine distance (see nearest_sql)."""
    params: dict[str, Any] = {"q": vector, "model": model, "k": k, "fetch": max(k, fetch)}
    if since is not None:
        params["since"] = since
    rows = conn.execute(text(nearest_sql(cast, has_since=since is not None)), params)
    return [Hit(r[0], r[1], r[2], float(r[3])) for r in rows]


def stored_vector(conn: Connection, article_id: int, model: str) -> Any | None:
    """The article's stored vector for `model` as a numpy array, or None."""
    row = conn.execute(
        text("SELECT embedding FROM article_embeddings WHERE article_id = :a AND model = :m"),
        {"a": article_id, "m": model},
    ).one_or_none()
    if row is None:
        return None
    return row[0].to_numpy() if hasattr(row[0], "to_numpy") else row[0]


def article_count(conn: Connection, *, partition: str | None = None) -> int:
    """Articles in the table, or in one of its partitions (by name)."""
    if partition is None:
        return int(conn.execute(text("SELECT count(*) FROM articles")).scalar_one())
    return int(
        conn.execute(
            text("SELECT count(*) FROM articles WHERE tableoid = to_regclass(:p)"),
            {"p": partition},
        ).scalar_one()
    )


def insert_articles(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert articles (feed_id, user_id, title, content, tags, is_read, published_at)."""
    if not rows:
        return
    conn.execute(
        text(
            "INSERT INTO articles (feed_id, user_id, title, content, tags, is_read, published_at) "
            "VALUES (:feed_id, :user_id, :title, :content, :tags, :is_read, :published_at)"
        ),
        list(rows),
    )


def ids_progress(conn: Connection, model: str, article_ids: Sequence[int]) -> tuple[int, int]:
    """Of these articles: (how many have a vector for `model`, how many jobs failed or skipped)."""
    row = conn.execute(
        text(
            """
            SELECT (SELECT count(*) FROM article_embeddings
                    WHERE model = :m AND article_id = ANY(CAST(:ids AS bigint[]))),
                   (SELECT count(*) FROM embedding_jobs
                    WHERE model = :m AND article_id = ANY(CAST(:ids AS bigint[]))
                      AND state IN ('failed', 'skipped'))
            """
        ),
        {"m": model, "ids": list(article_ids)},
    ).one()
    return int(row[0]), int(row[1])


# -- dead letters (migration 0007; worker/deadletters.py, `embedder dead-letters`) ----------


@dataclass(frozen=True)
class DeadLetter:
    """A refused message, or the refused part of one, as stored."""

    id: int
    received_at: datetime
    reason: str
    detail: str
    queue: str | None
    task_name: str | None
    task_id: str | None
    payload_size: int
    payload: bytes | None = None  # loaded by get_dead_letter only


_DEAD_LETTER_COLUMNS = "id, received_at, reason, detail, queue, task_name, task_id, payload_size"


def insert_dead_letter(
    conn: Connection,
    *,
    dedupe_key: str,
    reason: str,
    detail: str,
    queue: str | None,
    task_name: str | None,
    task_id: str | None,
    payload: bytes,
    payload_size: int,
) -> int | None:
    """Store a dead letter; its id, or None when `dedupe_key` is already stored (redelivery)."""
    return conn.execute(
        text(
            """
            INSERT INTO dead_letters
                (dedupe_key, reason, detail, queue, task_name, task_id, payload, payload_size)
            VALUES (:key, :reason, :detail, :queue, :task_name, :task_id, :payload, :size)
            ON CONFLICT (dedupe_key) DO NOTHING
            RETURNING id
            """
        ),
        {
            "key": dedupe_key,
            "reason": reason,
            "detail": detail,
            "queue": queue,
            "task_name": task_name,
            "task_id": task_id,
            "payload": payload,
            "size": payload_size,
        },
    ).scalar_one_or_none()


def dead_letter_counts(conn: Connection) -> dict[str, int]:
    """reason -> dead letters stored."""
    rows = conn.execute(text("SELECT reason, count(*) FROM dead_letters GROUP BY reason"))
    return {r[0]: int(r[1]) for r in rows}


def list_dead_letters(
    conn: Connection, *, limit: int, reason: str | None = None
) -> list[DeadLetter]:
    """The newest `limit` dead letters (of one reason, if given), without their payloads."""
    rows = conn.execute(
        text(
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters "
            "WHERE CAST(:reason AS text) IS NULL OR reason = :reason "
            "ORDER BY received_at DESC, id DESC LIMIT :limit"
        ),
        {"reason": reason, "limit": limit},
    )
    return [
        DeadLetter(
            r.id,
            r.received_at,
            r.reason,
            r.detail,
            r.queue,
            r.task_name,
            r.task_id,
            int(r.payload_size),
        )
        for r in rows
    ]


def get_dead_letter(conn: Connection, letter_id: int) -> DeadLetter | None:
    """One dead letter with its payload."""
    row = conn.execute(
        text(f"SELECT {_DEAD_LETTER_COLUMNS}, payload FROM dead_letters WHERE id = :id"),
        {"id": letter_id},
    ).one_or_none()
    return None if row is None else _dead_letter_of(row)


def take_dead_letter(conn: Connection, letter_id: int) -> DeadLetter | None:
    """Delete one dead letter and return it (with its payload): gone once the caller
    commits, back if it rolls back. A concurrent take of the same one waits, then gets None."""
    row = conn.execute(
        text(f"DELETE FROM dead_letters WHERE id = :id RETURNING {_DEAD_LETTER_COLUMNS}, payload"),
        {"id": letter_id},
    ).one_or_none()
    return None if row is None else _dead_letter_of(row)


def _dead_letter_of(row: Any) -> DeadLetter:
    return DeadLetter(
        row.id,
        row.received_at,
        row.reason,
        row.detail,
        row.queue,
        row.task_name,
        row.task_id,
        int(row.payload_size),
        payload=bytes(row.payload),
    )


def purge_dead_letters(conn: Connection, *, before: datetime | None) -> int:
    """Delete dead letters received before `before` (every one when None); how many."""
    result = conn.execute(
        text(
            "DELETE FROM dead_letters "
            "WHERE CAST(:before AS timestamptz) IS NULL OR received_at < :before"
        ),
        {"before": before},
    )
    return result.rowcount
