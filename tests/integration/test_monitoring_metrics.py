"""What alerts and Flower read, against real PostgreSQL: a drain's failure reasons (every item
it leaves failed or skipped, last attempts included), the failure counters, and the
exporter's gauges for the oldest claim in flight and each model's HNSW index."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.conftest import MODEL, SMALL_MODEL, fetch
from tests.fakes.openai_server import FakeOpenAI
from worker import pipeline, repository
from worker.deps import Deps
from worker.hnsw import index_name
from worker.metrics_server import BacklogCollector

pytestmark = pytest.mark.integration


def failures(model: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("embedder_failures_total", {"model": model, "reason": reason})
    return value or 0.0


def scrape(deps: Deps) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The exporter's PostgreSQL-backed gauges: name -> {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in BacklogCollector(deps.engine).collect():
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_a_drain_reports_what_it_failed_or_skipped_by_reason(
    deps: Deps, make_article: Callable[..., int]
) -> None:
    real = [make_article() for _ in range(3)]
    empty = make_article(title="", content="  ")
    unknown = [990_000_001, 990_000_002]
    before = {r: failures(MODEL, r) for r in ("not_found", "empty_text")}
    pipeline.intake(deps, [*real, empty, *unknown])

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed, result.skipped) == (3, 2, 1)
    assert result.reasons == {"not_found": 2, "empty_text": 1}
    assert failures(MODEL, "not_found") - before["not_found"] == 2
    assert failures(MODEL, "empty_text") - before["empty_text"] == 1


def test_items_whose_last_attempt_fails_are_counted_as_failed(
    make_deps: Callable[..., Deps], make_article: Callable[..., int], fake_openai: FakeOpenAI
) -> None:
    deps = make_deps(job_max_attempts=1)
    ids = [make_article() for _ in range(4)]
    fake_openai.fail_next(500, count=deps.settings.embed_retry_attempts)
    before = failures(MODEL, "provider_unavailable")
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps, max_claims=1)

    assert (result.claimed, result.released, result.failed) == (4, 4, 0)
    assert result.reasons == {"provider_unavailable": 4}
    assert failures(MODEL, "provider_unavailable") - before == 4
    states = fetch(deps, "SELECT DISTINCT state, reason FROM embedding_jobs")
    assert states == [("failed", "provider_unavailable")]


def test_a_release_with_attempts_left_is_no_failure(
    deps: Deps, make_article: Callable[..., int], fake_openai: FakeOpenAI
) -> None:
    ids = [make_article() for _ in range(3)]
    fake_openai.fail_next(500, count=deps.settings.embed_retry_attempts)
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps, max_claims=1)

    assert (result.released, result.reasons) == (3, {})


def test_the_sweep_counts_lease_expired_failures_per_model(
    make_deps: Callable[..., Deps], make_article: Callable[..., int]
) -> None:
    deps = make_deps(job_lease_s=120, job_max_attempts=1)
    ids = [make_article() for _ in range(3)]
    pipeline.intake(deps, ids[:2])
    pipeline.intake(deps, ids[2:], SMALL_MODEL)
    with deps.engine.begin() as conn:
        repository.claim_pending(conn, MODEL, 16, "dead-host:1")
        repository.claim_pending(conn, SMALL_MODEL, 16, "dead-host:1")
        conn.execute(text("UPDATE embedding_jobs SET claimed_at = now() - interval '1 hour'"))
    before = {m: failures(m, "lease_expired") for m in (MODEL, SMALL_MODEL)}

    assert pipeline.sweep(deps) == (0, 3, [])

    assert failures(MODEL, "lease_expired") - before[MODEL] == 2
    assert failures(SMALL_MODEL, "lease_expired") - before[SMALL_MODEL] == 1


def test_a_model_looked_up_by_a_process_has_its_series_at_zero(deps: Deps) -> None:
    name = "metrics-probe-8"
    with deps.engine.begin() as conn:
        repository.insert_model(conn, name, 8, "openai", is_indexed=False)
    labels = {"model": name, "reason": "not_found"}
    assert REGISTRY.get_sample_value("embedder_failures_total", labels) is None

    deps.model(name)

    assert REGISTRY.get_sample_value("embedder_failures_total", labels) == 0.0
    assert REGISTRY.get_sample_value("embedder_articles_embedded_total", {"model": name}) == 0.0


def test_the_exporter_shows_the_oldest_claim_in_flight(
    deps: Deps, make_article: Callable[..., int]
) -> None:
    pipeline.intake(deps, [make_article() for _ in range(3)])
    idle = scrape(deps)["embedder_oldest_in_flight_seconds"]
    assert idle[(("model", MODEL),)] == 0.0
    with deps.engine.begin() as conn:
        claim = repository.claim_pending(conn, MODEL, 2, "stuck-host:1")
        conn.execute(
            text(
                "UPDATE embedding_jobs SET claimed_at = now() - interval '400 seconds' "
                "WHERE claim_token = :t"
            ),
            {"t": claim.token},
        )

    gauges = scrape(deps)

    assert 400 <= gauges["embedder_oldest_in_flight_seconds"][(("model", MODEL),)] < 460
    assert gauges["embedder_oldest_in_flight_seconds"][(("model", SMALL_MODEL),)] == 0.0
    jobs = gauges["embedder_jobs"]
    assert jobs[(("model", MODEL), ("state", "in_flight"))] == 2
    assert jobs[(("model", MODEL), ("state", "pending"))] == 1
    assert gauges["embedder_backlog_up"][()] == 1


def index_states(deps: Deps) -> dict[str, str]:
    gauges: dict[Any, float] = scrape(deps)["embedder_hnsw_index"]
    states = {}
    for labels, value in gauges.items():
        if value == 1:
            found = dict(labels)
            assert found["model"] not in states  # one state per model
            states[found["model"]] = found["state"]
    return states


def test_the_exporter_shows_each_models_hnsw_index_state(
    deps: Deps, make_article: Callable[..., int]
) -> None:
    pipeline.intake(deps, [make_article() for _ in range(2)])
    assert pipeline.drain(deps).embedded == 2
    assert index_states(deps) == {MODEL: "valid", SMALL_MODEL: "valid"}
    indexed = scrape(deps)["embedder_model_indexed"]
    assert indexed == {(("model", MODEL),): 1, (("model", SMALL_MODEL),): 1}

    name = index_name(SMALL_MODEL)
    with deps.engine.connect() as conn:
        conn.execute(text(f'DROP INDEX "{name}"'))
        conn.commit()
    assert index_states(deps) == {MODEL: "valid", SMALL_MODEL: "missing"}

    # What an interrupted CREATE INDEX CONCURRENTLY leaves: an invalid index of that name
    # (here a unique index that the two stored rows violate).
    with deps.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(Exception, match="could not create unique index"):
            conn.execute(
                text(f'CREATE UNIQUE INDEX CONCURRENTLY "{name}" ON article_embeddings ((1))')
            )
    assert index_states(deps) == {MODEL: "valid", SMALL_MODEL: "invalid"}
