"""Bad input at the pipeline level: a clear error or a recorded reason, and nothing else lost."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import event

from tests.conftest import MODEL, fetch
from tests.fakes.openai_server import fake_vector
from worker import maintenance, pipeline, repository
from worker import text as textmod
from worker.errors import InvalidPayload, UnknownModel
from worker.messages import Refused

# bpe_openai loads its table with the deprecated importlib.resources.open_binary; under
# filterwarnings=error that would fail every first count (pyproject should ignore it).
pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:open_binary is deprecated:DeprecationWarning"),
]

BAD_PAYLOADS = [
    pytest.param({"article_ids": [1, 2]}, id="dict"),
    pytest.param("}{ garbage \x00 payload", id="garbage-string"),
    pytest.param(None, id="none"),
    pytest.param(3.0, id="float"),
    pytest.param([1, 2.5], id="float-in-list"),
    pytest.param([1.0], id="integral-float"),
    pytest.param(True, id="bool"),
    pytest.param([1, False], id="bool-in-list"),
    pytest.param([-5], id="negative"),
    pytest.param([0], id="zero"),
    pytest.param([2**63], id="over-bigint"),
    pytest.param([10**30], id="huge"),
    pytest.param([str(2**64)], id="huge-string"),
    pytest.param([None], id="none-in-list"),
    pytest.param([[1, 2]], id="nested-list"),
    pytest.param(["12abc"], id="non-numeric-string"),
    pytest.param(["880_011"], id="underscore"),
    pytest.param([" 12 "], id="spaces"),
    pytest.param(["١٢"], id="arabic-indic-digits"),
    pytest.param(["+5"], id="plus-sign"),
    pytest.param({1, 2}, id="set"),
    pytest.param(b"123", id="bytes"),
]


def job_count(deps) -> int:
    return int(fetch(deps, "SELECT count(*) FROM embedding_jobs")[0][0])


@pytest.mark.parametrize("payload", BAD_PAYLOADS)
def test_invalid_payload_is_refused_with_a_clear_error(payload):
    with pytest.raises(InvalidPayload, match=r"^article_ids must be") as info:
        pipeline.validate_ids(payload)
    assert info.value.reason == "invalid_ids"


def test_intake_records_the_good_ids_and_dead_letters_the_rest(deps, make_article):
    # tests/integration/test_dead_letters.py looks at the dead letters themselves.
    good = make_article()
    for param in BAD_PAYLOADS:
        (payload,) = param.values
        mixed = [good, *payload] if isinstance(payload, list) else payload
        with pytest.raises(InvalidPayload):
            pipeline.intake(deps, mixed)
    assert job_count(deps) == 1  # the good id of every mixed message, recorded once
    dead = fetch(deps, "SELECT count(*) FROM dead_letters WHERE reason = 'invalid_ids'")
    assert dead[0][0] == len(BAD_PAYLOADS)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ([1, 2, 3], [1, 2, 3]),
        ((4, 5), [4, 5]),
        (7, [7]),
        ("8", [8]),
        (["9", 10], [9, 10]),
        ([2**63 - 1], [2**63 - 1]),
        ([], []),
    ],
)
def test_valid_payload_forms(payload, expected):
    assert pipeline.validate_ids(payload) == expected


def test_error_for_a_huge_bad_payload_stays_short():
    with pytest.raises(InvalidPayload) as info:
        pipeline.validate_ids([-1] * 100_000)
    message = str(info.value)
    assert "rejected 100000" in message
    assert len(message) < 300


def test_100k_ids_in_one_message_are_recorded_in_bounded_chunks(deps, make_article):
    real = [make_article() for _ in range(3)]
    ghosts = list(range(10**9, 10**9 + 100_000 - len(real)))  # no such articles
    inserts: list[int] = []

    @event.listens_for(deps.engine, "before_cursor_execute")
    def count_inserts(conn, cursor, statement, parameters, context, executemany):
        if "INSERT INTO embedding_jobs" in statement:
            inserts.append(len(parameters["ids"]))

    info, recorded = pipeline.intake(deps, [*real, *ghosts, *real])  # duplicates merge

    assert (info.name, recorded) == (MODEL, 100_000)
    assert inserts == [repository.INTAKE_CHUNK] * (100_000 // repository.INTAKE_CHUNK)
    rows = fetch(
        deps,
        "SELECT count(*), count(DISTINCT article_id), min(article_id), max(article_id) "
        "FROM embedding_jobs WHERE model = :m AND state = 'pending'",
        m=MODEL,
    )
    assert tuple(rows[0]) == (100_000, 100_000, min(real), ghosts[-1])


def test_unknown_model_is_a_clear_error_and_records_only_a_dead_letter(deps):
    expected = (
        "model 'no-such-model' is not registered; "
        "add it with `embedder models add no-such-model --dimensions N`"
    )
    with pytest.raises(Refused) as info:
        pipeline.intake(deps, [1, 2], model="no-such-model")
    assert str(info.value).startswith(expected + " (dead letter ")
    assert info.value.reason == "unknown_model"
    with pytest.raises(UnknownModel):
        pipeline.drain(deps, "no-such-model")
    assert job_count(deps) == 0
    assert fetch(deps, "SELECT reason FROM dead_letters")[0][0] == "unknown_model"


# Storable in PostgreSQL (UTF-8): ten languages, emoji sequences, RTL marks and overrides,
# combining marks, zero-width and line-separator characters, C0 controls other than NUL.
UNICODE_ARTICLES = [
    ("English", "The quick brown fox jumps over the lazy dog."),
    ("Français", "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter."),
    ("Русский", "Съешь же ещё этих мягких французских булок да выпей чаю."),
    ("日本語", "東京の天気は今日も晴れです。明日は雨が降るでしょう。"),
    ("中文", "我能吞下玻璃而不伤身体。"),
    ("한국어", "다람쥐 헌 쳇바퀴에 타고파."),
    ("العربية", "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر"),
    ("עברית", "דג סקרן שט בים מאוכזב ולפתע מצא חברה"),
    ("हिन्दी", "नमस्ते दुनिया, यह एक परीक्षण है।"),
    ("Ελληνικά", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία."),
    ("emoji 😀", "👩‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 🇫🇷 🧑🏽‍💻"),
    ("RTL \u200f\u202e override\u202c", "mixed English עברית العربية 123"),
    ("combining e\u0301 a\u0308", "Z\u0351\u0352\u0353\u0354 n\u0303 o\u0328\u0304"),
    ("controls\x01\x7f", "zero\u200bwidth line\u2028separator tab\tend"),
]


def test_articles_in_any_language_are_embedded_exactly_as_composed(deps, make_article, fake_openai):
    ids = [make_article(title=t, content=c) for t, c in UNICODE_ARTICLES]
    pipeline.intake(deps, ids)

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed, result.skipped) == (len(ids), 0, 0)
    expected = [textmod.compose(t, c) for t, c in UNICODE_ARTICLES]
    assert sorted(t for r in fake_openai.requests for t in r.inputs) == sorted(expected)
    rows = fetch(
        deps,
        "SELECT article_id, embedding, content_hash FROM article_embeddings ORDER BY article_id",
    )
    assert [r[0] for r in rows] == ids
    for (_, vector, digest), composed in zip(rows, expected, strict=True):
        assert np.allclose(vector.to_numpy(), fake_vector(composed, 1536), atol=1e-6)
        assert bytes(digest) == textmod.content_hash(MODEL, composed)
    assert job_count(deps) == 0


@pytest.mark.parametrize(
    ("title", "content", "expected"),
    [
        ("a\x00b", "c\x00d", "ab\n\ncd"),
        ("lone \ud800", "low \udfff", "lone \ufffd\n\nlow \ufffd"),
        ("\x00", "\x00\ud800", "\ufffd"),
        ("\x00 \x00", " \x00 ", ""),  # empty after cleaning: skipped as empty_text
    ],
)
def test_text_postgres_cannot_store_is_cleaned_before_embedding(title, content, expected):
    # PostgreSQL text cannot hold NUL or surrogates, but other producers of article text
    # (and future columns) can: compose() must still hand the provider valid UTF-8.
    composed = textmod.compose(title, content)
    assert composed == expected
    composed.encode("utf-8")


def test_text_far_over_the_token_limit_is_truncated_and_embedded(
    make_deps, make_article, fake_openai
):
    deps = make_deps(embed_input_max_tokens=50)
    long_content = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 2000
    long_id = make_article(title="Long", content=long_content)
    short_id = make_article(title="Short", content="fits easily")
    pipeline.intake(deps, [long_id, short_id])

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed) == (2, 0)
    (request,) = fake_openai.requests
    sent = dict(zip(["long", "short"], sorted(request.inputs, key=len, reverse=True), strict=True))
    assert textmod.count_tokens(sent["long"]) <= 50
    assert textmod.compose("Long", long_content).startswith(sent["long"])
    assert sent["short"] == "Short\n\nfits easily"
    rows = fetch(
        deps,
        "SELECT article_id, token_count, embedding FROM article_embeddings ORDER BY article_id",
    )
    assert [(r[0], r[1]) for r in rows] == [(long_id, 50), (short_id, len(sent["short"]))]
    assert np.allclose(rows[0][2].to_numpy(), fake_vector(sent["long"], 1536), atol=1e-6)


def test_megabyte_article_over_the_tokenizer_limits_is_truncated_not_stuck(
    deps, make_article, fake_openai
):
    # 1.25M characters: over bpe_openai's 1M-character guard and its 200k-token chunk limit.
    huge = make_article(title="Huge", content="word " * 250_000)
    normal = make_article()
    pipeline.intake(deps, [huge, normal])

    result = pipeline.drain(deps)

    assert (result.embedded, result.failed) == (2, 0)
    inputs = [t for r in fake_openai.requests for t in r.inputs]
    longest = max(inputs, key=len)
    assert longest.startswith("Huge\n\nword word")
    assert textmod.count_tokens(longest) <= deps.settings.embed_input_max_tokens
    assert job_count(deps) == 0


def test_provider_dimension_differs_from_the_registered_one(make_deps, make_article, fake_openai):
    deps = make_deps()
    maintenance.register_model(deps, "odd-model", 8, "openai")
    ids = [make_article() for _ in range(3)]
    pipeline.intake(deps, ids, model="odd-model")

    result = pipeline.drain(deps, "odd-model")

    assert (result.embedded, result.failed) == (0, 3)
    (request,) = fake_openai.requests  # permanent: not retried
    # Not a text-embedding-3 model: `dimensions` is not sent, the server uses its own 1536.
    assert (request.model, request.dimensions) == ("odd-model", None)
    rows = fetch(
        deps, "SELECT article_id, state, reason, last_error FROM embedding_jobs ORDER BY article_id"
    )
    assert [tuple(r[:3]) for r in rows] == [(i, "failed", "dimension_mismatch") for i in ids]
    assert rows[0][3] == "model odd-model returned 1536 dimensions, registered with 8"
    assert fetch(deps, "SELECT count(*) FROM article_embeddings")[0][0] == 0
