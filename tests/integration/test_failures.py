"""Faults at the pipeline level, each test counting every article at the end.

Real PostgreSQL + pgvector and the local OpenAI-compatible server; the invariant checked
throughout: expected = embedded + recorded-as-failed-with-a-reason, duplicates = 0.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import numpy as np
import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from tests.conftest import MODEL, SMALL_MODEL, fetch
from tests.fakes.openai_server import fake_vector
from worker import pipeline, repository
from worker.text import compose

pytestmark = pytest.mark.integration

API_KEY = "sk-test-secret-key-123"  # what conftest.base_settings configures


@dataclass(frozen=True)
class Accounting:
    embedded: frozenset[int]
    failed_with_reason: dict[int, str]
    other_jobs: dict[int, str]  # pending / in flight: neither done nor explained
    duplicates: int


def account(deps, model: str = MODEL) -> Accounting:
    """Where every article stands for `model`, from PostgreSQL alone."""
    embedded = [
        r[0]
        for r in fetch(deps, "SELECT article_id FROM article_embeddings WHERE model = :m", m=model)
    ]
    jobs = fetch(
        deps, "SELECT article_id, state, reason FROM embedding_jobs WHERE model = :m", m=model
    )
    return Accounting(
        embedded=frozenset(embedded),
        failed_with_reason={a: r for a, s, r in jobs if s in ("failed", "skipped") and r},
        other_jobs={a: s for a, s, r in jobs if not (s in ("failed", "skipped") and r)},
        duplicates=len(embedded) - len(set(embedded)),
    )


def assert_all_accounted(
    deps, ids, *, failed: dict[int, str] | None = None, model: str = MODEL
) -> None:
    """Every id is embedded exactly once or failed with the given reason; nothing else."""
    failed = failed or {}
    state = account(deps, model)
    assert state.duplicates == 0
    assert state.other_jobs == {}
    assert state.failed_with_reason == failed
    assert state.embedded == frozenset(ids) - set(failed)
    assert not state.embedded & set(failed)


def jobs(deps, ids=None):
    """(article_id, state, attempts, reason) of every job, ordered."""
    rows = fetch(
        deps, "SELECT article_id, state, attempts, reason FROM embedding_jobs ORDER BY article_id"
    )
    return [tuple(r) for r in rows if ids is None or r[0] in ids]


def texts_sent(fake_openai) -> list[str]:
    return [t for r in fake_openai.requests if r.status == 200 for t in r.inputs]


def test_500s_and_a_429_with_retry_after_then_success(deps, make_article, fake_openai):
    ids = [make_article() for _ in range(20)]
    fake_openai.fail_next(500, count=2)
    fake_openai.fail_next(429, retry_after=0.3)
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed, result.released) == (20, 0, 0)
    statuses = [r.status for r in fake_openai.requests]
    assert statuses == [500, 500, 429, 200, 200]
    rate_limited, retried = fake_openai.requests[2:4]
    assert retried.at - rate_limited.at >= 0.29  # Retry-After honoured
    assert sorted(texts_sent(fake_openai)) == sorted(
        compose(f"Article {n}", f"Body of article number {n} about PostgreSQL and vectors.")
        for n in range(20)
    )
    assert_all_accounted(deps, ids)


def test_api_hanging_past_the_client_timeout_is_retried(
    make_deps, make_article, fake_openai, monkeypatch
):
    monkeypatch.setattr(fake_openai, "hang_s", 2.0)  # frees the server thread soon after
    deps = make_deps(openai_timeout_s=0.5)
    ids = [make_article() for _ in range(5)]
    fake_openai.next_response_mode("hang")
    pipeline.intake(deps, ids)

    started = time.monotonic()
    result = pipeline.drain(deps)
    elapsed = time.monotonic() - started

    assert (result.embedded, result.released) == (5, 0)
    assert fake_openai.request_count == 2  # the hung one, then the retry
    assert 0.5 <= elapsed < 2.0  # gave up on the hung request at the client timeout
    assert_all_accounted(deps, ids)


def test_retries_exhausted_release_jobs_with_a_delay(make_deps, make_article, fake_openai):
    deps = make_deps(job_retry_delay_s=60)
    ids = [make_article() for _ in range(5)]
    fake_openai.fail_next(500, count=deps.settings.embed_retry_attempts)
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert (result.claimed, result.embedded, result.failed, result.released) == (5, 0, 0, 5)
    assert fake_openai.request_count == deps.settings.embed_retry_attempts
    rows = fetch(
        deps,
        "SELECT state, attempts, reason, claim_token IS NULL, "
        "not_before > now() + interval '50 seconds', last_error FROM embedding_jobs",
    )
    assert len(rows) == 5
    for state, attempts, reason, unclaimed, delayed, last_error in rows:
        assert (state, attempts, reason, unclaimed, delayed) == (
            "pending",
            1,
            "provider_unavailable",
            True,
            True,
        )
        assert "HTTP 500" in last_error
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0
    # Not ready before the delay: another drain does nothing and calls nobody.
    assert pipeline.drain(deps).claimed == 0
    assert fake_openai.request_count == deps.settings.embed_retry_attempts


def test_after_job_max_attempts_drains_jobs_fail_with_the_reason(
    make_deps, make_article, fake_openai
):
    deps = make_deps(job_max_attempts=2, job_retry_delay_s=0)
    ids = [make_article() for _ in range(5)]
    per_drain = deps.settings.embed_retry_attempts
    fake_openai.fail_next(500, count=2 * per_drain)
    pipeline.intake(deps, ids)

    first = pipeline.drain(deps, max_claims=1)
    assert jobs(deps) == [(i, "pending", 1, "provider_unavailable") for i in ids]
    second = pipeline.drain(deps, max_claims=1)
    third = pipeline.drain(deps)

    assert (first.released, second.released, third.claimed) == (5, 5, 0)
    assert jobs(deps) == [(i, "failed", 2, "provider_unavailable") for i in ids]
    assert fake_openai.request_count == 2 * per_drain
    assert_all_accounted(deps, ids, failed=dict.fromkeys(ids, "provider_unavailable"))


@pytest.mark.parametrize(
    ("mode", "state", "reason", "requests"),
    [
        # Transient: retried by tenacity, then released for later; all tries answer badly.
        ("short", "pending", "bad_response", 3),  # the batch and its two halves
        ("malformed", "pending", "bad_response", 4),
        ("garbled", "pending", "bad_response", 4),
        # The provider's vectors cannot fit the column: permanent, recorded at once.
        ("wrong_dim", "failed", "dimension_mismatch", 1),
    ],
)
def test_bad_responses_are_never_written(
    make_deps, make_article, fake_openai, mode, state, reason, requests
):
    deps = make_deps(job_retry_delay_s=60)
    ids = [make_article() for _ in range(6)]
    fake_openai.next_response_mode(mode, count=deps.settings.embed_retry_attempts)
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert result.embedded == 0
    assert fake_openai.request_count == requests
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0
    rows = fetch(
        deps, "SELECT article_id, state, reason, last_error FROM embedding_jobs ORDER BY article_id"
    )
    assert [tuple(r[:3]) for r in rows] == [(i, state, reason) for i in ids]
    assert all(r[3] for r in rows)  # the error text is kept for the operator


@pytest.mark.parametrize("mode", ["short", "malformed"])
def test_one_bad_response_then_good_ones_store_the_right_vector_per_article(
    make_deps, make_article, fake_openai, mode
):
    deps = make_deps(job_retry_delay_s=0)
    contents = [f"distinct content number {n}" for n in range(6)]
    ids = [make_article(title="T", content=c) for c in contents]
    fake_openai.next_response_mode(mode)
    pipeline.intake(deps, ids)

    pipeline.drain(deps)

    rows = fetch(deps, "SELECT article_id, embedding FROM article_embeddings ORDER BY article_id")
    assert [r[0] for r in rows] == ids
    for (_, stored), content in zip(rows, contents, strict=True):
        assert np.allclose(stored.to_numpy(), fake_vector(compose("T", content), 1536), atol=1e-6)
    assert_all_accounted(deps, ids)


def test_wrong_api_key_parks_the_items_after_one_request_and_one_clear_error(
    deps, make_article, fake_openai, caplog
):
    fake_openai.require_api_key = "sk-the-key-the-server-wants"
    ids = [make_article() for _ in range(10)]
    pipeline.intake(deps, ids)
    caplog.set_level(logging.DEBUG)

    result = pipeline.drain(deps)

    assert result.is_stopped
    assert (result.embedded, result.failed, result.released) == (0, 0, 10)
    assert fake_openai.request_count == 1  # no retry storm
    rows = fetch(
        deps,
        "SELECT article_id, state, attempts, reason, not_before > now() + interval '4 minutes' "
        "FROM embedding_jobs ORDER BY article_id",
    )
    assert [tuple(r) for r in rows] == [(i, "pending", 0, "auth_error", True) for i in ids]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "OPENAI_API_KEY" in errors[0].getMessage()
    assert API_KEY not in caplog.text
    # The items wait out the back-off: draining again does not call the API.
    assert pipeline.drain(deps).claimed == 0
    assert fake_openai.request_count == 1
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0


def test_wrong_dimension_for_the_fixed_dimension_column_of_another_model(
    deps, make_article, fake_openai
):
    # A vector(384) expression index must never meet a vector of another size.
    ids = [make_article() for _ in range(3)]
    fake_openai.next_response_mode("wrong_dim")
    pipeline.intake(deps, ids, SMALL_MODEL)

    pipeline.drain(deps, SMALL_MODEL)

    assert fake_openai.request_count == 1  # permanent: not retried
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0
    assert_all_accounted(
        deps, ids, failed=dict.fromkeys(ids, "dimension_mismatch"), model=SMALL_MODEL
    )


class ConnectionSampler:
    """Polls pg_stat_activity for one application_name and keeps the highest count seen."""

    def __init__(self, database_url: str, application_name: str) -> None:
        self.url, self.app = database_url, application_name
        self.max_seen = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self.app,)
                ).fetchone()
                assert row is not None
                self.max_seen = max(self.max_seen, int(row[0]))
                self.samples += 1
                self._stop.wait(0.01)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_pool_exhausted_waits_the_pool_timeout_then_raises_a_retryable_error(
    make_deps, make_article, database_url
):
    app = f"embedder-pool-{uuid.uuid4().hex[:8]}"
    deps = make_deps(
        db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=0.5, db_application_name=app
    )
    ids = [make_article() for _ in range(20)]
    pipeline.intake(deps, ids)

    with ConnectionSampler(database_url, app) as sampler:
        with deps.engine.connect() as held:  # another task holds the only connection
            held.execute(text("SELECT 1"))
            started = time.monotonic()
            with pytest.raises(sa_exc.TimeoutError) as info:
                pipeline.drain(deps)
            waited = time.monotonic() - started
        result = pipeline.drain(deps)  # the retried task, once the connection is back

    assert pipeline.is_db_transient(info.value)
    assert 0.45 <= waited < 3.0
    assert result.embedded == 20
    assert sampler.samples > 5
    assert sampler.max_seen == 1  # never more connections than the pool allows
    assert_all_accounted(deps, ids)


def test_postgres_restart_between_drains_heals_through_pre_ping(
    deps, make_article, pg, fake_openai
):
    ids = [make_article() for _ in range(32)]
    pipeline.intake(deps, ids)
    first = pipeline.drain(deps, max_claims=1)
    assert first.embedded == 16

    pg.restart()  # every pooled connection is now dead
    second = pipeline.drain(deps)

    assert second.embedded == 16
    assert len(texts_sent(fake_openai)) == 32  # nothing embedded twice
    assert_all_accounted(deps, ids)


def test_worker_killed_mid_batch_is_recovered_by_the_sweep(make_deps, make_article, fake_openai):
    deps = make_deps(job_lease_s=120)
    ids = [make_article() for _ in range(20)]
    pipeline.intake(deps, ids)
    with deps.engine.begin() as conn:  # a worker claims a batch, then dies (SIGKILL)
        dead = repository.claim_pending(conn, MODEL, 16, "dead-host:4242")
    assert len(dead.article_ids) == 16

    live = pipeline.drain(deps)  # another worker takes only what was not claimed
    assert live.embedded == 4
    assert pipeline.sweep(deps) == (0, 0, [])  # within the lease: left alone

    with deps.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE embedding_jobs SET claimed_at = now() - interval '10 minutes' WHERE claim_token = :t"
            ),
            {"t": dead.token},
        )
    assert pipeline.sweep(deps) == (16, 0, [MODEL])
    recovered = pipeline.drain(deps)
    # The dead worker "wakes up" late: its claim is no longer valid, so it changes nothing.
    with deps.engine.begin() as conn:
        repository.fail_jobs(conn, MODEL, dead, dict.fromkeys(dead.article_ids, ("zombie", "late")))

    assert recovered.embedded == 16
    assert sorted(texts_sent(fake_openai)) == sorted(set(texts_sent(fake_openai)))  # each once
    assert len(texts_sent(fake_openai)) == 20
    assert_all_accounted(deps, ids)


def test_sweep_fails_a_job_whose_worker_died_on_its_last_attempt(make_deps, make_article):
    deps = make_deps(job_lease_s=120, job_max_attempts=1)
    ids = [make_article() for _ in range(3)]
    pipeline.intake(deps, ids)
    with deps.engine.begin() as conn:
        repository.claim_pending(conn, MODEL, 16, "dead-host:1")
        conn.execute(text("UPDATE embedding_jobs SET claimed_at = now() - interval '1 hour'"))

    assert pipeline.sweep(deps) == (0, 3, [])
    assert_all_accounted(deps, ids, failed=dict.fromkeys(ids, "lease_expired"))


def test_retry_failed_redrives_after_the_cause_is_fixed(deps, make_article, fake_openai):
    good = [make_article(content=f"fine text {n}") for n in range(4)]
    poisoned = make_article(content="POISON the provider rejects this")
    missing = 987_654_321
    fake_openai.bad_inputs = {"POISON"}
    pipeline.intake(deps, [*good, poisoned, missing])
    pipeline.drain(deps)
    assert_all_accounted(
        deps, [*good, poisoned, missing], failed={poisoned: "invalid_input", missing: "not_found"}
    )

    fake_openai.bad_inputs = set()  # the cause is fixed (say, the provider's filter)
    with deps.engine.begin() as conn:
        redriven = repository.redrive_failed(conn, model=MODEL, reason="invalid_input")
    result = pipeline.drain(deps)

    assert redriven == 1
    assert (result.claimed, result.embedded) == (1, 1)
    assert_all_accounted(deps, [*good, poisoned, missing], failed={missing: "not_found"})


def test_backfill_keyset_walk_returns_every_missing_id_exactly_once(deps, make_article):
    months = [
        datetime(2001, 1, 15, tzinfo=UTC),
        datetime(2024, 6, 1, tzinfo=UTC),
        datetime.now(UTC),
    ]
    ids = [make_article(published_at=months[n % 3]) for n in range(25)]
    pipeline.intake(deps, ids[::4])  # some already have a vector
    pipeline.drain(deps)
    missing = sorted(set(ids) - set(ids[::4]))

    pages: list[list[int]] = []
    after = 0
    while True:
        with deps.engine.connect() as conn:
            page = repository.missing_vector_ids(conn, MODEL, after, 4)
        if not page:
            break
        pages.append(page)
        after = page[-1]

    assert [i for p in pages for i in p] == missing  # ascending, each once, none skipped
    assert all(1 <= len(p) <= 4 for p in pages)
    assert len(pages) == -(-len(missing) // 4)
    with deps.engine.connect() as conn:  # per model: nothing embedded yet for mini-384
        assert repository.missing_vector_ids(conn, SMALL_MODEL, 0, 100) == sorted(ids)


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        ("DELETE FROM articles WHERE id = :a", "not_found"),
        # Re-dated: the row moves to another partition; the foreign key changes with it.
        (
            "UPDATE articles SET published_at = published_at - interval '400 days' WHERE id = :a",
            "embedded",
        ),
    ],
    ids=["deleted", "re-dated"],
)
def test_article_changed_while_its_batch_is_embedded_loses_nothing_else(
    deps, make_article, fake_openai, change, outcome
):
    ids = [make_article() for _ in range(8)]
    doomed = ids[3]
    info = deps.model(None)
    inner = deps.embedder(info)

    class ChangingEmbedder:
        """Changes one article while the provider call is in flight (a user edits it)."""

        model, dimensions, stats = inner.model, inner.dimensions, inner.stats

        changes = 0

        def embed(self, texts, token_count=0):
            if not self.changes:
                with deps.engine.begin() as conn:
                    conn.execute(text(change), {"a": doomed})
                self.changes += 1
            return inner.embed(texts, token_count)

        def close(self):
            inner.close()

    deps._embedders[info.name] = ChangingEmbedder()
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert result.released == 1
    if outcome == "embedded":
        assert_all_accounted(deps, ids)
        moved = fetch(
            deps,
            "SELECT e.published_at = a.published_at FROM article_embeddings e "
            "JOIN articles a ON a.id = e.article_id WHERE e.article_id = :a",
            a=doomed,
        )
        assert moved == [(True,)]
    else:
        assert_all_accounted(deps, ids, failed={doomed: "not_found"})


def test_a_broker_outage_when_asking_for_help_does_not_strand_the_claim_in_hand(
    make_deps, make_article, fake_openai
):
    # A full claim asks (through Redis) for another drain; Redis being down then must not
    # abandon the claimed batch in flight until JOB_LEASE_S (found by bench/chaos.py).
    deps = make_deps(embed_batch_max=4)
    ids = [make_article() for _ in range(8)]
    asked: list[str] = []

    def broker_down(model: str) -> None:
        asked.append(model)
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    deps.kick_drain = broker_down
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert asked and result.embedded == 8
    assert_all_accounted(deps, ids)


def on_vector_insert(deps, name: str, body: str) -> None:
    """Run plpgsql `body` before each row inserted into article_embeddings (trigger `name`)."""
    with deps.engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"{body} RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE INSERT ON article_embeddings "
                f"FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
        )


def test_a_failed_write_hands_back_the_claim_embedded_ahead(make_deps, make_article, fake_openai):
    """Claim 2 is embedded while claim 1 is written; claim 1's write fails: claim 2 goes back."""
    deps = make_deps(embed_batch_max=4, embed_linger_ms=0)
    ids = [make_article() for _ in range(8)]
    # A write that fails, e.g. on a constraint a DBA added.
    on_vector_insert(
        deps, "refuse", f"IF NEW.article_id = {ids[0]} THEN RAISE EXCEPTION 'refused'; END IF;"
    )
    pipeline.intake(deps, ids)

    with pytest.raises(psycopg.errors.RaiseException, match="refused"):
        pipeline.drain(deps)

    assert fake_openai.request_count == 2  # both claims were embedded
    assert (
        jobs(deps)
        == [
            *[(i, "in_flight", 1, None) for i in ids[:4]],  # the lease retries the failed write
            *[(i, "pending", 0, "drain_failed") for i in ids[4:]],  # handed back, no attempt used
        ]
    )
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0


def test_a_connection_lost_during_the_vector_write_is_retried(deps, make_article, database_url):
    """The upsert runs on psycopg's cursor: its OperationalError is a transient DB error."""
    ids = [make_article() for _ in range(3)]
    pipeline.intake(deps, ids)
    on_vector_insert(deps, "hang_up", "PERFORM pg_terminate_backend(pg_backend_pid());")

    with pytest.raises(Exception) as info:
        pipeline.drain(deps)

    assert pipeline.is_db_transient(info.value), repr(info.value)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER hang_up ON article_embeddings")
        conn.execute("UPDATE embedding_jobs SET claimed_at = now() - interval '1 day'")
    pipeline.sweep(deps)  # the lease of the lost claim ran out: requeued
    assert pipeline.drain(deps).embedded == 3
    assert_all_accounted(deps, ids)


# --- what the provider answers is checked before anything is written ------------------------


def texts_of(deps, ids=None) -> dict[int, str]:
    """article id -> the text the worker embeds for it (what fake_vector hashes)."""
    rows = fetch(deps, "SELECT id, title, content FROM articles")
    return {i: compose(t, c) for i, t, c in rows if ids is None or i in ids}


def assert_vectors_right(deps, model: str = MODEL, dims: int = 1536) -> int:
    """Every stored vector of `model` is the fake provider's vector for its article's text;
    returns how many were checked."""
    texts = texts_of(deps)
    rows = fetch(
        deps, "SELECT article_id, embedding FROM article_embeddings WHERE model = :m", m=model
    )
    wrong = [
        article_id
        for article_id, stored in rows
        if not np.allclose(stored.to_numpy(), fake_vector(texts[article_id], dims), atol=1e-6)
    ]
    assert wrong == []
    return len(rows)


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ("nan", "non-finite value nan at position 1"),
        ("inf", "non-finite value inf at position 1"),
        ("huge", "value 100000 at position 1 beyond halfvec's ±65504"),
        ("wrong_dim", "1537 values where the model has 1536"),
    ],
)
def test_an_unusable_vector_fails_its_article_only_and_names_the_cause(
    deps, make_article, fake_openai, fault, cause
):
    ids = [make_article(content=f"healthy text {n}") for n in range(8)]
    broken = ids[3]
    with deps.engine.begin() as conn:
        conn.execute(
            text("UPDATE articles SET content = 'BROKEN text' WHERE id = :a"), {"a": broken}
        )
    fake_openai.input_faults = {"BROKEN": fault}
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    # The batch, then the bad input alone once more (it might have been a glitch).
    assert [len(r.inputs) for r in fake_openai.requests] == [8, 1]
    assert (result.embedded, result.failed, result.released) == (7, 1, 0)
    assert_all_accounted(deps, ids, failed={broken: "bad_vector"})
    assert assert_vectors_right(deps) == 7
    (last_error,) = fetch(
        deps, "SELECT last_error FROM embedding_jobs WHERE article_id = :a", a=broken
    )[0]
    assert f"{cause} (input 3 of 8); asked alone" in last_error


def test_an_unusable_vector_that_is_fine_when_asked_alone_is_stored(
    deps, make_article, fake_openai
):
    ids = [make_article(content=f"text {n}") for n in range(4)]
    fake_openai.input_faults = {"text 2": "nan"}
    pipeline.intake(deps, ids)
    inner = deps.embedder(deps.model(None))

    class HealsAlone:
        """The provider's NaN came from batching (it happens): alone, the input is fine."""

        model, dimensions, stats = inner.model, inner.dimensions, inner.stats

        def embed(self, texts, token_count=0):
            if len(texts) == 1:
                fake_openai.input_faults = {}
            return inner.embed(texts, token_count)

        def close(self):
            inner.close()

    deps._embedders[MODEL] = HealsAlone()

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed) == (4, 0)
    assert_all_accounted(deps, ids)
    assert assert_vectors_right(deps) == 4


@pytest.mark.parametrize("fault", ["duplicate_index", "gap", "missing"])
def test_a_misindexed_answer_never_stores_a_vector_under_another_articles_id(
    make_deps, make_article, fake_openai, fault
):
    """Indexes 0, 1, 0 (or a gap, or an item missing) for one input: no vector of that
    answer is used. Split and asked again, the healthy articles are embedded; the one that
    breaks every answer it is in is released as bad_response until JOB_MAX_ATTEMPTS."""
    deps = make_deps(job_retry_delay_s=0, job_max_attempts=3)
    ids = [make_article(content=f"plain text {n}") for n in range(8)]
    culprit = ids[2]
    with deps.engine.begin() as conn:
        conn.execute(text("UPDATE articles SET content = 'MIXUP' WHERE id = :a"), {"a": culprit})
    fake_openai.input_faults = {"MIXUP": fault}
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert result.embedded == 7
    assert_all_accounted(deps, ids, failed={culprit: "bad_response"})
    assert assert_vectors_right(deps) == 7
    ((attempts, last_error),) = fetch(
        deps, "SELECT attempts, last_error FROM embedding_jobs WHERE article_id = :a", a=culprit
    )
    assert attempts == 3
    assert "indexes do not match" in last_error
    # Bisection, not a request per input: 8 → 4+4 → 2+2 → 1+1, then the culprit alone twice.
    assert fake_openai.request_count == 1 + 2 + 2 + 2 + 2


def test_a_provider_that_misindexes_every_answer_gets_no_request_storm(
    make_deps, make_article, fake_openai
):
    deps = make_deps(job_retry_delay_s=60)
    ids = [make_article() for _ in range(16)]
    fake_openai.input_faults = {"Article": "duplicate_index"}  # every input, every answer
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert (result.embedded, result.released) == (0, 16)
    assert fake_openai.request_count == 3  # the batch and its two halves, then it gives up
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0
    assert jobs(deps) == [(i, "pending", 1, "bad_response") for i in ids]


# --- removed content is not findable -------------------------------------------------------

WIDE = "text-embedding-3-small@384"  # the fake answers text-embedding-3* at the asked size


def search_hits(deps, model: str, dims: int, query_text: str) -> list[int]:
    with deps.engine.connect() as conn:
        hits = repository.nearest_articles(
            conn,
            model,
            f"vector({dims})",
            fake_vector(query_text, dims),
            k=10,
            fetch=10,
        )
    return [h.article_id for h in hits]


def test_an_emptied_article_loses_its_vectors_of_every_model_and_is_not_found(
    deps, make_article, fake_openai
):
    from worker.maintenance import register_model

    register_model(deps, WIDE, 384, "openai", build_index=False)
    ids = [make_article(content=f"harbour news {n}") for n in range(5)]
    emptied = ids[1]
    old_text = texts_of(deps, [emptied])[emptied]
    for model in (MODEL, WIDE):
        pipeline.intake(deps, ids, model)
        pipeline.drain(deps, model)
    assert emptied in search_hits(deps, MODEL, 1536, old_text)

    with deps.engine.begin() as conn:
        conn.execute(
            text("UPDATE articles SET title = ' ', content = E'\\n\\t' WHERE id = :a"),
            {"a": emptied},
        )
    pipeline.intake(deps, [emptied])  # the producer announces the edit, for its model only
    result = pipeline.drain(deps)

    assert (result.skipped, result.embedded) == (1, 0)
    assert_all_accounted(deps, ids, failed={emptied: "empty_text"})
    remaining = fetch(deps, "SELECT model FROM article_embeddings WHERE article_id = :a", a=emptied)
    assert remaining == []  # every model's vector is gone, not only the claim's model
    assert emptied not in search_hits(deps, MODEL, 1536, old_text)
    assert emptied not in search_hits(deps, WIDE, 384, old_text)
    assert set(search_hits(deps, WIDE, 384, old_text)) == set(ids) - {emptied}
    assert assert_vectors_right(deps) == 4 and assert_vectors_right(deps, WIDE, 384) == 4


def test_an_emptied_article_with_text_again_by_the_write_keeps_its_vectors(
    deps, make_article, fake_openai
):
    ids = [make_article(content=f"harbour news {n}") for n in range(3)]
    pipeline.intake(deps, ids)
    pipeline.drain(deps)
    emptied = ids[0]
    with deps.engine.begin() as conn:
        conn.execute(
            text("UPDATE articles SET title = '', content = '' WHERE id = :a"), {"a": emptied}
        )
        conn.execute(text("UPDATE articles SET content = 'changed' WHERE id = :a"), {"a": ids[1]})
    inner = deps.embedder(deps.model(None))

    class RefillingEmbedder:
        """The author writes the text again while the claim is at the provider."""

        model, dimensions, stats = inner.model, inner.dimensions, inner.stats

        def embed(self, texts, token_count=0):
            with deps.engine.begin() as conn:
                conn.execute(
                    text("UPDATE articles SET content = 'written again' WHERE id = :a"),
                    {"a": emptied},
                )
            return inner.embed(texts, token_count)

        def close(self):
            inner.close()

    deps._embedders[MODEL] = RefillingEmbedder()
    pipeline.intake(deps, [emptied, ids[1]])

    first = pipeline.drain(deps, max_claims=1)
    assert (first.skipped, first.released, first.embedded) == (0, 1, 1)
    assert (
        fetch(deps, "SELECT count(*) FROM article_embeddings WHERE article_id = :a", a=emptied)[0][
            0
        ]
        == 1
    )
    pipeline.drain(deps)  # the next claim embeds what it says now

    assert_all_accounted(deps, ids)
    assert assert_vectors_right(deps) == 3


def test_a_deleted_article_loses_its_vectors_of_every_model(deps, make_article, fake_openai):
    """The foreign key cascades: nothing for the worker to do, and nothing left to find."""
    from worker.maintenance import register_model

    register_model(deps, WIDE, 384, "openai", build_index=False)
    ids = [make_article(content=f"harbour news {n}") for n in range(3)]
    for model in (MODEL, WIDE):
        pipeline.intake(deps, ids, model)
        pipeline.drain(deps, model)
    deleted = ids[0]
    old_text = texts_of(deps, [deleted])[deleted]

    with deps.engine.begin() as conn:
        conn.execute(text("DELETE FROM articles WHERE id = :a"), {"a": deleted})
    pipeline.intake(deps, [deleted])
    pipeline.drain(deps)

    assert fetch(
        deps, "SELECT count(*) FROM article_embeddings WHERE article_id = :a", a=deleted
    ) == [(0,)]
    assert deleted not in search_hits(deps, MODEL, 1536, old_text)
    assert deleted not in search_hits(deps, WIDE, 384, old_text)
    assert_all_accounted(deps, ids, failed={deleted: "not_found"})
    assert assert_vectors_right(deps) == 2 and assert_vectors_right(deps, WIDE, 384) == 2
