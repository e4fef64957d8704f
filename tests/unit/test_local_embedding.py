"""worker.local_embedding: the offline character n-gram hashing embedder."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest

from devstack.sample import sample_articles
from worker import local_embedding
from worker.local_embedding import embed_texts

NOW = datetime(2026, 1, 1, tzinfo=UTC)

MIXED = [
    "The weather in Tokyo is sunny today.",
    "東京の天気は晴れです",
    "東京でPostgreSQLを使う 🐘☀️",
    "สวัสดีครับ วันนี้อากาศดี",
    "오늘 서울 날씨는 맑습니다",
    "ＦＵＬＬＷＩＤＴＨ Straße ﬁnance Ⅻ",
    "𠀋 emoji 👍🏽 flag 🇯🇵",
    "a",
    "",
]


def cos(a: str, b: str, dims: int = 1536) -> float:
    v = embed_texts([a, b], dims)
    return float(v[0] @ v[1])


@pytest.mark.parametrize("dims", [384, 1536])
def test_shape_dtype_and_unit_norm(dims: int) -> None:
    vectors = embed_texts(MIXED, dims)
    assert vectors.shape == (len(MIXED), dims)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_batch() -> None:
    assert embed_texts([], 384).shape == (0, 384)


@pytest.mark.parametrize("text", ["", "   \n\t", "...!? --- ()", "\u200b\ufe0f"])
def test_text_without_features_gets_e0(text: str) -> None:
    vector = embed_texts([text, "something else"], 16)[0]
    expected = np.zeros(16, dtype=np.float32)
    expected[0] = 1.0
    np.testing.assert_array_equal(vector, expected)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        embed_texts(["x"], 0)
    with pytest.raises(TypeError, match="single string"):
        embed_texts("not a list", 8)


def test_normalisation_nfkc_and_casefold() -> None:
    a, b = embed_texts(["ＰｏｓｔｇｒｅＳＱＬ STRASSE", "postgresql straße"], 64)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "text",
    [
        "plain ASCII Text",
        "東京の天気は晴れです。",
        "中文，全角标点：（测试）！",  # fullwidth punctuation: the table path
        "ＡＢＣ１２３\u3000全角",  # fullwidth letters, digits, ideographic space
        "Ａ\u0301 composes after mapping",  # needs the full algorithm
        "ｶﾞｷﾞ halfwidth kana with voiced marks",
        "ﬁnance … ½ ㈱ ß ΣΑΣ",  # multi-character images, casefold
        "\U0001d400\U0001d41b math letters, 😀 emoji, 𠀋",
        "lone surrogate \ud800 survives",
    ],
)
def test_fast_normalisation_equals_nfkc_casefold(text: str) -> None:
    expected = unicodedata.normalize("NFKC", text).casefold()
    assert local_embedding._normalise(text) == expected


def test_vector_does_not_depend_on_the_batch() -> None:
    texts = [*MIXED, *(a.content for a in sample_articles(30, seed=2, now=NOW))]
    together = embed_texts(texts, 384)
    alone = np.vstack([embed_texts([t], 384) for t in texts])
    reversed_ = embed_texts(texts[::-1], 384)[::-1]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, reversed_)


def test_deterministic_across_processes() -> None:
    """Same bytes in a fresh interpreter with another hash seed: no salted hash() anywhere."""
    script = (
        "import sys\n"
        "from worker.local_embedding import embed_texts\n"
        f"sys.stdout.write(embed_texts({MIXED!r}, 384).tobytes().hex())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert bytes.fromhex(result.stdout) == embed_texts(MIXED, 384).tobytes()


def test_golden_values() -> None:
    """Pins the algorithm: stored vectors must stay comparable with new ones.

    If this changes on purpose, rename the local model (e.g. local-ngram-1536 -> v2) so
    old and new vectors are never mixed.
    """
    vector = embed_texts(["Hello, 世界! PostgreSQL"], 8)[0]
    golden = [-0.167538, 0.0, -0.670152, -0.393140, -0.502614, -0.058064, 0.335076, 0.0]
    np.testing.assert_allclose(vector, golden, atol=2e-6)


@pytest.mark.parametrize("dims", [384, 1536])
def test_related_vs_unrelated_english(dims: int) -> None:
    base = "The weather in Tokyo is sunny today"
    related = cos(base, "The weather in Tokyo is rainy today", dims)
    unrelated = cos(base, "Stock markets fell sharply after the central bank decision", dims)
    assert related > 0.6
    assert related > unrelated + 0.4


@pytest.mark.parametrize("dims", [384, 1536])
def test_related_vs_unrelated_japanese(dims: int) -> None:
    base = "東京の天気は晴れです"
    related = cos(base, "東京の天気は雨です", dims)
    unrelated = cos(base, "株式市場が下落した", dims)
    assert related > 0.5
    assert related > unrelated + 0.4


def test_word_inside_japanese_text_matches_english_text() -> None:
    english = "PostgreSQL performance tuning"
    with_word = cos("東京でPostgreSQLを使う", english)
    without = cos("東京で天ぷらを食べる", english)
    assert with_word > without + 0.2


def test_similarity_is_lexical_not_semantic() -> None:
    """What the docstring promises: synonyms and translations are not close."""
    assert abs(cos("car", "automobile")) < 0.2
    assert abs(cos("weather", "天気")) < 0.2


@pytest.mark.parametrize("language", ["en", "ja"])
def test_same_topic_articles_are_closer_than_different_topics(language: str) -> None:
    articles = [
        a for a in sample_articles(300, seed=0, now=NOW, max_chars=3000) if a.language == language
    ]
    vectors = embed_texts([f"{a.title}\n\n{a.content}" for a in articles], 1536)
    topics = np.array([a.tags[0] for a in articles])
    sims = vectors @ vectors.T
    same = topics[:, None] == topics[None, :]
    np.fill_diagonal(same, False)
    different = topics[:, None] != topics[None, :]
    assert same.any() and different.any()
    assert sims[same].mean() > sims[different].mean() + 0.3
    # and every article's nearest neighbour is about the same topic
    np.fill_diagonal(sims, -1.0)
    assert (topics[sims.argmax(axis=1)] == topics).mean() > 0.9


# --- an exact, slow, pure-Python reference of the same algorithm ------------------------

M64 = (1 << 64) - 1
BASE = 0x100000001B3
KINDS = {  # kind: (id, salt, weight)
    "3gram": (0, 0x51ED270B27A1F0E3, 1.0),
    "4gram": (1, 0xA24BAED4963EE407, 1.0),
    "word": (2, 0x9FB21C651E98DF25, 1.5),
    "dense1": (3, 0x3C6EF372FE94F82B, 0.5),
    "dense2": (4, 0xBB67AE8584CAA73B, 1.0),
}


def _splitmix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _rolling(chars: Sequence[int]) -> int:
    h = 0
    for c in chars:
        h = (h * BASE + c) & M64
    return h


def _reference_features(text: str) -> Counter[tuple[str, int]]:
    norm = unicodedata.normalize("NFKC", text).casefold()
    cps = np.array([ord(c) for c in norm], dtype=np.uint32)
    # the character classes themselves are not what this reference checks
    cls = [0, *(int(k) for k in local_embedding._classify(cps)), 0]
    u = [32, *(32 if k == 0 else int(c) for k, c in zip(cls[1:-1], cps, strict=True)), 32]
    feats: Counter[tuple[str, int]] = Counter()
    for i in range(len(u) - 2):
        if cls[i + 1] == 1 or cls[i] == cls[i + 1] == cls[i + 2] == 2:
            feats["3gram", _rolling(u[i : i + 3])] += 1
    for i in range(len(u) - 3):
        if cls[i + 1] == cls[i + 2] == 1:
            feats["4gram", _rolling(u[i : i + 4])] += 1
    for i in range(len(u) - 1):
        if cls[i] == 2:
            feats["dense1", u[i]] += 1
            if cls[i + 1] == 2:
                feats["dense2", _rolling(u[i : i + 2])] += 1
    i = 0
    while i < len(u):
        j = i
        while cls[j] == 1:
            j += 1
        if j > i:
            word = sum(u[i + k] * pow(BASE, k, 1 << 64) for k in range(j - i)) & M64
            feats["word", word] += 1
        i = j + 1
    return feats


def _reference_embed(text: str, dims: int) -> np.ndarray:
    vector = np.zeros(dims)
    for (kind, h), tf in _reference_features(text).items():
        _, salt, weight = KINDS[kind]
        x = _splitmix((h + salt) & M64) & ((1 << 49) - 1)
        bucket = (((x >> 16) & 0xFFFFFFFF) * dims) >> 32
        vector[bucket] += (-1.0 if x & 1 else 1.0) * weight * (1.0 + math.log(tf))
    norm = np.linalg.norm(vector)
    if norm == 0:
        vector[0] = 1.0
        return vector
    return vector / norm


@pytest.mark.parametrize("dims", [7, 384])
def test_matches_exact_reference_implementation(dims: int) -> None:
    """The vectorised code computes the documented features, hashes and weights.

    The only difference allowed is the approximate tf count (a per-text hash table whose
    slots two features may share): cosine to the exact-tf reference stays above 0.99.
    """
    texts = [*MIXED, *(a.content[:1500] for a in sample_articles(6, seed=4, now=NOW))]
    fast = embed_texts(texts, dims)
    for text, vector in zip(texts, fast, strict=True):
        assert float(vector @ _reference_embed(text, dims)) > 0.99, text[:40]


def test_padded_ngrams_of_a_single_word() -> None:
    features = _reference_features("Word")
    grams = {k for k, _ in features}
    assert grams == {"3gram", "4gram", "word"}
    # " wo", "wor", "ord", "rd " + " wor", "word", "ord " + "word"
    assert sum(features.values()) == 4 + 3 + 1
