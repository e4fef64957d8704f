"""Leases, heartbeats and fencing at the pipeline level (worker/lease.py, pipeline.write_claim).

Real PostgreSQL and the fake provider; a "dead" or "paused" worker is a claim made with its
own worker id whose lease is then made to run out (its claimed_at moved back), as the
heartbeat of a killed or frozen process would leave it. tests/e2e/test_leases.py does the
same with real workers, SIGKILL and SIGSTOP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.conftest import MODEL, fetch
from tests.fakes.openai_server import fake_vector
from worker import pipeline, repository
from worker.text import compose

pytestmark = pytest.mark.integration


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s")
        time.sleep(0.02)
    return value


def expire(deps, claim: repository.Claim, ids=None) -> None:
    """The claim's lease runs out (no heartbeat for longer than any lease)."""
    with deps.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE embedding_jobs SET claimed_at = now() - interval '1 hour' "
                "WHERE claim_token = :t AND article_id = ANY(CAST(:ids AS bigint[]))"
            ),
            {"t": claim.token, "ids": list(ids if ids is not None else claim.article_ids)},
        )


def claimed_at(deps, claim: repository.Claim) -> list[Any]:
    rows = fetch(
        deps,
        "SELECT claimed_at FROM embedding_jobs WHERE claim_token = :t ORDER BY article_id",
        t=claim.token,
    )
    return [r[0] for r in rows]


def stored(deps, ids) -> dict[int, np.ndarray]:
    return {i: repository_vector(deps, i) for i in ids}


def repository_vector(deps, article_id: int) -> np.ndarray:
    with deps.engine.connect() as conn:
        vector = repository.stored_vector(conn, article_id, MODEL)
    assert vector is not None, article_id
    return np.asarray(vector)


def text_of(deps, article_id: int) -> str:
    title, content = fetch(deps, "SELECT title, content FROM articles WHERE id = :i", i=article_id)[
        0
    ]
    return compose(title, content)


def lease_lost() -> float:
    return REGISTRY.get_sample_value("embedder_lease_lost_total", {"model": MODEL}) or 0.0


def test_the_heartbeat_renews_the_claims_in_hand_and_only_those(make_deps, make_article):
    deps = make_deps(job_lease_s=30, job_heartbeat_s=0.2)
    ids = [make_article() for _ in range(6)]
    pipeline.intake(deps, ids)
    with deps.engine.begin() as conn:
        held = repository.claim_pending(conn, MODEL, 4, deps.worker_id)
        other = repository.claim_pending(conn, MODEL, 4, "another-host:1")
    first_held, first_other = claimed_at(deps, held), claimed_at(deps, other)

    keeper = deps.leases()
    keeper.hold(MODEL, held)
    wait_until(lambda: min(claimed_at(deps, held)) > max(first_held))

    assert claimed_at(deps, other) == first_other  # not ours: never renewed
    keeper.release(held)
    assert keeper.renew() == 0  # released: no more beats for it
    # Renewal keeps the claim: the sweep leaves it alone, whatever its age.
    assert pipeline.sweep(deps)[:2] == (0, 0)


def test_the_next_claim_takes_back_jobs_whose_lease_ran_out_no_sweep_needed(
    make_deps, make_article, fake_openai
):
    deps = make_deps(job_lease_s=60)
    ids = [make_article() for _ in range(10)]
    pipeline.intake(deps, ids)
    with deps.engine.begin() as conn:  # a worker claims, then dies: no more heartbeats
        dead = repository.claim_pending(conn, MODEL, 6, "dead-host:4242")
    expire(deps, dead)

    result = pipeline.drain(deps)

    assert result.embedded == 10
    sent = [t for r in fake_openai.requests for t in r.inputs]
    assert sorted(sent) == sorted({text_of(deps, i) for i in ids})  # each once
    assert fetch(deps, "SELECT count(*) FROM embedding_jobs")[0][0] == 0
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 10


def test_a_late_write_after_the_lease_passed_on_is_refused_the_newer_vectors_stay(
    make_deps, make_article, fake_openai, caplog
):
    """Worker A is paused after embedding; its lease runs out; worker B embeds the articles'
    new text and writes it; A wakes up and writes: fencing refuses what it no longer owns."""
    paused, other = make_deps(job_lease_s=60), make_deps(job_lease_s=60)
    ids = [make_article() for _ in range(4)]
    pipeline.intake(paused, ids)
    info = paused.model(MODEL)
    with paused.engine.begin() as conn:
        claim = repository.claim_pending(conn, MODEL, 16, "paused-host:1")
    in_hand = pipeline.embed_claim(paused, info, claim)  # vectors of the old text
    old_text = {i: text_of(paused, i) for i in ids}
    with paused.engine.begin() as conn:  # the articles change, their producer re-sends them
        conn.execute(
            text("UPDATE articles SET content = content || ' (edited)' WHERE id = ANY(:ids)"),
            {"ids": ids},
        )
    pipeline.intake(paused, ids)
    taken = ids[:3]  # the lease of three of them runs out (one was renewed just in time)
    expire(paused, claim, taken)

    newer = pipeline.drain(other)
    before = lease_lost()
    with caplog.at_level(logging.WARNING, logger="worker.pipeline"):
        late = pipeline.write_claim(paused, info, claim, in_hand)

    assert newer.embedded == 3
    assert (late.lease_lost, late.embedded, late.failed, late.released) == (3, 1, 0, 0)
    assert lease_lost() - before == 3
    assert "lease lost: 3 of 4 claimed items of text-embedding-3-small" in caplog.text
    vectors = stored(paused, ids)
    for i in taken:  # B's vectors, of the edited text: not overwritten
        assert np.allclose(vectors[i], fake_vector(text_of(paused, i), 1536), atol=1e-6)
    (kept,) = set(ids) - set(taken)
    assert np.allclose(vectors[kept], fake_vector(old_text[kept], 1536), atol=1e-6)
    assert fetch(paused, "SELECT count(*) FROM article_embeddings")[0][0] == 4
    # A's job was re-sent while in flight: back to pending for the edited text.
    assert fetch(paused, "SELECT article_id, state FROM embedding_jobs") == [(kept, "pending")]


def test_a_job_re_sent_while_in_flight_goes_back_to_pending_after_a_heartbeat(
    make_deps, make_article
):
    """Completion compares the re-send with the claim's time, not the renewed claimed_at."""
    deps = make_deps()
    ids = [make_article() for _ in range(2)]
    pipeline.intake(deps, ids)
    info = deps.model(MODEL)
    with deps.engine.begin() as conn:
        claim = repository.claim_pending(conn, MODEL, 16, deps.worker_id)
    embedded = pipeline.embed_claim(deps, info, claim)
    pipeline.intake(deps, ids[:1])  # re-sent while in flight (the article may have changed)
    deps.leases().hold(MODEL, claim)
    assert deps.leases().renew() == 2  # the heartbeat moves claimed_at past the re-send
    deps.leases().release(claim)

    result = pipeline.write_claim(deps, info, claim, embedded)

    assert result.embedded == 2
    assert fetch(deps, "SELECT article_id, state FROM embedding_jobs") == [(ids[0], "pending")]


def test_the_sweep_and_the_heartbeat_never_wait_for_a_claim_being_written(make_deps, make_article):
    deps = make_deps(job_lease_s=60)
    ids = [make_article() for _ in range(3)]
    pipeline.intake(deps, ids)
    with deps.engine.begin() as conn:
        claim = repository.claim_pending(conn, MODEL, 16, "slow-writer:1")
    expire(deps, claim)
    locked, release = threading.Event(), threading.Event()

    def writer() -> None:  # its owner is writing it right now (the fencing lock)
        with deps.engine.begin() as conn:
            assert repository.lock_claimed_jobs(conn, MODEL, claim) == set(ids)
            locked.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        assert pipeline.sweep(deps)[:2] == (0, 0)  # skipped, not waited for
        with deps.engine.begin() as conn:
            assert repository.renew_leases(conn, [(MODEL, claim)]) == 0
        assert time.monotonic() - started < 5
    finally:
        release.set()
        thread.join(10)
    assert pipeline.sweep(deps)[:2] == (3, 0)  # the writer let go without writing
