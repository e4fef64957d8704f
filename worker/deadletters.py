"""Dead letters for the operator: what the workers refused (table dead_letters, migration
0007), shown, re-driven and purged by `embedder dead-letters`.

Recording happens where a message is refused: intake (worker.pipeline.intake) for bad ids
and models, the dead-letter task for values the broker could not read
(worker.pipeline.record_unreadable). Replay re-sends article ids through the same contract
a producer uses (worker.client.enqueue), so a replayed message is checked again.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import redis

from worker import client, messages, repository
from worker.deps import Deps
from worker.errors import UnknownModel
from worker.repository import DeadLetter


class NotReplayable(Exception):
    """A dead letter that cannot be re-sent as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Replayed:
    letter_id: int
    ids: int
    model: str
    task_ids: list[str]


def replay(
    deps: Deps,
    letter_id: int,
    *,
    ids: list[int] | None = None,
    model: str | None = None,
    redis_client: redis.Redis[bytes] | None = None,
) -> Replayed:
    """Re-send a dead letter's article ids and delete it, or NotReplayable (kept as it is).

    Without `ids` the stored payload must now parse as an embed request (a message refused
    for an unregistered model, once the model is added); with `ids` those ids are sent
    instead (a message whose ids were malformed, fixed by hand). `model` overrides the
    model the message named. The row is deleted in the transaction that sends it (and kept
    when anything fails), so a dead letter is replayed once.
    """
    with deps.engine.begin() as conn:
        letter = repository.take_dead_letter(conn, letter_id)
        if letter is None:
            raise NotReplayable(f"there is no dead letter {letter_id}")
        if ids is None:
            ids, sent_model = _request_of(letter)
        else:
            try:
                _, sent_model = _request_of(letter, need_ids=False)
            except NotReplayable:
                sent_model = None
        try:
            info = deps.model(model if model is not None else sent_model)
        except UnknownModel as exc:
            raise NotReplayable(f"{exc}; or replay with --model NAME") from None
        redis_client = redis_client or redis.Redis.from_url(deps.settings.redis_url)
        task_ids = client.enqueue(ids, info.name, client=redis_client)
    return Replayed(letter_id, len(ids), info.name, task_ids)


def _request_of(letter: DeadLetter, *, need_ids: bool = True) -> tuple[list[int], str | None]:
    """(ids, model) of the embed request in a dead letter's payload, or NotReplayable."""
    fix = "fix it and replay with --ids ID…"
    payload = letter.payload or b""
    if letter.payload_size > len(payload):
        raise NotReplayable(
            f"only the first {len(payload)} of its {letter.payload_size} bytes were kept; {fix}"
        )
    try:
        message = messages.read_message(
            payload, known_task=lambda name: name in messages.EMBED_TASKS
        )
        article_ids, model = messages.embed_request(message)
        name = messages.parse_model(model)
        ids, bad = messages.parse_ids(article_ids) if need_ids else ([], [])
    except messages.Refused as exc:
        raise NotReplayable(
            f"it still does not parse ({exc.reason}: {exc.detail}); {fix}"
        ) from None
    if bad:
        detail = messages.refused_ids_detail(bad, len(ids) + len(bad))
        raise NotReplayable(f"it still does not parse ({detail}); {fix}")
    if need_ids and not ids:
        raise NotReplayable(f"it names no article ids; {fix}")
    return ids, name


def describe(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter for people (and --json): its fields, the payload as text when it is text,
    and the decoded body when the payload is a message with a base64 body."""
    payload = letter.payload or b""
    shown: dict[str, Any] = {
        "id": letter.id,
        "received_at": letter.received_at.isoformat(),
        "reason": letter.reason,
        "detail": letter.detail,
        "queue": letter.queue,
        "task_name": letter.task_name,
        "task_id": letter.task_id,
        "payload_size": letter.payload_size,
        "payload_kept": len(payload),
    }
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        shown["payload_base64"] = base64.b64encode(payload).decode()
        return shown
    shown["payload"] = text
    try:
        envelope = json.loads(text)
        body = base64.b64decode(envelope["body"], validate=True).decode("utf-8")
        shown["body"] = json.loads(body)
    except (ValueError, TypeError, KeyError, binascii.Error, RecursionError):
        pass
    return shown
