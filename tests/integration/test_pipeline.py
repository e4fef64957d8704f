"""The core path against real PostgreSQL + pgvector and the local OpenAI-compatible server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import text

from tests.conftest import MODEL, fetch
from tests.fakes.openai_server import fake_vector
from worker import pipeline, repository
from worker.text import compose

pytestmark = pytest.mark.integration


def test_intake_then_drain_embeds_every_article_in_full_batches(deps, make_article, fake_openai):
    ids = [make_article() for _ in range(40)]
    for i in ids:  # one id per message, as a chatty producer would send them
        pipeline.intake(deps, [i])

    result = pipeline.drain(deps, budget_s=30)

    assert (result.claimed, result.embedded, result.failed) == (40, 40, 0)
    assert [len(r.inputs) for r in fake_openai.requests] == [16, 16, 8]
    rows = fetch(deps, "SELECT article_id, model FROM article_embeddings ORDER BY article_id")
    assert [tuple(r) for r in rows] == [(i, MODEL) for i in ids]
    assert fetch(deps, "SELECT count(*) FROM embedding_jobs")[0][0] == 0


def test_stored_vector_is_the_providers_vector(deps, make_article):
    article = make_article(title="東京の天気", content="今日は晴れです。")
    pipeline.intake(deps, [article])
    pipeline.drain(deps)
    (stored,) = fetch(
        deps, "SELECT embedding FROM article_embeddings WHERE article_id = :a", a=article
    )[0]
    expected = fake_vector(compose("東京の天気", "今日は晴れです。"), 1536)
    assert np.allclose(stored.to_numpy(), expected, atol=1e-6)


def test_unchanged_article_is_not_re_embedded_and_updated_one_is(deps, make_article, fake_openai):
    a, b = make_article(), make_article()
    pipeline.intake(deps, [a, b])
    pipeline.drain(deps)
    fake_openai.reset()
    with deps.engine.begin() as conn:
        conn.execute(text("UPDATE articles SET content = 'new text' WHERE id = :b"), {"b": b})

    pipeline.intake(deps, [a, b])
    result = pipeline.drain(deps)

    assert (result.unchanged, result.embedded) == (1, 1)
    assert [r.inputs for r in fake_openai.requests] == [[compose(f"Article {1}", "new text")]]


def test_deleted_article_loses_its_vector(deps, make_article):
    a = make_article()
    pipeline.intake(deps, [a])
    pipeline.drain(deps)
    with deps.engine.begin() as conn:
        conn.execute(text("DELETE FROM articles WHERE id = :a"), {"a": a})
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0


def test_unknown_ids_and_empty_text_are_recorded_not_fatal(deps, make_article):
    good = make_article()
    empty = make_article(title="  ", content="\n\t ")
    pipeline.intake(deps, [good, empty, 987654321])

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed, result.skipped) == (1, 1, 1)
    rows = fetch(deps, "SELECT article_id, state, reason FROM embedding_jobs ORDER BY article_id")
    assert [tuple(r) for r in rows] == [
        (empty, "skipped", "empty_text"),
        (987654321, "failed", "not_found"),
    ]


def test_ids_sent_twice_are_embedded_once(deps, make_article, fake_openai):
    a = make_article()
    pipeline.intake(deps, [a, a])
    pipeline.intake(deps, [a])
    result = pipeline.drain(deps)
    assert result.embedded == 1
    assert fake_openai.input_count == 1


def test_400_on_one_input_embeds_the_rest_and_records_that_one(deps, make_article, fake_openai):
    ids = [make_article(content=f"fine text {n}") for n in range(6)]
    bad = make_article(content="POISON input the provider rejects")
    fake_openai.bad_inputs = {"POISON"}
    pipeline.intake(deps, [*ids, bad])

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed) == (6, 1)
    (row,) = fetch(deps, "SELECT article_id, state, reason FROM embedding_jobs")
    assert tuple(row) == (bad, "failed", "invalid_input")


def test_429_storm_ends_with_everything_embedded_within_the_retry_budget(
    deps, make_article, fake_openai
):
    ids = [make_article() for _ in range(32)]
    fake_openai.fail_next(429, count=3, retry_after=0.01)
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert result.embedded == 32
    # 2 batches; the 3 rate-limited tries are retried, nothing more.
    assert fake_openai.request_count == 2 + 3
    statuses = [r.status for r in fake_openai.requests]
    assert statuses.count(429) == 3


def test_retry_after_is_honoured(deps, make_article, fake_openai):
    a = make_article()
    fake_openai.fail_next(429, count=1, retry_after=0.3)
    pipeline.intake(deps, [a])
    pipeline.drain(deps)
    first, second = fake_openai.requests
    assert second.at - first.at >= 0.29


def test_requests_stay_within_the_token_budget_planned_from_estimates(
    make_deps, make_article, fake_openai
):
    deps = make_deps(embed_input_max_tokens=150, embed_batch_max_tokens=150)
    ids = [
        make_article(title="", content=f"{n:03d} " + "word " * 28) for n in range(12)
    ]  # 144 bytes
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert result.embedded == 12
    # Under the per-input limit in bytes, so never counted: estimated at 72 tokens each,
    # two inputs per request under a 150-token budget.
    assert [len(r.inputs) for r in fake_openai.requests] == [2] * 6


def test_a_claims_requests_are_in_flight_together(make_deps, make_article, fake_openai):
    deps = make_deps(embed_batch_max=16, embed_batch_max_tokens=8191, embed_request_concurrency=2)
    ids = [make_article(title="", content="x" * 3000) for _ in range(16)]  # 1,500 tokens estimated
    fake_openai.latency_s = 0.5
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert (result.embedded, result.batches) == (16, 4)  # 5 + 5 + 5 + 1 under 8,191 tokens
    assert fake_openai.max_in_flight == 2


def test_one_request_at_a_time_when_concurrency_is_one(make_deps, make_article, fake_openai):
    deps = make_deps(embed_batch_max=16, embed_batch_max_tokens=8191, embed_request_concurrency=1)
    ids = [make_article(title="", content="x" * 3000) for _ in range(16)]
    fake_openai.latency_s = 0.2
    pipeline.intake(deps, ids)
    assert pipeline.drain(deps).embedded == 16
    assert fake_openai.max_in_flight == 1


def test_reconcile_queues_recent_articles_nobody_asked_for(deps, make_article):
    lost = make_article()  # its message never reached the worker
    done = make_article()
    pipeline.intake(deps, [done])
    pipeline.drain(deps)
    old = make_article(published_at=datetime.now(UTC) - timedelta(days=30))

    assert pipeline.reconcile(deps) == 1
    assert pipeline.drain(deps).embedded == 1
    rows = fetch(deps, "SELECT article_id FROM article_embeddings ORDER BY article_id")
    assert [r[0] for r in rows] == sorted([lost, done])
    assert old not in [r[0] for r in rows]  # outside the window: `embedder backfill` covers it


def test_reconcile_ignores_articles_that_already_have_a_vector(deps, make_article):
    a = make_article()
    pipeline.intake(deps, [a])
    pipeline.drain(deps)
    with deps.engine.begin() as conn:  # a metadata-only edit: nothing to re-embed
        conn.execute(
            text("UPDATE articles SET is_read = true, updated_at = now() WHERE id = :a"), {"a": a}
        )
    assert pipeline.reconcile(deps) == 0


def test_reconcile_leaves_failed_items_alone(deps, make_article):
    empty = make_article(title=" ", content=" ")
    pipeline.intake(deps, [empty])
    pipeline.drain(deps)
    assert pipeline.reconcile(deps) == 0


def test_upsert_writes_one_row_per_id_and_leaves_unchanged_rows_alone(deps, make_article):
    """New rows go in with COPY, the rest with one upsert; the outcome is the same."""
    a, b = make_article(), make_article()
    (published_a,) = fetch(deps, "SELECT published_at FROM articles WHERE id = :a", a=a)[0]
    (published_b,) = fetch(deps, "SELECT published_at FROM articles WHERE id = :b", b=b)[0]
    first, second = np.full(1536, 0.5, np.float32), np.full(1536, -0.5, np.float32)
    rows = [
        repository.EmbeddingRow(b, published_b, first, b"hash-b", 3, is_new=True),
        repository.EmbeddingRow(a, published_a, first, b"hash-a", 1),
        repository.EmbeddingRow(a, published_a, second, b"hash-a2", 2),  # a repeated id: last wins
    ]
    with deps.engine.begin() as conn:
        repository.upsert_embeddings(conn, MODEL, rows)
    with deps.engine.begin() as conn:  # same hash for b: not rewritten; new hash for a: rewritten
        repository.upsert_embeddings(
            conn,
            MODEL,
            [
                repository.EmbeddingRow(b, published_b, second, b"hash-b", 9),
                repository.EmbeddingRow(a, published_a, first, b"hash-a3", 4),
            ],
        )
    with deps.engine.begin() as conn:  # "new" but already there (a claim written twice):
        repository.upsert_embeddings(  # the COPY is rolled back and the rows upserted
            conn, MODEL, [repository.EmbeddingRow(b, published_b, second, b"hash-b", 9, True)]
        )

    stored = fetch(
        deps,
        "SELECT article_id, embedding, content_hash, token_count FROM article_embeddings "
        "ORDER BY article_id",
    )
    assert [(r[0], bytes(r[2]), r[3]) for r in stored] == [(a, b"hash-a3", 4), (b, b"hash-b", 3)]
    assert np.allclose(stored[0][1].to_numpy(), first)
    assert np.allclose(stored[1][1].to_numpy(), first)
