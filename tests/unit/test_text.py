"""worker.text: what gets embedded, its hash, and its token count (pure, no services)."""

from __future__ import annotations

import pytest

from worker import text as textmod
from worker.text import (
    clean_text,
    compose,
    content_hash,
    count_tokens,
    prepare,
    truncate_tokens,
)

# bpe_openai loads its table with the deprecated importlib.resources.open_binary; under
# filterwarnings=error that would fail every first count (pyproject should ignore it).
pytestmark = pytest.mark.filterwarnings("ignore:open_binary is deprecated:DeprecationWarning")

# Ten scripts plus emoji, RTL marks and combining characters: all valid UTF-8.
MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter.",
    "Съешь же ещё этих мягких французских булок да выпей чаю.",
    "東京の天気は今日も晴れです。明日は雨が降るでしょう。",
    "我能吞下玻璃而不伤身体。",
    "다람쥐 헌 쳇바퀴에 타고파.",
    "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق",
    "דג סקרן שט בים מאוכזב ולפתע מצא חברה",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "emoji 😀🎉👩‍👩‍👧‍👦🏳️‍🌈 and flags 🇯🇵🇫🇷",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353 \u200f\u202eRTL override\u202c",
]


# -- clean_text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain", "plain"),
        ("a\x00b", "ab"),
        ("\x00\x00", ""),
        ("nul at end\x00", "nul at end"),
        ("lone high \ud800 here", "lone high \ufffd here"),
        ("lone low \udfff here", "lone low \ufffd here"),
        ("both\x00 \udc80", "both \ufffd"),
        ("", ""),
    ],
)
def test_clean_text_removes_nul_and_replaces_unpaired_surrogates(raw, expected):
    assert clean_text(raw) == expected


def test_clean_text_keeps_a_valid_surrogate_pair_as_the_character_it_encodes():
    # "\ud83d\ude00" is 😀 written as UTF-16 code units (what a JS/Java producer may send
    # through surrogateescape-style decoding): only *unpaired* surrogates are invalid.
    assert clean_text("a\ud83d\ude00b\udc00") == "a😀b\ufffd"


@pytest.mark.parametrize("raw", ["a\x00b", "x\ud800y", "\udfff", *MULTILINGUAL])
def test_cleaned_text_is_always_encodable_utf8_without_nul(raw):
    cleaned = clean_text(raw)
    cleaned.encode("utf-8")  # raises on a surrogate
    assert "\x00" not in cleaned


@pytest.mark.parametrize("raw", MULTILINGUAL)
def test_clean_text_leaves_valid_unicode_untouched(raw):
    assert clean_text(raw) == raw


# -- compose -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "content", "expected"),
    [
        ("Title", "Body", "Title\n\nBody"),
        ("  Title \n", "\tBody  ", "Title\n\nBody"),
        ("Title", "", "Title"),
        ("", "Body", "Body"),
        (None, "Body", "Body"),
        ("Title", None, "Title"),
        (None, None, ""),
        ("   ", "\n\t ", ""),
        ("Ti\x00tle", "Bo\x00dy", "Title\n\nBody"),
        ("\x00", "\x00 \x00", ""),
        ("bad \ud800", "ok", "bad \ufffd\n\nok"),
    ],
)
def test_compose_joins_cleaned_and_stripped_title_and_content(title, content, expected):
    assert compose(title, content) == expected


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_compose_round_trips_every_script(text):
    assert compose(text, text) == f"{text}\n\n{text}"


# -- content_hash ------------------------------------------------------------------------


def test_content_hash_is_a_deterministic_sha256_of_model_and_text():
    digest = content_hash("m", "text")
    assert len(digest) == 32
    assert digest == content_hash("m", "text")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("m1", "text"), ("m2", "text")),
        (("m", "text"), ("m", "text ")),
        # The separator keeps (model, text) pairs apart even when concatenations collide.
        (("ab", "c"), ("a", "bc")),
    ],
)
def test_content_hash_differs_when_model_or_text_differs(a, b):
    assert content_hash(*a) != content_hash(*b)


# -- token counting and truncation -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("hello", 1), ("hello world", 2), ("Hello, world!", 4)],
)
def test_count_tokens_matches_cl100k(text, expected):
    assert count_tokens(text) == expected


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_utf8_byte_length_bounds_the_token_count(text):
    prepared = prepare(text, 100_000)
    assert not prepared.is_truncated
    assert prepared.token_bound >= count_tokens(text)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 16, 50])
@pytest.mark.parametrize("text", MULTILINGUAL)
def test_truncation_is_a_prefix_within_the_token_limit(text, max_tokens):
    # Multi-byte characters span several tokens: a cut inside one must not leave a
    # replacement character that was never in the article.
    long_text = " ".join([text] * 20)
    cut = truncate_tokens(long_text, max_tokens)
    assert long_text.startswith(cut)
    assert count_tokens(cut) <= max_tokens
    prepared = prepare(long_text, max_tokens)
    assert prepared.is_truncated and prepared.is_exact
    assert long_text.startswith(prepared.text)
    assert count_tokens(prepared.text) <= prepared.token_bound <= max_tokens


def test_truncation_keeps_as_many_tokens_as_allowed_on_ascii():
    text = "word " * 1000
    cut = truncate_tokens(text, 50)
    assert count_tokens(cut) == 50
    assert text.startswith(cut)


def test_short_text_is_not_counted_exactly_nor_truncated():
    prepared = prepare("short text", 8191)
    assert prepared == textmod.PreparedText("short text", 10, is_exact=False, is_truncated=False)


def test_text_over_the_byte_bound_but_under_the_token_limit_is_counted_exactly():
    text = " ".join(["hello world"] * 10)  # 119 bytes, 20 tokens
    prepared = prepare(text, 100)
    assert prepared == textmod.PreparedText(text, 20, is_exact=True, is_truncated=False)


def test_token_estimate_is_exact_when_counted_else_half_the_bytes():
    uncounted = prepare("hello world", 8191)
    assert (uncounted.token_bound, uncounted.is_exact, uncounted.token_estimate) == (11, False, 6)
    counted = prepare(" ".join(["hello world"] * 10), 100)
    assert (counted.is_exact, counted.token_estimate) == (True, 20)


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog. " * 40,
        "東京の天気は晴れです。明日は雨が降るでしょう。" * 40,
        "Der schnelle braune Fuchs springt über den faulen Hund. " * 40,
    ],
)
def test_estimate_is_not_below_the_real_count_for_natural_text(text):
    prepared = prepare(text, 100_000)
    assert not prepared.is_exact
    assert prepared.token_estimate >= count_tokens(text)


@pytest.mark.parametrize(
    "text",
    [
        "word " * 250_000,  # 1.25M characters: over the tokenizer's 1M-character guard
        "x" * 1_000_001,
        "a b c d " * 120_000,  # 480k tokens: over the tokenizer's 200k-token chunk limit
        "😀" * 300_000,
    ],
    ids=["1.25M-chars", "1M-no-spaces", "480k-tokens", "300k-emoji"],
)
def test_text_far_over_any_limit_is_truncated_not_an_error(text):
    prepared = prepare(text, 8191)
    assert prepared.is_truncated
    assert text.startswith(prepared.text)
    assert 0 < count_tokens(prepared.text) <= 8191
    assert truncate_tokens(text, 100) == prepare(text, 100).text
