"""The enqueue contract as code: what a value on a queue must be before Celery sees it, and
what an embed request's arguments must be (docs/enqueue.md).

Pure: no broker, no database. `read_message` is what the broker transport (worker/broker.py)
runs on every value it pops, `parse_ids` and `parse_model` what intake runs on a task's
arguments, and `embed_request` what `embedder dead-letters replay` runs on a stored payload.
Whatever they refuse is raised as `Refused`, whose `reason` is the dead letter's reason
(every one is in metrics.DEAD_LETTER_REASONS).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.errors import InvalidPayload

# PostgreSQL bigint, positive.
MAX_ARTICLE_ID = 2**63 - 1
# A dead letter keeps at most this much of the refused value; its original size is recorded.
PAYLOAD_MAX_BYTES = 64 * 1024

TASK_EMBED_ARTICLES = "embeddings.embed_articles"
TASK_EMBED_ARTICLE = "embeddings.embed_article"
EMBED_TASKS = (TASK_EMBED_ARTICLES, TASK_EMBED_ARTICLE)

# Plain decimal digits, ASCII only: int() would also take "880_011", " 12 ", "+5" and
# "١٢" (Arabic-Indic digits), none of which is an article id.
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_ENVELOPE_KEYS = ("body", "headers", "properties", "content-type", "content-encoding")
# Header fields Celery's worker reads, with the JSON types it can take (None = null).
_OPTIONAL_TEXT_HEADERS = (
    "lang",
    "shadow",
    "group",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
)


class Refused(InvalidPayload):
    """A value or argument the contract refuses; `reason` is its dead-letter reason."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        task_name: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.task_name = task_name
        self.task_id = task_id


@dataclass(frozen=True)
class Message:
    """A value that passed `read_message`: the envelope and, for a task, its decoded body."""

    envelope: dict[str, Any]
    task_name: str | None = None
    task_id: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None


def read_message(
    raw: bytes,
    *,
    is_task_queue: bool = True,
    known_task: Callable[[str], bool] | None = None,
) -> Message:
    """The message in `raw`, or Refused saying what is wrong with it.

    Every value must be what kombu's Redis transport can take apart without an exception:
    a JSON object with `properties` (a `delivery_tag`, a `delivery_info` naming exchange and
    routing key) and a body in a known encoding. On a task queue it must also be what
    Celery's worker runs: a protocol-2 JSON task message of a known task whose body is
    `[args, kwargs, embed]`, and for an embed task arguments that fit its signature.
    """
    try:
        envelope = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Refused("not_json", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise Refused("not_json", f"not JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise Refused("not_json", "not JSON: nested too deeply") from None
    if not isinstance(envelope, dict) or not any(k in envelope for k in _ENVELOPE_KEYS):
        what = type(envelope).__name__ if not isinstance(envelope, dict) else "object"
        raise Refused(
            "not_envelope", f"JSON {what} without body, headers or properties: not a message"
        )
    headers = envelope.get("headers")
    task_name = _text_or_none(headers.get("task")) if isinstance(headers, dict) else None
    task_id = _text_or_none(headers.get("id")) if isinstance(headers, dict) else None

    def refuse(reason: str, detail: str) -> Refused:
        return Refused(reason, detail, task_name=task_name, task_id=task_id)

    body = _kombu_fields(envelope, refuse)
    if not is_task_queue:
        return Message(envelope)
    content_type = envelope.get("content-type")
    encoding = envelope.get("content-encoding")
    if content_type != "application/json" or str(encoding).lower() != "utf-8":
        raise refuse(
            "unsupported_content",
            f"content-type {content_type!r} / content-encoding {encoding!r}: "
            "only application/json in utf-8 is accepted",
        )
    if not isinstance(headers, dict):
        raise refuse("bad_envelope", "headers must be an object (Celery protocol 2)")
    _task_headers(headers, refuse)
    assert task_name is not None and task_id is not None  # checked by _task_headers
    if known_task is not None and not known_task(task_name):
        raise refuse("unknown_task", f"no task named {task_name!r} is registered")
    try:
        decoded = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise refuse("bad_body", "the body is not UTF-8 JSON") from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or not isinstance(decoded[0], list)
        or not isinstance(decoded[1], dict)
        or not (decoded[2] is None or isinstance(decoded[2], dict))
    ):
        raise refuse(
            "bad_body",
            f"the body must be [args (list), kwargs (object), embed (object)], "
            f"got {_short(decoded)}",
        )
    args, kwargs = decoded[0], decoded[1]
    if task_name in EMBED_TASKS:
        _embed_signature(task_name, args, kwargs, refuse)
    return Message(envelope, task_name, task_id, args, kwargs)


def _kombu_fields(envelope: dict[str, Any], refuse: Callable[[str, str], Refused]) -> bytes:
    """Check what kombu's Redis transport reads; return the decoded body."""
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        raise refuse("bad_envelope", "properties must be an object")
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        raise refuse("bad_envelope", "properties.delivery_tag must be a non-empty string")
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        raise refuse("bad_envelope", "properties.delivery_info must be an object")
    for key in ("exchange", "routing_key"):
        if not isinstance(info.get(key), str):
            raise refuse("bad_envelope", f"properties.delivery_info.{key} must be a string")
    priority = properties.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise refuse("bad_envelope", "properties.priority must be an integer from 0 to 255")
    headers = envelope.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise refuse("bad_envelope", "headers must be an object")
    for key in ("content-type", "content-encoding"):
        if envelope.get(key) is not None and not isinstance(envelope.get(key), str):
            raise refuse("bad_envelope", f"{key} must be a string")
    body = envelope.get("body")
    body_encoding = properties.get("body_encoding")
    if body_encoding == "base64":
        if not isinstance(body, str):
            raise refuse("bad_envelope", "body must be a base64 string")
        try:
            # What kombu's codec does (it discards characters outside the alphabet).
            return base64.b64decode(body.encode("ascii", "replace"))
        except (binascii.Error, ValueError) as exc:
            raise refuse("body_not_base64", f"body is not base64: {exc}") from None
    if body_encoding is None or str(body_encoding).lower() == "utf-8":
        if body is not None and not isinstance(body, str):
            raise refuse("bad_envelope", "body must be a string")
        return (body or "").encode("utf-8", "surrogatepass")
    raise refuse(
        "bad_envelope", f"properties.body_encoding {_short(body_encoding)}: only base64 is known"
    )


def _task_headers(headers: dict[str, Any], refuse: Callable[[str, str], Refused]) -> None:
    """Check the protocol-2 headers Celery's worker reads, with the types it can take."""
    for key in ("task", "id"):
        if not isinstance(headers.get(key), str) or not headers[key]:
            raise refuse("bad_envelope", f"headers.{key} must be a non-empty string")
    for key in _OPTIONAL_TEXT_HEADERS:
        if headers.get(key) is not None and not isinstance(headers[key], str):
            raise refuse("bad_envelope", f"headers.{key} must be a string or null")
    for key in ("eta", "expires"):
        value = headers.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise refuse("bad_envelope", f"headers.{key} must be an ISO 8601 string or null")
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise refuse(
                "bad_envelope", f"headers.{key} {_short(value)} is not an ISO 8601 time"
            ) from None
    for key in ("retries", "group_index"):
        value = headers.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise refuse("bad_envelope", f"headers.{key} must be an integer or null")
    if headers.get("ignore_result") is not None and not isinstance(headers["ignore_result"], bool):
        raise refuse("bad_envelope", "headers.ignore_result must be true, false or null")
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list)
        and len(limits) == 2
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in limits
        )
    ):
        raise refuse("bad_envelope", "headers.timelimit must be [hard, soft] (numbers or null)")


def _embed_signature(
    task_name: str, args: list[Any], kwargs: dict[str, Any], refuse: Callable[[str, str], Refused]
) -> None:
    """embed_articles(article_ids, model=None) / embed_article(article_id, model=None)."""
    first = "article_ids" if task_name == TASK_EMBED_ARTICLES else "article_id"
    if (
        set(kwargs) - {first, "model"}
        or len(args) > 2
        or (args and first in kwargs)
        or (len(args) == 2 and "model" in kwargs)
        or (not args and first not in kwargs)
    ):
        raise refuse(
            "bad_arguments",
            f"{task_name}({first}, model=None) cannot be called with "
            f"{len(args)} positional arguments and keywords {sorted(kwargs)}",
        )


def embed_request(message: Message) -> tuple[Any, Any]:
    """(article ids as sent, model as sent) of an embed task message that read_message passed."""
    if message.task_name not in EMBED_TASKS or message.args is None or message.kwargs is None:
        raise Refused("unknown_task", f"{message.task_name!r} is not an embed task")
    first = "article_ids" if message.task_name == TASK_EMBED_ARTICLES else "article_id"
    values = [*message.args, None][:2]
    ids = message.kwargs.get(first, values[0])
    model = message.kwargs.get("model", values[1])
    return ([ids] if message.task_name == TASK_EMBED_ARTICLE else ids), model


def parse_id(value: Any) -> int | None:
    """The article id in `value`, or None: a JSON integer or a string of plain decimal digits
    (ASCII 0-9 only: no sign, space, underscore or other script's digits), 1 to 2^63-1."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 1 <= value <= MAX_ARTICLE_ID else None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        digits = value.lstrip("0")
        if not digits or len(digits) > len(str(MAX_ARTICLE_ID)):
            return None
        number = int(digits)
        return number if number <= MAX_ARTICLE_ID else None
    return None


def parse_ids(article_ids: Any) -> tuple[list[int], list[Any]]:
    """(valid ids in order, refused values as sent) of a payload's article ids.

    A single id (an integer or a string) counts as a list of one. Anything else that is not
    a list is refused whole (Refused, `invalid_ids`).
    """
    if isinstance(article_ids, int | str) and not isinstance(article_ids, bool):
        article_ids = [article_ids]
    if not isinstance(article_ids, list | tuple):
        raise Refused(
            "invalid_ids", f"article_ids must be a list of ids, got {type(article_ids).__name__}"
        )
    ids: list[int] = []
    bad: list[Any] = []
    for value in article_ids:
        number = parse_id(value)
        if number is None:
            bad.append(value)
        else:
            ids.append(number)
    return ids, bad


def refused_ids_detail(bad: list[Any], total: int) -> str:
    """One short line naming how many ids were refused and the first few."""
    shown = ", ".join(_short(v, 40) for v in bad[:5])
    more = f", … {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"article_ids must be positive 64-bit integers (JSON integers or plain decimal "
        f"digits); rejected {len(bad)} of {total}: {shown}{more}"
    )


def parse_model(model: Any) -> str | None:
    """The model name as sent (None or "" = the worker's default), or Refused (`invalid_model`)
    for anything PostgreSQL could not even look up: not a string, a NUL, unpaired surrogates."""
    if model is None:
        return None
    if not isinstance(model, str):
        raise Refused("invalid_model", f"model must be a string or null, got {_short(model)}")
    if "\x00" in model or len(model) > 200:
        raise Refused("invalid_model", f"model {_short(model)} is not a model name")
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused("invalid_model", f"model {_short(model)} is not valid text") from None
    return model or None


def capped(raw: bytes) -> bytes:
    """What a dead letter keeps of `raw` (its size is recorded beside it)."""
    return raw[:PAYLOAD_MAX_BYTES]


def clean_text(value: Any, limit: int = 200) -> str | None:
    """`value` as text PostgreSQL can store (no NUL, valid UTF-8), at most `limit` chars."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text[:limit]


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
