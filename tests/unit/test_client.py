"""worker.client: the hand-written Celery protocol-2 message (the cross-language contract)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from worker.client import QUEUE, TASK_EMBED_ARTICLES, chunks, task_message


def decode_body(message: dict) -> list:
    return json.loads(base64.b64decode(message["body"]))


def test_task_message_is_a_celery_protocol_2_envelope():
    message = task_message(TASK_EMBED_ARTICLES, [[1, 2, 3]], {"model": "mini-384"}, task_id="t-1")

    json.dumps(message)  # what LPUSH stores: must be plain JSON
    assert message["content-type"] == "application/json"
    assert message["content-encoding"] == "utf-8"
    headers = message["headers"]
    assert headers["task"] == "embeddings.embed_articles"
    assert headers["id"] == headers["root_id"] == "t-1"
    assert headers["lang"] == "py"
    assert headers["retries"] == 0
    assert headers["parent_id"] is None and headers["group"] is None
    assert headers["argsrepr"] == "([1, 2, 3],)"
    assert headers["kwargsrepr"] == "{'model': 'mini-384'}"
    properties = message["properties"]
    assert properties["correlation_id"] == "t-1"
    assert properties["body_encoding"] == "base64"
    assert properties["delivery_mode"] == 2
    assert properties["delivery_info"] == {"exchange": "", "routing_key": QUEUE}
    assert decode_body(message) == [
        [[1, 2, 3]],
        {"model": "mini-384"},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def test_task_message_defaults_no_kwargs_a_fresh_id_and_an_expiry():
    before = datetime.now(UTC)
    first = task_message(TASK_EMBED_ARTICLES, [[7]])
    second = task_message(TASK_EMBED_ARTICLES, [[7]])

    assert decode_body(first)[:2] == [[[7]], {}]
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    expires = datetime.fromisoformat(first["headers"]["expires"])
    assert before + timedelta(hours=23) < expires <= datetime.now(UTC) + timedelta(hours=24)


def test_task_message_without_expiry_and_on_another_queue():
    message = task_message(TASK_EMBED_ARTICLES, [[1]], queue="other", expires_s=None)
    assert message["headers"]["expires"] is None
    assert message["properties"]["delivery_info"]["routing_key"] == "other"


def test_argsrepr_stays_short_for_a_thousand_ids():
    ids = list(range(10_001, 11_001))
    message = task_message(TASK_EMBED_ARTICLES, [ids], {"model": "m"})

    argsrepr = message["headers"]["argsrepr"]
    assert argsrepr == "([10001, 10002, 10003, 10004, 10005, … 1000 ids])"
    assert len(argsrepr) < 100
    assert decode_body(message)[0] == [ids]  # the body keeps every id


def test_argsrepr_keeps_further_arguments():
    argsrepr = task_message(TASK_EMBED_ARTICLES, [list(range(20)), "m"])["headers"]["argsrepr"]
    assert argsrepr == "([0, 1, 2, 3, 4, … 20 ids], 'm')"


@pytest.mark.parametrize(
    ("ids", "size", "expected"),
    [
        ([], 3, []),
        ([1], 3, [[1]]),
        ([1, 2, 3], 3, [[1, 2, 3]]),
        ([1, 2, 3, 4], 3, [[1, 2, 3], [4]]),
        ([1, 2, 3, 4, 5, 6], 2, [[1, 2], [3, 4], [5, 6]]),
        ([1, 2, 3], 1, [[1], [2], [3]]),
    ],
)
def test_chunks_splits_in_order_without_loss(ids, size, expected):
    assert list(chunks(ids, size)) == expected


def test_chunks_streams_a_generator_of_100k_ids_into_bounded_lists():
    produced = chunks((i for i in range(1, 100_001)), 1000)
    sizes = []
    total = 0
    for batch in produced:
        sizes.append(len(batch))
        total += sum(batch)
    assert sizes == [1000] * 100
    assert total == sum(range(1, 100_001))
