"""No message can take a worker down (a real worker, real Redis and PostgreSQL): raw garbage
pushed between valid messages is dead-lettered with its reason while the worker keeps
consuming, and at the end every article sent is embedded or refused, none twice."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.conftest import MODEL, fetch
from tests.e2e.conftest import StartWorker, wait_until
from tests.fakes.openai_server import FakeOpenAI
from worker.client import TASK_EMBED_ARTICLES, enqueue, task_message
from worker.deps import Deps

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def embedded(deps: Deps) -> list[int]:
    rows = fetch(deps, "SELECT article_id FROM article_embeddings WHERE model = :m", m=MODEL)
    return [r[0] for r in rows]


def dead_letters(deps: Deps) -> list[Any]:
    return fetch(deps, "SELECT * FROM dead_letters ORDER BY id")


def message(args: list[Any], kwargs: dict[str, Any] | None = None, **change: Any) -> bytes:
    """An embed_articles message as a producer writes it, with fields replaced or removed."""
    envelope = task_message(TASK_EMBED_ARTICLES, args, kwargs or {})
    for key, value in change.items():
        if value is None:
            envelope.pop(key)
        else:
            envelope[key] = value
    return json.dumps(envelope).encode()


def garbage() -> dict[bytes, str]:
    """Raw values a producer bug (or anyone with Redis access) can push, and their reason."""
    not_a_list = base64.b64encode(b'{"article_ids": [1, 2]}').decode()
    return {
        b"}{ this is not json": "not_json",
        b"\xff\xfe\x00 not even text": "not_json",
        b'{"article_ids": [1, 2], "model": null}': "not_envelope",
        b"[1, 2, 3]": "not_envelope",
        message([[1]], body="not base64!"): "body_not_base64",
        message([[1]], properties=None): "bad_envelope",  # an envelope missing fields
        message([[1]], headers={"task": TASK_EMBED_ARTICLES}): "bad_envelope",
        message([[1]], body=not_a_list): "bad_body",  # a body that is not a list
        message([[1]], **{"content-type": "application/x-python-serialize"}): (
            "unsupported_content"
        ),
        json.dumps(task_message("embeddings.no_such_task", [[1]], {})).encode(): "unknown_task",
        message([[1], "m", "extra"]): "bad_arguments",
    }


def test_garbage_between_messages_is_dead_lettered_and_the_worker_keeps_consuming(
    start_worker: StartWorker,
    make_deps: Callable[..., Deps],
    make_article: Callable[..., int],
    fake_openai: FakeOpenAI,
    redis_client: redis.Redis[bytes],
) -> None:
    deps = make_deps()
    worker = start_worker(concurrency=2)
    bad = garbage()
    valid = [[make_article() for _ in range(4)] for _ in range(len(bad) + 1)]
    partly = [make_article(), make_article()]  # sent with refused ids beside them
    refused_ids = ["880_011", " 12 ", "١٢", "+5", -1]
    not_a_string = make_article()  # sent with model=5: refused whole
    unknown = make_article()  # sent for an unregistered model: refused whole

    # Oldest first (producers LPUSH, the worker takes from the other end): valid messages
    # with garbage between them, then the partly bad ones.
    for ids, raw in zip(valid, [*bad, None], strict=True):
        enqueue(ids, client=redis_client)
        if raw is not None:
            redis_client.lpush("embeddings", raw)
    redis_client.lpush("embeddings", message([[partly[0], *refused_ids, str(partly[1])]]))
    redis_client.lpush("embeddings", message([[not_a_string]], {"model": 5}))
    redis_client.lpush("embeddings", message([[unknown]], {"model": "no-such-model"}))

    expected_embedded = sorted([i for ids in valid for i in ids] + partly)
    wait_until(
        lambda: sorted(embedded(deps)) == expected_embedded, 60, what="every valid id embedded"
    )
    wait_until(lambda: len(dead_letters(deps)) == len(bad) + 3, 30, what="every dead letter")

    assert worker.is_alive() and worker.ping()
    letters = dead_letters(deps)
    reasons = Counter(d.reason for d in letters)
    assert reasons == Counter(bad.values()) + Counter(
        ["invalid_ids", "invalid_model", "unknown_model"]
    )
    # Unreadable values are kept byte for byte, with where they came from.
    unreadable = {bytes(d.payload): d for d in letters if d.reason in set(bad.values())}
    assert sorted(unreadable) == sorted(bad)
    assert {(d.queue, d.payload_size) for d in unreadable.values()} == {
        ("embeddings", len(raw)) for raw in bad
    }
    assert unreadable[next(r for r, why in bad.items() if why == "body_not_base64")].task_name == (
        TASK_EMBED_ARTICLES
    )
    # The refused part of the partly bad message: its raw values, not the valid ids.
    (part,) = [d for d in letters if d.reason == "invalid_ids"]
    body = json.loads(base64.b64decode(json.loads(part.payload)["body"]))
    assert body[0] == [refused_ids]
    assert part.task_name == TASK_EMBED_ARTICLES and part.queue == "embeddings"

    # Counted: every article sent is embedded, or refused with a reason; none twice.
    sent = len(expected_embedded) + len(refused_ids) + 2
    refused = len(refused_ids) + 2  # the invalid ids, plus the two refused whole
    vectors = embedded(deps)
    assert len(vectors) + refused == sent
    assert len(vectors) == len(set(vectors))
    assert fetch(deps, "SELECT count(*) FROM embedding_jobs")[0][0] == 0
    # Nothing left behind in Redis: refused messages are acked, not waiting for redelivery.
    wait_until(lambda: redis_client.hlen("unacked") == 0, 20, what="no unacked messages")
    assert redis_client.llen("embeddings") == 0
    assert "Unrecoverable error" not in worker.log()
