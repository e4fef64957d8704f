"""Publish "embed these article ids" without importing Celery: the wire format, by hand.

This is the same message a Go or Node producer writes (docs/enqueue.md): a Celery
protocol-2 task message, JSON-serialised, LPUSHed onto the Redis list named after the
queue. Keeping it explicit here means the Python helper and the documented contract
cannot drift apart: the end-to-end tests publish through this code.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from worker import messages

TASK_EMBED_ARTICLES = messages.TASK_EMBED_ARTICLES
TASK_EMBED_ARTICLE = messages.TASK_EMBED_ARTICLE
TASK_DRAIN = "embeddings.drain"
# Sent by the broker transport in place of a value it could not read (worker/broker.py);
# the task records it in the dead-letter store. Producers never send it.
TASK_DEAD_LETTER = "embeddings.dead_letter"
QUEUE = "embeddings"
# Ids per message: big lists are split so no message is huge (a 100k-id list becomes 100).
DEFAULT_CHUNK = 1000
DEFAULT_EXPIRES_S = 24 * 3600


def task_message(
    task: str,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str = QUEUE,
    expires_s: float | None = DEFAULT_EXPIRES_S,
    task_id: str | None = None,
    argsrepr: str | None = None,
) -> dict[str, Any]:
    """A Celery protocol-2 message envelope as kombu's Redis transport stores it."""
    task_id = task_id or str(uuid.uuid4())
    kwargs = kwargs or {}
    body = json.dumps(
        [list(args), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    expires = (datetime.now(UTC) + timedelta(seconds=expires_s)).isoformat() if expires_s else None
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": expires,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr if argsrepr is not None else _argsrepr(args),
            "kwargsrepr": repr(kwargs),
            "origin": f"{os.getpid()}@{socket.gethostname()}",
            "ignore_result": False,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def _argsrepr(args: Sequence[Any]) -> str:
    """What Flower shows: short, even for a 1,000-id list."""
    if args and isinstance(args[0], list) and len(args[0]) > 8:
        ids = args[0]
        head = ", ".join(str(i) for i in ids[:5])
        rest = ", ".join(repr(a) for a in args[1:])
        return f"([{head}, … {len(ids)} ids]{', ' + rest if rest else ''})"
    return repr(tuple(args))


def dead_letter_message(raw: bytes, refused: messages.Refused, queue: str) -> dict[str, Any]:
    """The embeddings.dead_letter message that carries a value the broker could not read.

    Its one argument says what was refused and why; the value itself travels base64-encoded,
    capped at messages.PAYLOAD_MAX_BYTES (its original size beside it). It never expires.
    """
    letter = {
        "payload": base64.b64encode(messages.capped(raw)).decode(),
        "size": len(raw),
        "reason": refused.reason,
        "detail": messages.clean_text(refused.detail, 1000),
        "queue": messages.clean_text(queue),
        "task_name": messages.clean_text(refused.task_name),
        "task_id": messages.clean_text(refused.task_id),
    }
    return task_message(
        TASK_DEAD_LETTER,
        [letter],
        {},
        queue=QUEUE,
        expires_s=None,
        argsrepr=f"({refused.reason!r}, {len(raw)} bytes from {queue!r})",
    )


def chunks(ids: Iterable[int], size: int) -> Iterator[list[int]]:
    batch: list[int] = []
    for i in ids:
        batch.append(i)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def enqueue(
    article_ids: Iterable[int],
    model: str | None = None,
    *,
    redis_url: str | None = None,
    client: redis.Redis[bytes] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    queue: str = QUEUE,
) -> list[str]:
    """Publish embed_articles messages for these ids (split into chunks); return task ids."""
    if client is None:
        from worker.config import Settings

        client = redis.Redis.from_url(redis_url or Settings.from_env().redis_url)
    task_ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    for batch in chunks(article_ids, chunk_size):
        kwargs = {"model": model} if model else {}
        message = task_message(TASK_EMBED_ARTICLES, [batch], kwargs, queue=queue)
        pipe.lpush(queue, json.dumps(message))
        task_ids.append(message["headers"]["id"])
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return task_ids
