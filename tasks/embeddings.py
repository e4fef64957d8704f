"""Thin Celery wrappers around worker.pipeline. Task names are a public contract.

What Flower shows (docs/operations.md, "Flower: item failures, both queues, no
housekeeping"): a drain that recorded failed or skipped items ends in FAILURE with
ItemsFailed ("2 items failed: not_found=2 …"), a refused message with MessageRefused, each
once everything is committed (for a refused message: what it refused is in the dead-letter
store, what was valid beside it is recorded). Both are expected outcomes (`throws`: no
traceback; we log them ourselves), acked (task_acks_on_failure_or_timeout) and never
retried. Beat's sweep and reconcile send no task events, so they stay out of Flower's task
list; embedder_tasks_total counts their outcomes, and Celery logs their failures at ERROR.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import Task, current_task

from tasks.app import KICK_KEY, app, get_deps, redis_client, stopping
from worker import pipeline
from worker.deps import Deps
from worker.errors import PermanentError

logger = logging.getLogger(__name__)

DB_RETRY_MAX = 10


class ItemsFailed(Exception):
    """A drain recorded items as failed or skipped; the message says how many and why.

    Raised after the drain committed and handed over: only the task's state changes.
    """

    @classmethod
    def of(cls, model: str, result: pipeline.DrainResult) -> ItemsFailed:
        count = sum(result.reasons.values())
        items = "item" if count == 1 else "items"
        what = "failed or skipped" if result.skipped else "failed"
        reasons = ", ".join(
            f"{reason}={n}"
            for reason, n in sorted(result.reasons.items(), key=lambda r: (-r[1], r[0]))
        )
        return cls(
            f"{count} {items} {what}: {reasons} (model {model}; {result.embedded} embedded, "
            f"{result.unchanged} unchanged; details: embedder status)"
        )


class MessageRefused(Exception):
    """A message, or part of one, that breaks the enqueue contract: what was refused is in
    the dead-letter store (`embedder dead-letters`), anything valid beside it was recorded."""


def _db_backoff(retries: int) -> int:
    # Short, capped countdowns: long ETAs would sit unacked in Redis past the visibility timeout.
    return int(min(30, 2 ** min(retries, 5)))


@app.task(
    name="embeddings.embed_articles",
    bind=True,
    acks_late=True,
    max_retries=DB_RETRY_MAX,
    throws=(MessageRefused,),
)
def embed_articles(self: Task, article_ids: Any, model: str | None = None) -> dict[str, Any]:
    """Accept ids for embedding (safe to send twice); a drain embeds them in batches."""
    deps = get_deps()
    try:
        info, count = pipeline.intake(deps, article_ids, model, source=_source())
    except PermanentError as exc:
        # A bad message is refused and logged; retrying it would fail the same way. FAILURE
        # (acked, not retried) is how Flower shows it.
        logger.error(
            "embed_articles refused a message: %s", exc, extra={"task_id": self.request.id}
        )
        raise MessageRefused(f"{exc.reason}: {exc}") from None
    except Exception as exc:
        if pipeline.is_db_transient(exc):
            raise self.retry(exc=exc, countdown=_db_backoff(self.request.retries)) from None
        raise
    logger.info(
        "accepted %s ids for %s",
        count,
        info.name,
        extra={"task_id": self.request.id, "article_count": count, "model": info.name},
    )
    if count:
        deps.kick_drain(info.name)
    return {"accepted": count, "model": info.name}


def _source() -> pipeline.Source:
    """The message being run (embed_article's too: it calls embed_articles.run)."""
    request = current_task.request
    info = request.delivery_info or {}
    return pipeline.Source(
        queue=info.get("routing_key"), task_name=current_task.name, task_id=request.id
    )


@app.task(
    name="embeddings.dead_letter",
    bind=True,
    acks_late=True,
    max_retries=DB_RETRY_MAX,
    throws=(MessageRefused,),
)
def dead_letter(self: Task, letter: Any) -> dict[str, Any]:
    """Record a value the broker could not read (worker/broker.py sends this in its place).

    Never sent by producers. Ends in FAILURE (MessageRefused) naming the reason and the dead
    letter, like any refused message; a redelivery records nothing twice.
    """
    deps = get_deps()
    try:
        letter_id, reason, detail = pipeline.record_unreadable(
            deps, letter, key=self.request.id or str(uuid.uuid4())
        )
    except Exception as exc:
        if pipeline.is_db_transient(exc):
            raise self.retry(exc=exc, countdown=_db_backoff(self.request.retries)) from None
        raise
    where = f"dead letter {letter_id}" if letter_id is not None else "dead letter stored before"
    logger.error(
        "refused an unreadable message: %s: %s (%s)",
        reason,
        detail,
        where,
        extra={"task_id": self.request.id},
    )
    raise MessageRefused(f"{reason}: {detail} ({where})")


@app.task(
    name="embeddings.embed_article",
    acks_late=True,
    max_retries=DB_RETRY_MAX,
    throws=(MessageRefused,),
)
def embed_article(article_id: Any, model: str | None = None) -> dict[str, Any]:
    """One id; the same path as embed_articles."""
    result: dict[str, Any] = embed_articles.run([article_id], model)
    return result


@app.task(
    name="embeddings.drain",
    bind=True,
    acks_late=True,
    max_retries=DB_RETRY_MAX,
    throws=(ItemsFailed,),
)
def drain(self: Task, model: str | None = None) -> dict[str, Any]:
    """Embed pending items of `model` for up to EMBED_DRAIN_BUDGET_S, then hand over.

    Ends in FAILURE (ItemsFailed) when it recorded failed or skipped items; by then every
    outcome is committed and the next drain kicked.
    """
    deps = get_deps()
    info = deps.model(model)
    redis_client().delete(KICK_KEY.format(model=info.name))
    try:
        result = pipeline.drain(deps, info.name, should_stop=stopping)
    except Exception as exc:
        if pipeline.is_db_transient(exc):
            raise self.retry(exc=exc, countdown=_db_backoff(self.request.retries)) from None
        raise
    if result.claimed:
        _after_drain(deps, info.name, result)
    logger.log(
        logging.INFO if result.claimed else logging.DEBUG,  # an empty drain is no event
        "drain %s: claimed=%s embedded=%s unchanged=%s failed=%s skipped=%s released=%s",
        info.name,
        result.claimed,
        result.embedded,
        result.unchanged,
        result.failed,
        result.skipped,
        result.released,
        extra={"task_id": self.request.id, "model": info.name, "article_count": result.embedded},
    )
    if result.reasons:
        failure = ItemsFailed.of(info.name, result)
        # Celery logs an expected exception at INFO, which logs.configure quiets: say it here.
        logger.warning(
            "drain %s: %s",
            info.name,
            failure,
            extra={"task_id": self.request.id, "model": info.name},
        )
        raise failure
    return {
        "model": info.name,
        "claimed": result.claimed,
        "embedded": result.embedded,
        "failed": result.failed,
    }


def _after_drain(deps: Deps, model: str, result: pipeline.DrainResult) -> None:
    """The hand-over to the next drain: best effort, the work is committed.

    During a Redis outage it fails; the beat sweep kicks the pending work once it is back.
    """
    if result.is_stopped:
        return
    try:
        deps.kick_drain(model)  # budget spent or more arrived: keep going elsewhere
    except redis.RedisError as exc:
        logger.warning("drain %s: could not hand over: %s", model, exc)


# Housekeeping every 30 s / 5 min: no events, so it stays out of Flower's task list.
@app.task(name="embeddings.sweep", acks_late=True, send_events=False)
def sweep() -> dict[str, Any]:
    """Beat: requeue items whose worker died, and drain whatever Redis may have lost."""
    deps = get_deps()
    requeued, failed, models = pipeline.sweep(deps)
    for model in models:
        deps.kick_drain(model)
    pipeline.log_pool_stats(deps)
    return {"requeued": requeued, "failed": failed, "models": models}


@app.task(name="embeddings.reconcile", acks_late=True, send_events=False)
def reconcile() -> dict[str, Any]:
    """Beat: queue recent articles that lack a vector and were never (or no longer) asked for."""
    deps = get_deps()
    count = pipeline.reconcile(deps)
    if count:
        deps.kick_drain(deps.model(None).name)
    return {"queued": count}
