"""The enqueue contract as code (worker/messages.py): every value on a queue is either a
message Celery can run or refused with a reason, and article ids are parsed strictly."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tests.conftest import REPO
from worker import client, errors, messages
from worker.messages import Refused, read_message


def envelope(task: str = "embeddings.embed_articles", args: Any = None, **kwargs: Any) -> dict:
    return client.task_message(task, [[1, 2]] if args is None else args, kwargs)


def encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def with_body(body: bytes) -> dict:
    message = envelope()
    message["body"] = base64.b64encode(body).decode()
    return message


def mutated(change: Any) -> dict:
    message = envelope()
    change(message)
    return message


KNOWN = {"embeddings.embed_articles", "embeddings.embed_article", "embeddings.drain"}

REFUSED = [
    pytest.param(b"not json at all", "not_json", id="not-json"),
    pytest.param(b"\xff\xfe{", "not_json", id="not-utf8"),
    pytest.param(b"", "not_json", id="empty"),
    pytest.param(b"[" * 100_000, "not_json", id="nested-too-deep"),
    pytest.param([1, 2, 3], "not_envelope", id="json-list"),
    pytest.param("a string", "not_envelope", id="json-string"),
    pytest.param({"ids": [1, 2]}, "not_envelope", id="json-object"),
    pytest.param(mutated(lambda m: m.pop("properties")), "bad_envelope", id="no-properties"),
    pytest.param(
        mutated(lambda m: m.__setitem__("properties", [])), "bad_envelope", id="props-list"
    ),
    pytest.param(
        mutated(lambda m: m["properties"].pop("delivery_tag")), "bad_envelope", id="no-tag"
    ),
    pytest.param(
        mutated(lambda m: m["properties"].__setitem__("delivery_tag", [1])),
        "bad_envelope",
        id="tag-list",
    ),
    pytest.param(
        mutated(lambda m: m["properties"].pop("delivery_info")), "bad_envelope", id="no-info"
    ),
    pytest.param(
        mutated(lambda m: m["properties"]["delivery_info"].pop("exchange")),
        "bad_envelope",
        id="no-exchange",
    ),
    pytest.param(
        mutated(lambda m: m["properties"].__setitem__("body_encoding", "rot13")),
        "bad_envelope",
        id="unknown-body-encoding",
    ),
    pytest.param(
        mutated(lambda m: m["properties"].__setitem__("priority", "high")),
        "bad_envelope",
        id="priority-text",
    ),
    pytest.param(mutated(lambda m: m.__setitem__("body", 5)), "bad_envelope", id="body-int"),
    pytest.param(mutated(lambda m: m.__setitem__("body", None)), "bad_envelope", id="body-null"),
    pytest.param(mutated(lambda m: m.pop("headers")), "bad_envelope", id="no-headers"),
    pytest.param(mutated(lambda m: m["headers"].pop("task")), "bad_envelope", id="no-task"),
    pytest.param(mutated(lambda m: m["headers"].pop("id")), "bad_envelope", id="no-id"),
    pytest.param(mutated(lambda m: m["headers"].__setitem__("id", 5)), "bad_envelope", id="id-int"),
    pytest.param(
        mutated(lambda m: m["headers"].__setitem__("expires", "yesterday")),
        "bad_envelope",
        id="expires-text",
    ),
    pytest.param(
        mutated(lambda m: m["headers"].__setitem__("eta", 5)), "bad_envelope", id="eta-int"
    ),
    pytest.param(
        mutated(lambda m: m["headers"].__setitem__("timelimit", "x")),
        "bad_envelope",
        id="timelimit-text",
    ),
    pytest.param(
        mutated(lambda m: m["headers"].__setitem__("retries", "x")),
        "bad_envelope",
        id="retries-text",
    ),
    pytest.param(
        mutated(lambda m: m["headers"].__setitem__("origin", 5)), "bad_envelope", id="origin-int"
    ),
    pytest.param(mutated(lambda m: m.__setitem__("body", "abc")), "body_not_base64", id="padding"),
    pytest.param(
        mutated(lambda m: m.__setitem__("content-type", "application/x-python-serialize")),
        "unsupported_content",
        id="pickle",
    ),
    pytest.param(
        mutated(lambda m: m.__setitem__("content-encoding", "latin-1")),
        "unsupported_content",
        id="latin-1",
    ),
    pytest.param(with_body(b"nope"), "bad_body", id="body-not-json"),
    pytest.param(with_body(b'{"a": 1}'), "bad_body", id="body-object"),
    pytest.param(with_body(b"[[1]]"), "bad_body", id="body-short"),
    pytest.param(with_body(b"[{}, {}, {}]"), "bad_body", id="args-object"),
    pytest.param(with_body(b"[[], [], {}]"), "bad_body", id="kwargs-list"),
    pytest.param(with_body(b"\xff"), "bad_body", id="body-not-utf8"),
    pytest.param(envelope("embeddings.nope"), "unknown_task", id="unknown-task"),
    pytest.param(envelope(args=[]), "bad_arguments", id="no-arguments"),
    pytest.param(envelope(args=[[1], "m", 3]), "bad_arguments", id="three-arguments"),
    pytest.param(envelope(args=[[1], "m"], model="x"), "bad_arguments", id="model-twice"),
    pytest.param(envelope(args=[[1]], article_ids=[2]), "bad_arguments", id="ids-twice"),
    pytest.param(envelope(args=[[1]], colour="red"), "bad_arguments", id="unknown-keyword"),
    pytest.param(
        envelope("embeddings.embed_article", args=[], article_ids=[2]),
        "bad_arguments",
        id="embed-article-wrong-keyword",
    ),
]


@pytest.mark.parametrize(("value", "reason"), REFUSED)
def test_every_unreadable_value_is_refused_with_its_reason(value: Any, reason: str) -> None:
    with pytest.raises(Refused) as info:
        read_message(encode(value), known_task=KNOWN.__contains__)
    assert info.value.reason == reason
    assert info.value.reason in errors.DEAD_LETTER_REASONS
    assert len(info.value.detail) < 400


def test_a_refusal_names_the_task_when_it_could_be_read() -> None:
    message = mutated(lambda m: m.__setitem__("body", "abc"))
    with pytest.raises(Refused) as info:
        read_message(encode(message))
    assert (info.value.task_name, info.value.task_id) == (
        "embeddings.embed_articles",
        message["headers"]["id"],
    )


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(envelope(), id="embed_articles"),
        pytest.param(envelope(args=[[1], "mini-384"]), id="model-positional"),
        pytest.param(envelope(args=[], article_ids=[1], model=None), id="keywords"),
        pytest.param(envelope("embeddings.embed_article", args=[7]), id="embed_article"),
        pytest.param(envelope(args=[["12abc", -1]]), id="bad-ids-are-intake's-business"),
        pytest.param(envelope(args=[[1], 5]), id="bad-model-is-intake's-business"),
        pytest.param(envelope("embeddings.drain", args=["m"]), id="drain"),
        pytest.param(
            mutated(lambda m: m["headers"].update(eta="2026-12-02T10:00:00+00:00", retries=3)),
            id="a-retry",
        ),
        pytest.param(
            mutated(lambda m: m["headers"].update(timelimit=[600, 570.5], redelivered=True)),
            id="limits-and-extra-headers",
        ),
        pytest.param(with_body(b"[[[1]], {}, null]"), id="embed-null"),
    ],
)
def test_a_message_celery_can_run_passes(message: dict) -> None:
    read = read_message(encode(message), known_task=KNOWN.__contains__)
    assert read.envelope == message
    assert read.task_name == message["headers"]["task"]


def test_what_the_producers_and_celery_publish_passes() -> None:
    for task, args in (
        (client.TASK_EMBED_ARTICLES, [list(range(1, 1001))]),
        (client.TASK_DRAIN, ["text-embedding-3-small"]),
        (client.TASK_DEAD_LETTER, [{"payload": "", "size": 0, "reason": "not_json"}]),
    ):
        read_message(encode(client.task_message(task, args, {})))
    refused = Refused("not_json", "x", task_name=None, task_id=None)
    dead = client.dead_letter_message(b"\xff" * 100_000, refused, "embeddings")
    read = read_message(encode(dead))
    ((letter,), kwargs) = read.args, read.kwargs
    assert kwargs == {}
    assert letter["size"] == 100_000
    assert len(base64.b64decode(letter["payload"])) == messages.PAYLOAD_MAX_BYTES
    assert len(dead["headers"]["argsrepr"]) < 80  # Flower shows it


def test_a_reply_queue_only_needs_what_kombu_reads() -> None:
    reply = mutated(lambda m: (m.pop("headers"), m.__setitem__("content-type", "x/y")))
    read_message(encode(reply), is_task_queue=False)
    with pytest.raises(Refused):
        read_message(encode(reply))


@pytest.mark.parametrize(
    "value",
    [
        "880_011",
        " 12 ",
        "12 ",
        "12\n",
        "١٢",  # Arabic-Indic digits: int() reads 12
        "１２",  # fullwidth digits
        "+5",
        "-5",
        "0",
        "000",
        "",
        "0x10",
        "1e3",
        "1.0",
        str(2**63),
        "9" * 5000,  # longer than int() converts by default
        0,
        -1,
        2**63,
        1.0,
        True,
        False,
        None,
        [1],
        {"id": 1},
    ],
)
def test_an_id_is_plain_digits_or_a_json_integer_in_range(value: Any) -> None:
    assert messages.parse_id(value) is None
    assert messages.parse_ids([5, value]) == ([5], [value])


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("1", 1), ("007", 7), (2**63 - 1, 2**63 - 1), (str(2**63 - 1), 2**63 - 1)],
)
def test_valid_ids(value: Any, expected: int) -> None:
    assert messages.parse_id(value) == expected


@pytest.mark.parametrize(
    "model", [5, 1.5, True, ["m"], {"name": "m"}, "a\x00b", "\ud800", "m" * 201]
)
def test_a_model_must_be_text_postgresql_can_look_up(model: Any) -> None:
    with pytest.raises(Refused) as info:
        messages.parse_model(model)
    assert info.value.reason == "invalid_model"


def test_no_model_or_an_empty_one_means_the_default() -> None:
    assert messages.parse_model(None) is None
    assert messages.parse_model("") is None
    assert messages.parse_model("mini-384") == "mini-384"


def test_the_reasons_the_code_refuses_with_are_known() -> None:
    """Every Refused("reason", …) written in the code is a dead-letter reason."""
    written: set[str] = set()
    for path in ("worker/messages.py", "worker/pipeline.py", "worker/broker.py"):
        source = (REPO / path).read_text(encoding="utf-8")
        written |= set(re.findall(r'(?:Refused|refuse)\(\s*"([a-z_]+)"', source))
    assert {"not_json", "invalid_ids", "unknown_model", "undeliverable"} <= written
    assert written <= set(errors.DEAD_LETTER_REASONS)
