"""Refused messages lose nothing and stay visible: valid ids of a partly bad message are
recorded, what is refused is kept in dead_letters (raw values, reason, where from), counted
by `embedder status` and the metrics, and an operator can list, show, replay and purge it.

Every test that refuses something ends by counting: embedded + dead-lettered = sent, and no
article embedded twice.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from tests.conftest import MODEL, REPO, fetch
from worker import deadletters, maintenance, messages, pipeline
from worker.client import TASK_EMBED_ARTICLE, TASK_EMBED_ARTICLES
from worker.config import Settings
from worker.deps import Deps
from worker.messages import Refused
from worker.metrics_server import DeadLetterCollector
from worker.status import collect_status, render_status

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:open_binary is deprecated:DeprecationWarning"),
]

SOURCE = pipeline.Source(queue="embeddings", task_name=TASK_EMBED_ARTICLES, task_id="task-1")


def letters(deps: Deps) -> list[Any]:
    return fetch(deps, "SELECT * FROM dead_letters ORDER BY id")


def stored_request(payload: bytes) -> tuple[Any, Any]:
    """(article ids, model) as stored in a dead letter's payload (an embed_articles message)."""
    envelope = json.loads(payload)
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert envelope["headers"]["task"] == TASK_EMBED_ARTICLES
    return args[0], kwargs.get("model")


def dead_letter_total(reason: str) -> float:
    return REGISTRY.get_sample_value("embedder_dead_letters_total", {"reason": reason}) or 0.0


def assert_accounted(deps: Deps, embedded: list[int], refused: list[Any]) -> None:
    """Everything sent is embedded or in a dead letter with its reason; nothing twice."""
    rows = fetch(deps, "SELECT article_id FROM article_embeddings WHERE model = :m", m=MODEL)
    assert sorted(r[0] for r in rows) == sorted(set(embedded))
    assert fetch(deps, "SELECT state, count(*) FROM embedding_jobs GROUP BY 1") == []
    kept = [v for d in letters(deps) for v in stored_request(d.payload)[0]]
    assert sorted(map(repr, kept)) == sorted(map(repr, refused))
    assert len(rows) + len(kept) == len(set(embedded)) + len(refused)


def test_a_message_mixing_valid_and_bad_ids_records_the_valid_ids_and_dead_letters_the_rest(
    deps: Deps, make_article: Any
) -> None:
    good = [make_article() for _ in range(3)]
    bad = ["880_011", " 12 ", -5, 1.5, None]
    before = dead_letter_total("invalid_ids")

    with pytest.raises(Refused) as info:
        pipeline.intake(deps, [good[0], bad[0], good[1], *bad[1:], str(good[2])], source=SOURCE)

    (letter,) = letters(deps)
    assert info.value.reason == "invalid_ids"
    assert "rejected 5 of 8: '880_011', ' 12 ', -5, 1.5, None" in str(info.value)
    assert f"accepted the other 3 for {MODEL} (dead letter {letter.id})" in str(info.value)
    jobs = fetch(deps, "SELECT article_id, state FROM embedding_jobs ORDER BY 1")
    assert [tuple(j) for j in jobs] == [(i, "pending") for i in sorted(good)]
    assert (letter.reason, letter.queue, letter.task_name, letter.task_id) == (
        "invalid_ids",
        "embeddings",
        TASK_EMBED_ARTICLES,
        "task-1",
    )
    assert stored_request(letter.payload) == (bad, None)  # the raw values, as sent
    assert letter.payload_size == len(letter.payload)
    assert letter.received_at > datetime.now(UTC) - timedelta(minutes=1)
    assert dead_letter_total("invalid_ids") == before + 1

    pipeline.drain(deps)
    assert_accounted(deps, good, bad)


def test_a_redelivered_message_is_dead_lettered_once(deps: Deps, make_article: Any) -> None:
    good = make_article()
    for _ in range(2):  # the same task id twice: a worker lost mid-task, the message redelivered
        with pytest.raises(Refused, match="dead letter"):
            pipeline.intake(deps, [good, "x"], source=SOURCE)
    assert len(letters(deps)) == 1
    pipeline.drain(deps)
    assert_accounted(deps, [good], ["x"])


@pytest.mark.parametrize(
    "value",
    ["880_011", " 12 ", "١٢", "+5", "12\n", "0x10", "0", "", str(2**63), 2**63, 0, True, 7.0],
)
def test_ids_are_parsed_strictly(deps: Deps, make_article: Any, value: Any) -> None:
    good = make_article()
    with pytest.raises(Refused):
        pipeline.intake(deps, [good, value], source=SOURCE)
    pipeline.drain(deps)
    assert_accounted(deps, [good], [value])


@pytest.mark.parametrize("model", [5, ["m"], {"name": MODEL}, "a\x00b", "\ud800"])
def test_a_model_that_is_not_text_is_refused_like_any_bad_payload(
    deps: Deps, make_article: Any, model: Any
) -> None:
    ids = [make_article(), make_article()]

    with pytest.raises(Refused) as info:
        pipeline.intake(deps, ids, model, source=SOURCE)

    assert info.value.reason == "invalid_model"  # not a database error
    assert fetch(deps, "SELECT count(*) FROM embedding_jobs")[0][0] == 0
    (letter,) = letters(deps)
    assert letter.reason == "invalid_model"
    stored_ids, stored_model = stored_request(letter.payload)
    assert stored_ids == ids
    assert stored_model == (model if "\ud800" not in str(model) else stored_model)
    assert_accounted(deps, [], ids)


def test_replay_after_registering_the_model(
    deps: Deps, make_article: Any, redis_client: redis.Redis[bytes]
) -> None:
    ids = [make_article(), make_article()]
    with pytest.raises(Refused, match="not registered"):
        pipeline.intake(deps, ids, "late-model", source=SOURCE)
    (letter,) = letters(deps)
    assert letter.reason == "unknown_model"

    with pytest.raises(deadletters.NotReplayable, match="not registered"):
        deadletters.replay(deps, letter.id, redis_client=redis_client)
    assert len(letters(deps)) == 1  # kept as it was
    maintenance.register_model(deps, "late-model", 1536, "openai")
    done = deadletters.replay(deps, letter.id, redis_client=redis_client)

    assert (done.ids, done.model) == (2, "late-model")
    assert letters(deps) == []
    (raw,) = redis_client.lrange("embeddings", 0, -1)
    message = messages.read_message(raw)
    assert messages.embed_request(message) == (ids, "late-model")
    # What a worker then does with it:
    pipeline.intake(deps, *messages.embed_request(message))
    assert pipeline.drain(deps, "late-model").embedded == 2


def test_replay_with_the_ids_given_after_fixing_them(
    deps: Deps, make_article: Any, redis_client: redis.Redis[bytes]
) -> None:
    good = make_article()
    fixed = make_article()
    with pytest.raises(Refused):
        pipeline.intake(deps, [good, f" {fixed}"], MODEL, source=SOURCE)  # a stray space
    (letter,) = letters(deps)

    with pytest.raises(deadletters.NotReplayable, match=r"still does not parse.*--ids"):
        deadletters.replay(deps, letter.id, redis_client=redis_client)
    done = deadletters.replay(deps, letter.id, ids=[fixed], redis_client=redis_client)

    assert (done.ids, done.model) == (1, MODEL)  # the model the message named
    (raw,) = redis_client.lrange("embeddings", 0, -1)
    pipeline.intake(deps, *messages.embed_request(messages.read_message(raw)))
    assert pipeline.drain(deps, MODEL).embedded == 2
    assert letters(deps) == []
    with pytest.raises(deadletters.NotReplayable, match="there is no dead letter"):
        deadletters.replay(deps, letter.id, ids=[fixed], redis_client=redis_client)


def test_a_truncated_payload_is_replayed_only_with_ids(
    deps: Deps, redis_client: redis.Redis[bytes]
) -> None:
    huge = ["bad"] * 30_000  # ~200 KiB as a message: only the first 64 KiB are kept
    with pytest.raises(Refused):
        pipeline.intake(deps, huge, source=SOURCE)
    (letter,) = letters(deps)
    assert len(letter.payload) == messages.PAYLOAD_MAX_BYTES < letter.payload_size

    with pytest.raises(deadletters.NotReplayable, match="only the first 65536 of its"):
        deadletters.replay(deps, letter.id, redis_client=redis_client)


def test_an_unreadable_value_is_recorded_once_per_delivery(deps: Deps) -> None:
    raw = b"\xff not even text"
    letter = {
        "payload": base64.b64encode(raw).decode(),
        "size": len(raw),
        "reason": "not_json",
        "detail": "not UTF-8 text",
        "queue": "embeddings",
        "task_name": None,
        "task_id": None,
    }
    before = dead_letter_total("not_json")

    first = pipeline.record_unreadable(deps, letter, key="delivery-1")
    again = pipeline.record_unreadable(deps, letter, key="delivery-1")  # redelivered
    other = pipeline.record_unreadable(deps, "not a letter", key="delivery-2")

    assert first[0] is not None and again[0] is None
    assert other[1] == "bad_arguments"
    rows = letters(deps)
    assert [(r.reason, bytes(r.payload), r.queue) for r in rows] == [
        ("not_json", raw, "embeddings"),
        ("bad_arguments", b'"not a letter"', None),
    ]
    assert dead_letter_total("not_json") == before + 1


def test_purge_before_a_date_and_all(deps: Deps) -> None:
    for n in range(3):
        with pytest.raises(Refused):
            pipeline.intake(deps, ["x"], source=pipeline.Source(task_id=f"t{n}", task_name="t"))
    with deps.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE dead_letters SET received_at = now() - interval '10 days' WHERE task_id = 't0'"
        )
    with deps.engine.begin() as conn:
        from worker import repository

        cutoff = datetime.now(UTC) - timedelta(days=1)
        assert repository.purge_dead_letters(conn, before=cutoff) == 1
        assert repository.purge_dead_letters(conn, before=None) == 2
    assert letters(deps) == []


def test_status_and_the_exporter_count_dead_letters(deps: Deps, make_article: Any) -> None:
    with pytest.raises(Refused):
        pipeline.intake(deps, [make_article(), "x"], source=SOURCE)
    with pytest.raises(Refused):
        pipeline.intake(deps, [1], 5, source=SOURCE)

    status = collect_status(deps)

    assert status["dead_letters"] == {
        "total": 2,
        "by_reason": {"invalid_ids": 1, "invalid_model": 1},
    }
    assert (
        "dead letters: 2 (invalid_ids=1, invalid_model=1; embedder dead-letters list)"
        in render_status(status)
    )
    (family,) = DeadLetterCollector(deps.engine).collect()
    values = {s.labels["reason"]: s.value for s in family.samples}
    assert values["invalid_ids"] == 1 and values["invalid_model"] == 1
    assert values["not_json"] == 0  # every known reason, from the start


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "dead-letters", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **settings.to_env()},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: ACTION"),
        (["show"], "the following arguments are required: ID"),
        (["show", "abc"], "expected a positive integer"),
        (["show", "١٢"], "expected a positive integer"),
        (["purge"], "purge needs --before DATE or --all"),
        (["purge", "--all", "--before", "2026-01-01"], "purge needs --before DATE or --all"),
        (["purge", "--before", "yesterday"], "expected an ISO date"),
        (["replay"], "the following arguments are required: ID"),
        (["replay", "1", "2", "--ids", "5"], "give exactly one ID"),
        (["replay", "1", "--ids", "880_011"], "rejected 1 of 1: '880_011'"),
        (["list", "--limit", "0"], "expected a positive integer"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(
    settings: Settings, args: list[str], message: str
) -> None:
    done = run_cli(settings, *args)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert message in line


def test_cli_list_show_replay_purge(
    settings: Settings, deps: Deps, make_article: Any, redis_client: redis.Redis[bytes]
) -> None:
    good, fixed = make_article(), make_article()
    with pytest.raises(Refused):
        pipeline.intake(deps, [good, "12abc"], source=SOURCE)
    with pytest.raises(Refused):
        pipeline.intake(deps, [good], "nope", source=pipeline.Source(task_id="task-2"))
    first, second = (r.id for r in letters(deps))

    listed = run_cli(settings, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == "2 dead letters stored; newest 2:"
    assert f"{first}\t" in listed.stdout and "invalid_ids" in listed.stdout
    only = json.loads(run_cli(settings, "list", "--reason", "unknown_model", "--json").stdout)
    assert [d["id"] for d in only] == [second]

    shown = run_cli(settings, "show", str(first))
    assert shown.returncode == 0, shown.stderr
    assert "reason: invalid_ids" in shown.stdout
    assert 'body: [[["12abc"]], {}' in shown.stdout  # the stored values, decoded
    raw = subprocess.run(
        [sys.executable, "-m", "worker.cli", "dead-letters", "show", str(first), "--raw"],
        capture_output=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **settings.to_env()},
    )
    assert json.loads(raw.stdout)["headers"]["task"] == TASK_EMBED_ARTICLES
    assert run_cli(settings, "show", "999999").returncode == 1

    not_yet = run_cli(settings, "replay", str(first))
    assert not_yet.returncode == 1
    assert "still does not parse" in not_yet.stderr
    replayed = run_cli(settings, "replay", str(first), "--ids", str(fixed))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"replayed dead letter {first}: 1 ids for {MODEL}")
    (raw_message,) = redis_client.lrange("embeddings", 0, -1)
    pipeline.intake(deps, *messages.embed_request(messages.read_message(raw_message)))

    purged = run_cli(settings, "purge", "--all")
    assert (purged.returncode, purged.stdout.strip()) == (0, "purged 1 dead letters")
    pipeline.drain(deps)
    rows = fetch(deps, "SELECT article_id FROM article_embeddings ORDER BY 1")
    assert [r[0] for r in rows] == sorted([good, fixed])


def test_embed_article_refuses_like_embed_articles(deps: Deps) -> None:
    source = pipeline.Source(task_name=TASK_EMBED_ARTICLE, task_id="single")
    with pytest.raises(Refused):
        pipeline.intake(deps, "１２", source=source)  # fullwidth digits, one id
    (letter,) = letters(deps)
    assert (letter.task_name, stored_request(letter.payload)) == (
        TASK_EMBED_ARTICLE,
        (["１２"], None),
    )


def test_the_worker_role_records_and_the_cli_role_replays_and_purges(
    pg: Any, database_url: str, make_deps: Any, redis_client: redis.Redis[bytes]
) -> None:
    """Migration 0007 grants embedder_worker what workers and the CLI need, and no more."""
    import uuid

    import psycopg

    name = f"t_login_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE embedder_worker")
    try:
        deps = make_deps(database_url=database_url.replace("postgres@", f"{name}@", 1))
        with pytest.raises(Refused):
            pipeline.intake(deps, ["x"], source=SOURCE)
        (letter,) = letters(deps)
        done = deadletters.replay(deps, letter.id, ids=[1], redis_client=redis_client)
        assert done.ids == 1
        with pytest.raises(Refused):
            pipeline.intake(deps, [2], "nope", source=SOURCE)
        with deps.engine.begin() as conn:
            from worker import repository

            assert repository.purge_dead_letters(conn, before=None) == 1
        with (
            psycopg.connect(deps.settings.database_url) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("UPDATE dead_letters SET reason = 'x'")
        deps.engine.dispose()
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {name}")
        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {name}")
