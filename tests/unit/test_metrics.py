"""Every series an alert reads exists from the start, at 0: the failure reasons the code can
record, the retry reasons, and the tasks (an absent series makes `rate()` say "no data")."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

from tests.conftest import REPO
from worker import errors, metrics


def subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *subclasses(sub)]
    return found


# Permanent errors that never end an item: a refused key parks the items (no attempt
# counted); an unknown model or a malformed payload refuses the whole message at intake.
NOT_ITEM_OUTCOMES = {"auth_error", "unknown_model", "invalid_payload"}


def test_every_transient_reason_is_a_retry_and_a_failure_reason() -> None:
    reasons = {errors.TransientError.reason} | {c.reason for c in subclasses(errors.TransientError)}
    assert reasons == set(metrics.RETRY_REASONS)
    # A transient error on the last attempt fails the item with that reason.
    assert reasons <= set(metrics.ITEM_FAILURE_REASONS)


def test_every_permanent_reason_an_item_can_end_with_is_known() -> None:
    reasons = {errors.PermanentError.reason} | {c.reason for c in subclasses(errors.PermanentError)}
    assert reasons >= NOT_ITEM_OUTCOMES
    assert reasons - NOT_ITEM_OUTCOMES <= set(metrics.ITEM_FAILURE_REASONS)


def test_the_reasons_written_as_literals_are_known() -> None:
    pipeline = (REPO / "worker" / "pipeline.py").read_text(encoding="utf-8")
    repository = (REPO / "worker" / "repository.py").read_text(encoding="utf-8")
    # embed_claim's failures and skips: {id: ("reason", "an error text")}
    literal = set(re.findall(r'\(\s*"([a-z_]+)",\s*"[^"]* [^"]*"\s*\)', pipeline))
    # requeue_stale: reason = CASE WHEN attempts >= :max THEN 'lease_expired' …
    literal |= set(re.findall(r"reason = CASE WHEN [^']*THEN '([a-z_]+)'", repository))
    assert {"not_found", "empty_text", "lease_expired"} <= literal
    assert literal <= set(metrics.ITEM_FAILURE_REASONS)


def test_a_model_gets_every_series_at_zero_when_first_used() -> None:
    model = "unit-metrics-model"
    assert (
        REGISTRY.get_sample_value(
            "embedder_failures_total", {"model": model, "reason": "not_found"}
        )
        is None
    )

    metrics.init_model(model)
    metrics.init_model(model)  # idempotent

    for reason in metrics.ITEM_FAILURE_REASONS:
        labels = {"model": model, "reason": reason}
        assert REGISTRY.get_sample_value("embedder_failures_total", labels) == 0.0
    for name in (
        "embedder_articles_embedded_total",
        "embedder_articles_unchanged_total",
        "embedder_batches_total",
        "embedder_provider_requests_total",
        "embedder_tokens_total",
    ):
        assert REGISTRY.get_sample_value(name, {"model": model}) == 0.0, name


def test_retry_reasons_and_tasks_exist_at_zero() -> None:
    for reason in metrics.RETRY_REASONS:  # created at import
        assert (
            REGISTRY.get_sample_value("embedder_api_retries_total", {"reason": reason}) is not None
        )
    metrics.init_tasks(["unit.task"])
    for state in ("success", "failure", "retry"):
        labels = {"task": "unit.task", "state": state}
        assert REGISTRY.get_sample_value("embedder_tasks_total", labels) == 0.0
