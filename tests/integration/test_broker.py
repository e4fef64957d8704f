"""The broker transport (worker/broker.py) against real Redis, without Celery: a value that
is not a readable message is replaced by an embeddings.dead_letter message carrying it, and
consuming goes on. (tests/e2e/test_dead_letters.py runs the same through a real worker.)"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from worker import broker, client

pytestmark = pytest.mark.redis

KNOWN = {client.TASK_EMBED_ARTICLES, client.TASK_DEAD_LETTER}


@pytest.fixture
def queue_name(redis_client: redis.Redis[bytes]) -> Iterator[str]:
    # Its own queue: a worker of another test session on the same Redis never takes it.
    name = f"dl-test-{uuid.uuid4().hex[:8]}"
    yield name
    redis_client.delete(name)


@pytest.fixture
def connection(redis_url: str, queue_name: str) -> Iterator[Connection]:
    before = broker._known_task
    broker.register(known_task=KNOWN.__contains__)
    conn = Connection(
        redis_url,
        transport="worker.broker:Transport",
        transport_options=broker.transport_options(
            task_queues=(queue_name,), dead_letter_queue=queue_name
        ),
    )
    yield conn
    conn.release()
    broker.register(known_task=before)


def good(queue: str, ids: list[int]) -> bytes:
    return json.dumps(
        client.task_message(client.TASK_EMBED_ARTICLES, [ids], {}, queue=queue)
    ).encode()


def garbage(queue: str) -> dict[str, bytes]:
    not_base64 = client.task_message(client.TASK_EMBED_ARTICLES, [[1]], {}, queue=queue)
    not_base64["body"] = "abc"
    no_properties = client.task_message(client.TASK_EMBED_ARTICLES, [[1]], {}, queue=queue)
    del no_properties["properties"]
    return {
        "not_json": b"}{ not json",
        "not_json-utf8": b"\xff\xfe\x00garbage",
        "not_envelope": b"[1, 2, 3]",
        "body_not_base64": json.dumps(not_base64).encode(),
        "bad_envelope": json.dumps(no_properties).encode(),
    }


def consume(connection: Connection, queue_name: str, expected: int) -> list[Any]:
    """Consume through the transport until `expected` messages arrived (or fail)."""
    got: list[Any] = []
    queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)

    def on_message(body: Any, message: Any) -> None:
        got.append((message.headers["task"], body))
        message.ack()

    with Consumer(connection, [queue], callbacks=[on_message], accept=["json"]):
        for _ in range(200):
            if len(got) >= expected:
                break
            try:
                connection.drain_events(timeout=0.2)
            except TimeoutError:
                continue
    return got


def test_garbage_between_messages_is_dead_lettered_and_consuming_goes_on(
    connection: Connection, queue_name: str, redis_client: redis.Redis[bytes]
) -> None:
    bad = garbage(queue_name)
    redis_client.lpush(queue_name, good(queue_name, [1, 2]))
    for value in bad.values():
        redis_client.lpush(queue_name, value)
    redis_client.lpush(queue_name, good(queue_name, [3]))

    got = consume(connection, queue_name, 2 + len(bad))

    tasks = [task for task, _ in got]
    assert tasks.count(client.TASK_EMBED_ARTICLES) == 2
    assert [body[0] for task, body in got if task == client.TASK_EMBED_ARTICLES] == [
        [[1, 2]],
        [[3]],
    ]
    letters = [body[0][0] for task, body in got if task == client.TASK_DEAD_LETTER]
    assert len(letters) == len(bad)
    by_reason = {letter["reason"]: letter for letter in letters}
    assert sorted(by_reason) == sorted({k.split("-")[0] for k in bad})
    kept = sorted(base64.b64decode(letter["payload"]) for letter in letters)
    assert kept == sorted(bad.values())  # the raw bytes, exactly
    assert all(letter["queue"] == queue_name for letter in letters)
    assert by_reason["body_not_base64"]["task_name"] == client.TASK_EMBED_ARTICLES
    assert redis_client.llen(queue_name) == 0


def test_basic_get_skips_a_dead_lettered_value(
    connection: Connection, queue_name: str, redis_client: redis.Redis[bytes]
) -> None:
    redis_client.lpush(queue_name, b"not json")
    queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
    bound = queue(connection.default_channel)

    assert bound.get() is None  # dead-lettered, nothing to hand out
    message = bound.get(accept=["json"])  # the dead letter that replaced it
    assert message is not None
    assert message.headers["task"] == client.TASK_DEAD_LETTER
    assert message.decode()[0][0]["reason"] == "not_json"
    message.ack()


def test_a_broadcast_that_cannot_be_delivered_is_dropped(connection: Connection) -> None:
    channel = connection.default_channel
    assert channel._deliver_fanout_message(["not", "a", "message"], "no-such-exchange") is False


def test_the_app_registers_the_transport_for_redis_urls() -> None:
    import tasks.embeddings  # noqa: F401 (what the worker loads at start: the task registry)
    from tasks.app import app

    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, broker.Transport)
        assert conn.as_uri().startswith("redis://")  # what Flower's Broker page needs
    options = app.conf.broker_transport_options
    assert options[broker.OPTION_TASK_QUEUES] == ["embeddings", "maintenance"]
    assert options[broker.OPTION_DEAD_LETTER_QUEUE] == "embeddings"
    # Workers report their transport options in `inspect stats` (Flower's Workers page):
    # every value must be JSON.
    json.dumps(options)
    assert broker._known_task is not None
    assert broker._known_task("embeddings.embed_articles")
    assert not broker._known_task("embeddings.nope")
