"""Orchestration, no Celery: intake → claim → load → embed → write.

Durable state lives in `embedding_jobs`: intake marks (article, model) pending; a drain
claims up to EMBED_BATCH_MAX of them (FOR UPDATE SKIP LOCKED), loads the articles in one
query, calls the provider with no transaction open, and writes vectors and job outcomes in
one transaction. Producers sending one id per message still get full batches: the drain
claims whatever is pending across all messages, and lingers up to EMBED_LINGER_MS for a
batch to fill.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from worker import client, messages, metrics, repository
from worker import text as textmod
from worker.batching import plan_batches
from worker.db import pool_stats
from worker.deps import Deps
from worker.embedder import embed_isolating, rate_wait_s
from worker.errors import (
    DEAD_LETTER_REASONS,
    AuthenticationFailed,
    IngestError,
    PermanentError,
    RateLimited,
    TransientError,
    UnknownModel,
)
from worker.repository import ArticleRow, Claim, EmbeddingRow, ModelInfo

logger = logging.getLogger(__name__)

# Validation bounds for task payloads (PostgreSQL bigint, positive ids).
MAX_ARTICLE_ID = messages.MAX_ARTICLE_ID


@dataclass
class DrainResult:
    claimed: int = 0
    embedded: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0
    released: int = 0
    batches: int = 0
    requests: int = 0
    # Claimed items not written: their lease had passed to another worker (fencing).
    lease_lost: int = 0
    is_stopped: bool = False  # the provider refused our credentials: stop draining
    # Items this drain recorded failed or skipped, by reason: `failed` and `skipped`, plus
    # released items whose last attempt it was (counted in `released` too).
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: DrainResult) -> None:
        for name in (
            "claimed",
            "embedded",
            "unchanged",
            "failed",
            "skipped",
            "released",
            "batches",
            "requests",
            "lease_lost",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.is_stopped = self.is_stopped or other.is_stopped
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


@dataclass(frozen=True)
class Source:
    """Where a message came from, recorded with its dead letters."""

    queue: str | None = None
    task_name: str | None = None
    task_id: str | None = None


def validate_ids(article_ids: Any) -> list[int]:
    """The ids of a payload, or Refused (an InvalidPayload, reason `invalid_ids`) when any
    value is not an article id: a JSON integer or a string of plain decimal digits, 1 to
    2^63-1 (worker.messages.parse_id)."""
    ids, bad = messages.parse_ids(article_ids)
    if bad:
        raise messages.Refused("invalid_ids", messages.refused_ids_detail(bad, len(ids) + len(bad)))
    return ids


def intake(
    deps: Deps, article_ids: Any, model: Any = None, *, source: Source | None = None
) -> tuple[ModelInfo, int]:
    """Record the valid ids as pending for `model` (default: EMBEDDING_MODEL); return
    (model, ids recorded). What is refused goes to the dead-letter store, nothing is lost.

    Ids that are not article ids are refused one by one: the valid ones are recorded and
    the refused values stored as one dead letter (`invalid_ids`) in the same transaction;
    then Refused is raised, saying how many were accepted, and a drain is asked for. A
    message that cannot be taken at all (article_ids not a list, a model that is not a
    string or not registered) is stored whole as a dead letter and refused (Refused).
    Either way the error is raised only once the dead letter is committed.
    """
    source = source or Source()
    try:
        name = messages.parse_model(model)
        ids, bad = messages.parse_ids(article_ids)
        info = _registered(deps, name)
    except messages.Refused as refused:
        letter = _store_dead_letter(deps, refused, article_ids, model, source)
        raise messages.Refused(refused.reason, f"{refused.detail}{_letter_note(letter)}") from None
    if not bad:
        if ids:
            with deps.engine.begin() as conn:
                repository.record_intake(conn, info.name, ids)
        return info, len(set(ids))
    part = messages.Refused("invalid_ids", messages.refused_ids_detail(bad, len(ids) + len(bad)))
    with deps.engine.begin() as conn:
        if ids:
            repository.record_intake(conn, info.name, ids)
        letter = _insert_dead_letter(conn, part, bad, model, source)
    _count_dead_letter(part.reason, letter)
    if ids:
        _ask_for_help(deps, info.name)  # the caller gets the error, not the count
    raise messages.Refused(
        part.reason,
        f"{part.detail}; accepted the other {len(set(ids))} for {info.name}{_letter_note(letter)}",
    )


def _registered(deps: Deps, name: str | None) -> ModelInfo:
    try:
        return deps.model(name)
    except UnknownModel as exc:
        raise messages.Refused("unknown_model", str(exc)) from None


def _store_dead_letter(
    deps: Deps, refused: messages.Refused, article_ids: Any, model: Any, source: Source
) -> int | None:
    with deps.engine.begin() as conn:
        letter = _insert_dead_letter(conn, refused, article_ids, model, source)
    _count_dead_letter(refused.reason, letter)
    return letter


def _insert_dead_letter(
    conn: Connection, refused: messages.Refused, article_ids: Any, model: Any, source: Source
) -> int | None:
    """Store the refused ids (with the model as sent) as an embed_articles message: the
    form `embedder dead-letters replay` re-sends once it parses. None if stored before."""
    values = article_ids if isinstance(article_ids, list) else [article_ids]
    kwargs = {} if model is None else {"model": model}
    # Whatever a Python caller passed must still be storable: non-JSON values as their repr.
    args, kwargs = json.loads(json.dumps([[values], kwargs], default=repr))
    envelope = client.task_message(
        client.TASK_EMBED_ARTICLES, args, kwargs, task_id=source.task_id, expires_s=None
    )
    raw = json.dumps(envelope).encode("utf-8")
    return repository.insert_dead_letter(
        conn,
        dedupe_key=f"{source.task_id}:{refused.reason}" if source.task_id else str(uuid.uuid4()),
        reason=refused.reason,
        detail=messages.clean_text(refused.detail, 1000) or "",
        queue=messages.clean_text(source.queue),
        task_name=messages.clean_text(source.task_name),
        task_id=messages.clean_text(source.task_id),
        payload=messages.capped(raw),
        payload_size=len(raw),
    )


def record_unreadable(deps: Deps, letter: Any, *, key: str) -> tuple[int | None, str, str]:
    """Store a value the broker could not read (the argument of embeddings.dead_letter,
    worker.client.dead_letter_message); return (dead letter id or None if stored before,
    reason, detail). A malformed letter is itself stored, as `bad_arguments`."""
    try:
        payload = base64.b64decode(letter["payload"], validate=True)
        size = letter["size"]
        reason = letter["reason"]
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or size < len(payload)
            or reason not in DEAD_LETTER_REASONS
        ):
            raise ValueError("size or reason")
        detail = messages.clean_text(letter.get("detail"), 1000) or ""
        fields = {k: messages.clean_text(letter.get(k)) for k in ("queue", "task_name", "task_id")}
    except (TypeError, KeyError, ValueError, AttributeError):
        payload = json.dumps(letter, default=repr).encode("utf-8")
        size, reason = len(payload), "bad_arguments"
        detail = "embeddings.dead_letter was sent something that is not a dead letter"
        fields = {"queue": None, "task_name": client.TASK_DEAD_LETTER, "task_id": None}
        payload = messages.capped(payload)
    with deps.engine.begin() as conn:
        letter_id = repository.insert_dead_letter(
            conn,
            dedupe_key=key,
            reason=reason,
            detail=detail,
            payload=payload,
            payload_size=size,
            **fields,
        )
    _count_dead_letter(reason, letter_id)
    return letter_id, reason, detail


def _count_dead_letter(reason: str, letter: int | None) -> None:
    if letter is not None:  # None: this delivery was recorded before (a redelivery)
        metrics.DEAD_LETTERS.labels(reason=reason).inc()


def _letter_note(letter: int | None) -> str:
    return f" (dead letter {letter})" if letter is not None else " (dead letter stored before)"


def drain(
    deps: Deps,
    model: str | None = None,
    *,
    budget_s: float | None = None,
    max_claims: int | None = None,
    linger: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> DrainResult:
    """Embed pending items of `model` until none are ready or the time budget is spent.

    `should_stop` is checked between claims, so a stopping worker finishes the batch in
    hand and hands the rest back (it stays pending in PostgreSQL).
    """
    info = deps.model(model)
    settings = deps.settings
    deadline = time.monotonic() + (
        budget_s if budget_s is not None else settings.embed_drain_budget_s
    )
    total = DrainResult()
    claims = 0
    last_stats = time.monotonic()
    stopped = False
    # Two stages: claim N+1 is loaded and embedded (no transaction open) in a helper thread
    # while claim N is written, so the writer is not idle during API calls. At most two
    # claims are in hand; each is written, or handed back if the drain fails.
    in_hand: _InHand | None = None
    ahead: _InHand | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="embed-ahead") as pool:
        try:
            while True:
                claim = None
                if (
                    not stopped
                    and time.monotonic() < deadline
                    and (max_claims is None or claims < max_claims)
                    and not should_stop()
                ):
                    claim = _claim(deps, info, deadline, sleep if linger else None)
                if claim is not None:
                    claims += 1
                    ahead = (claim, pool.submit(embed_claim, deps, info, claim))
                wrote = in_hand is not None
                if in_hand is not None:
                    (written, embedding), in_hand = in_hand, None
                    try:
                        result = write_claim(deps, info, written, embedding.result())
                    finally:  # written, or left to its lease: no more heartbeats
                        deps.leases().release(written)
                    total.add(result)
                    stopped = stopped or result.is_stopped
                in_hand, ahead = ahead, None
                if in_hand is None and not wrote:
                    break  # (after a write, look once more: it may have handed items back)
                if time.monotonic() - last_stats >= settings.pool_stats_interval_s:
                    log_pool_stats(deps)
                    last_stats = time.monotonic()
        except BaseException:
            # A claim whose write failed stays in flight: the lease retries it, counting an
            # attempt, so a poison batch ends failed. Claims not yet written go back now.
            for unwritten in (in_hand, ahead):
                if unwritten is not None:
                    _hand_back(deps, info, *unwritten)
            raise
    return total


def _claim(
    deps: Deps, info: ModelInfo, deadline: float, sleep: Callable[[float], None] | None
) -> Claim | None:
    """The next claim (after lingering for a full batch when `sleep` is given), or None."""
    if sleep is not None:
        _linger(deps, info, deadline, sleep)
    if not _await_rate_budget(deps, info, deadline, sleep or time.sleep):
        return None  # no room before the drain's deadline: claim nothing
    with deps.engine.begin() as conn:
        # A dead worker's claims come back here too, not only at the next sweep: under load
        # the sweep's message may wait behind busy drains.
        _requeue_stale(deps, conn, info.name)
        claim = repository.claim_pending(
            conn, info.name, deps.settings.embed_batch_max, deps.worker_id
        )
    if not claim.article_ids:
        return None
    deps.leases().hold(info.name, claim)  # renewed until written or handed back
    if len(claim.article_ids) == deps.settings.embed_batch_max:
        _ask_for_help(deps, info.name)  # more may be waiting: let an idle worker help
    return claim


def _hand_back(deps: Deps, info: ModelInfo, claim: Claim, embedding: Future[_Embedded]) -> None:
    """Best effort, after a failure elsewhere: return a claim that will not be written.

    If this fails too (the database is gone), the lease expires and the sweep requeues it.
    """
    try:
        embedding.result()  # let its requests finish; their vectors are dropped
    except Exception as exc:
        logger.debug("the claim handed back had failed as well: %s", exc)
    finally:
        deps.leases().release(claim)
    try:
        with deps.engine.begin() as conn:
            repository.release_jobs(
                conn,
                info.name,
                claim,
                claim.article_ids,
                reason="drain_failed",
                error="the drain stopped on an error before writing this claim",
                delay_s=0,
                max_attempts=deps.settings.job_max_attempts,
                count_attempt=False,
            )
    except Exception as exc:
        logger.warning("could not hand back %s claimed items: %s", len(claim.article_ids), exc)


def _await_rate_budget(
    deps: Deps, info: ModelInfo, deadline: float, sleep: Callable[[float], None]
) -> bool:
    """Wait, holding no claim and no connection, until the model's endpoint has rate budget.

    Claiming only when the shared budget has room keeps claims from waiting in hand (and
    from being given back); False when there is none before the drain's deadline.
    """
    embedder = deps.embedder(info)
    while True:
        wait_s = rate_wait_s(embedder)
        if wait_s <= 0:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sleep(min(wait_s, left, 1.0))


def _ask_for_help(deps: Deps, model: str) -> None:
    """Kick another drain, best effort: a broker outage must not strand the claim in hand."""
    try:
        deps.kick_drain(model)
    except Exception as exc:  # Redis down: the beat sweep kicks the pending work later
        logger.warning("could not ask for another drain of %s: %s", model, exc)


def _linger(deps: Deps, info: ModelInfo, deadline: float, sleep: Callable[[float], None]) -> None:
    """Wait (≤ EMBED_LINGER_MS) for a full batch when only a few young items are pending."""
    linger_s = deps.settings.embed_linger_ms / 1000.0
    if linger_s <= 0:
        return
    limit = deps.settings.embed_batch_max
    while time.monotonic() < deadline:
        with deps.engine.connect() as conn:
            count, oldest_age = repository.pending_window(conn, info.name, limit)
        if count == 0 or count >= limit or oldest_age >= linger_s:
            return
        sleep(min(linger_s - oldest_age, 0.05))


@dataclass
class _Work:
    article: ArticleRow
    prepared: textmod.PreparedText
    content_hash: bytes


@dataclass(frozen=True)
class _Release:
    """Claimed items to give back for a later try (written with the claim's other outcomes)."""

    ids: tuple[int, ...]
    reason: str
    error: str
    delay_s: float
    count_attempt: bool = True


@dataclass
class _Embedded:
    """One claim after loading and embedding, before its write transaction."""

    result: DrainResult
    vectors: list[EmbeddingRow]
    unchanged: list[int]
    failures: dict[int, tuple[str, str]]
    skipped: dict[int, tuple[str, str]]
    releases: list[_Release]

    @property
    def released(self) -> list[int]:
        return [i for r in self.releases for i in r.ids]


_InHand = tuple[Claim, Future[_Embedded]]  # a claim and its load + embed, maybe still running


def embed_claim(deps: Deps, info: ModelInfo, claim: Claim) -> _Embedded:
    """Load the claimed articles (one query) and call the provider, with no transaction open.

    Reads and calls only: every outcome is returned, for write_claim's one transaction.
    """
    settings = deps.settings
    result = DrainResult(claimed=len(claim.article_ids))
    with deps.engine.connect() as conn:
        articles = repository.load_articles(conn, info.name, claim.article_ids)
    found = {a.id for a in articles}
    failures: dict[int, tuple[str, str]] = {
        i: ("not_found", "no article with this id (unknown or deleted)")
        for i in claim.article_ids
        if i not in found
    }
    skipped: dict[int, tuple[str, str]] = {}
    unchanged: list[int] = []
    work: list[_Work] = []
    for article in articles:
        composed = textmod.compose(article.title, article.content)
        if not composed.strip():
            skipped[article.id] = ("empty_text", "title and content are empty or whitespace")
            continue
        digest = textmod.content_hash(info.name, composed)
        if digest == article.stored_hash:
            unchanged.append(article.id)
            continue
        prepared = textmod.prepare(composed, settings.embed_input_max_tokens)
        work.append(_Work(article, prepared, digest))

    vectors: list[EmbeddingRow] = []
    releases: list[_Release] = []
    if work:
        requests_before = deps.embedder(info).stats.requests
        vectors, releases, result.is_stopped, result.batches = _embed_work(
            deps, info, work, failures
        )
        result.requests = deps.embedder(info).stats.requests - requests_before
    return _Embedded(result, vectors, unchanged, failures, skipped, releases)


def write_claim(deps: Deps, info: ModelInfo, claim: Claim, embedded: _Embedded) -> DrainResult:
    """Write vectors and every job outcome of one claim in one transaction."""
    settings = deps.settings
    with deps.engine.begin() as conn:
        # Fencing: only jobs still carrying this claim's token are written, locked until
        # commit. A worker that lost its lease (frozen, cut off) writes nothing over the
        # result of the worker that took its jobs over.
        owned = repository.lock_claimed_jobs(conn, info.name, claim)
        embedded = _fence(info, claim, embedded, owned)
        result, vectors = embedded.result, embedded.vectors
        # Deleted or re-dated meanwhile: not written; the next claim sees what became of it.
        alive = repository.lock_existing_articles(conn, vectors)
        changed = [v.article_id for v in vectors if v.article_id not in alive]
        vectors = [v for v in vectors if v.article_id in alive]
        changed += _remove_emptied(conn, embedded.skipped)
        repository.upsert_embeddings(conn, info.name, vectors)
        repository.complete_jobs(
            conn, info.name, claim, [*embedded.unchanged, *(v.article_id for v in vectors)]
        )
        repository.fail_jobs(conn, info.name, claim, embedded.failures)
        repository.fail_jobs(conn, info.name, claim, embedded.skipped, state="skipped")
        releases = [
            *embedded.releases,
            _Release(
                tuple(changed),
                reason="article_changed",
                error="article deleted or re-dated while it was being embedded",
                delay_s=0,
                count_attempt=False,
            ),
        ]
        exhausted: dict[str, int] = {}
        for release in releases:
            used_up = repository.release_jobs(
                conn,
                info.name,
                claim,
                release.ids,
                reason=release.reason,
                error=release.error,
                delay_s=release.delay_s,
                max_attempts=settings.job_max_attempts,
                count_attempt=release.count_attempt,
            )
            if used_up:
                exhausted[release.reason] = exhausted.get(release.reason, 0) + used_up

    result.embedded = len(vectors)
    result.unchanged = len(embedded.unchanged)
    result.failed = len(embedded.failures)
    result.skipped = len(embedded.skipped)
    result.released = len(embedded.released) + len(changed)
    for reason, _ in [*embedded.failures.values(), *embedded.skipped.values()]:
        result.reasons[reason] = result.reasons.get(reason, 0) + 1
    for reason, count in exhausted.items():
        result.reasons[reason] = result.reasons.get(reason, 0) + count
    _count(info.name, result)
    return result


def _remove_emptied(conn: Connection, skipped: dict[int, tuple[str, str]]) -> list[int]:
    """Delete the vectors of every model of the articles skipped for empty text.

    An emptied article must not be found by what it used to say. Its text is read again
    under a share lock (no edit until commit): one that has text again, or is gone, by
    now keeps its vectors, leaves `skipped` and is returned, to go back to pending.
    """
    emptied = [i for i, (reason, _) in skipped.items() if reason == "empty_text"]
    if not emptied:
        return []
    texts = repository.lock_article_texts(conn, emptied)
    still = [i for i in emptied if i in texts and not textmod.compose(*texts[i]).strip()]
    repository.delete_article_embeddings(conn, still)
    changed = [i for i in emptied if i not in still]
    for i in changed:
        del skipped[i]
    return changed


def _fence(info: ModelInfo, claim: Claim, embedded: _Embedded, owned: set[int]) -> _Embedded:
    """The outcomes of `embedded` for the jobs this claim still owns; the rest is dropped,
    logged and counted (embedder_lease_lost_total)."""
    lost = len(claim.article_ids) - len(owned)
    if not lost:
        return embedded
    logger.warning(
        "lease lost: %s of %s claimed items of %s were requeued while this worker held them "
        "(not renewed for JOB_LEASE_S: paused or cut off); their results are not written",
        lost,
        len(claim.article_ids),
        info.name,
    )
    metrics.LEASE_LOST.labels(model=info.name).inc(lost)
    embedded.result.lease_lost += lost
    return replace(
        embedded,
        vectors=[v for v in embedded.vectors if v.article_id in owned],
        unchanged=[i for i in embedded.unchanged if i in owned],
        failures={i: f for i, f in embedded.failures.items() if i in owned},
        skipped={i: s for i, s in embedded.skipped.items() if i in owned},
        releases=[
            replace(r, ids=tuple(i for i in r.ids if i in owned))
            for r in embedded.releases
            if any(i in owned for i in r.ids)
        ],
    )


def _embed_work(
    deps: Deps,
    info: ModelInfo,
    work: list[_Work],
    failures: dict[int, tuple[str, str]],
) -> tuple[list[EmbeddingRow], list[_Release], bool, int]:
    """Call the provider for every planned batch (up to EMBED_REQUEST_CONCURRENCY at once).

    Returns (rows to write, items to give back for a later try, stop draining?, batches).
    """
    settings = deps.settings
    # Exact counts only where they decided truncation; estimates elsewhere (text.py).
    bounds = [w.prepared.token_estimate for w in work]
    # A model's own request limits (its row) can only lower the process's.
    max_items = min(settings.embed_batch_max, info.batch_max or settings.embed_batch_max)
    max_tokens = min(
        settings.embed_batch_max_tokens, info.batch_max_tokens or settings.embed_batch_max_tokens
    )
    plan = plan_batches(bounds, max_items, max_tokens)
    batches = [[work[i] for i in part] for part in plan]
    outcomes = _call_batches(deps, info, batches, [[bounds[i] for i in part] for part in plan])
    rows: list[EmbeddingRow] = []
    releases: list[_Release] = []
    stop = False
    for batch, outcome in zip(batches, outcomes, strict=True):
        ids = tuple(w.article.id for w in batch)
        if isinstance(outcome, AuthenticationFailed):
            if not stop:
                # A refused key or a key variable that is not set (MissingKeyEmbedder): the
                # message says which variable to fix.
                logger.error("no usable credentials for model %s: %s", info.name, outcome)
            stop = True
            releases.append(
                _release(info, ids, outcome, settings.embed_auth_backoff_s, count_attempt=False)
            )
        elif isinstance(outcome, RateLimited):
            # A rate limit is never a permanent failure: back to pending after the wait the
            # shared budget (or the provider's retry-after) asks for, no attempt counted.
            delay = max(outcome.retry_after_s or 0.0, 1.0)
            releases.append(_release(info, ids, outcome, delay, count_attempt=False))
        elif isinstance(outcome, TransientError):
            releases.append(_release(info, ids, outcome, float(settings.job_retry_delay_s)))
        elif isinstance(outcome, PermanentError):
            failures.update({i: (outcome.reason, str(outcome)) for i in ids})
        else:
            got, rejected = outcome
            again: list[int] = []  # inputs of a misindexed answer: released (bad_response)
            for offset, w in enumerate(batch):
                error = rejected.get(offset)
                if isinstance(error, TransientError):
                    again.append(w.article.id)
                    continue
                if error is not None:
                    failures[w.article.id] = (error.reason, str(error))
                    continue
                rows.append(
                    EmbeddingRow(
                        article_id=w.article.id,
                        published_at=w.article.published_at,
                        embedding=got[offset],
                        content_hash=w.content_hash,
                        token_count=w.prepared.token_bound,
                        is_new=w.article.stored_hash is None,
                    )
                )
            if again:
                error = next(e for e in rejected.values() if isinstance(e, TransientError))
                releases.append(
                    _release(info, tuple(again), error, float(settings.job_retry_delay_s))
                )
    return rows, releases, stop, len(plan)


_Outcome = tuple[dict[int, Any], dict[int, IngestError]] | TransientError | PermanentError


def _call_batches(
    deps: Deps, info: ModelInfo, batches: list[list[_Work]], tokens: list[list[int]]
) -> list[_Outcome]:
    """Each batch's vectors or the error that ended it; in parallel when there are several.

    At 100 ms per request a claim's two or three requests would otherwise wait in turn.
    Sequentially, an auth failure stops further calls (no request storm on a bad key).
    """
    embedder = deps.embedder(info)

    def call(i: int) -> _Outcome:
        metrics.BATCHES.labels(model=info.name).inc()
        metrics.BATCH_SIZE.observe(len(batches[i]))
        metrics.TOKENS.labels(model=info.name).inc(sum(tokens[i]))
        try:
            return embed_isolating(embedder, [w.prepared.text for w in batches[i]], tokens[i])
        except (TransientError, PermanentError) as exc:
            return exc

    if len(batches) > 1 and deps.settings.embed_request_concurrency > 1:
        return list(deps.request_pool().map(call, range(len(batches))))
    outcomes: list[_Outcome] = []
    for i in range(len(batches)):
        if outcomes and isinstance(outcomes[-1], AuthenticationFailed):
            outcomes.append(outcomes[-1])
            continue
        outcomes.append(call(i))
    return outcomes


def _release(
    info: ModelInfo,
    ids: tuple[int, ...],
    exc: Exception,
    delay_s: float,
    *,
    count_attempt: bool = True,
) -> _Release:
    logger.warning("releasing %s items of model %s for a later try: %s", len(ids), info.name, exc)
    return _Release(
        ids, getattr(exc, "reason", "error"), str(exc), delay_s, count_attempt=count_attempt
    )


def _count(model: str, result: DrainResult) -> None:
    metrics.ARTICLES_EMBEDDED.labels(model=model).inc(result.embedded)
    metrics.ARTICLES_UNCHANGED.labels(model=model).inc(result.unchanged)
    for reason, count in result.reasons.items():
        metrics.FAILURES.labels(model=model, reason=reason).inc(count)


def sweep(deps: Deps) -> tuple[int, int, list[str]]:
    """Recover from lost messages and dead workers: (requeued, failed, models to drain)."""
    with deps.engine.begin() as conn:
        requeued, failed = _requeue_stale(deps, conn)
        models = repository.models_with_ready_work(conn)
    return requeued, failed, models


def _requeue_stale(deps: Deps, conn: Connection, model: str | None = None) -> tuple[int, int]:
    """Take back claims whose lease was not renewed (of `model`, or all): (requeued, failed)."""
    settings = deps.settings
    stale = repository.requeue_stale(
        conn, settings.job_lease_s, settings.job_max_attempts, model=model
    )
    requeued = sum(r for r, _ in stale.values())
    failed = sum(f for _, f in stale.values())
    for name, (_, lost) in stale.items():
        if lost:
            metrics.FAILURES.labels(model=name, reason="lease_expired").inc(lost)
    if requeued or failed:
        logger.warning(
            "%s: %s in-flight items whose lease ran out requeued, %s failed",
            "sweep" if model is None else f"claim of {model}",
            requeued,
            failed,
        )
    return requeued, failed


def reconcile(deps: Deps, model: str | None = None) -> int:
    """Record recent articles with no vector that nobody asked for (lost messages); return count."""
    settings = deps.settings
    if settings.reconcile_window_hours <= 0:
        return 0
    info = deps.model(model)
    since = datetime.now(UTC) - timedelta(hours=settings.reconcile_window_hours)
    with deps.engine.begin() as conn:
        count = repository.record_unasked(conn, info.name, since, settings.reconcile_batch)
    if count:
        logger.warning(
            "reconcile: %s recent articles of %s had no vector and no job; queued", count, info.name
        )
    return count


def log_pool_stats(deps: Deps) -> None:
    stats = pool_stats(deps.engine)
    for state, value in (
        ("checked_out", stats.checked_out),
        ("idle", stats.idle),
        ("overflow", stats.overflow),
    ):
        metrics.POOL.labels(state=state).set(value)
    logger.debug("pool stats %s", stats.as_dict())  # also in metrics: not worth an INFO line


def is_db_transient(exc: BaseException) -> bool:
    """A database error worth retrying the task for (connection lost, pool exhausted).

    The vector upsert runs on the driver's cursor, so psycopg's own errors count too.
    """
    return isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.TimeoutError
        | sa_exc.DisconnectionError
        | psycopg.OperationalError,
    )
