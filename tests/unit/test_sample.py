"""devstack.sample: the deterministic demo/benchmark corpus."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from devstack.sample import LANGUAGES, TOPICS, SampleArticle, sample_articles, sample_queries

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=120)


def test_deterministic_for_a_seed() -> None:
    first = list(sample_articles(60, seed=7, now=NOW))
    again = list(sample_articles(60, seed=7, now=NOW))
    other = list(sample_articles(60, seed=8, now=NOW))
    assert first == again
    assert first != other
    # a longer run starts with the same articles
    assert list(sample_articles(80, seed=7, now=NOW))[:60] == first


@pytest.mark.parametrize("count", [0, 1, 57, 300])
def test_count_respected(count: int) -> None:
    assert sum(1 for _ in sample_articles(count, now=NOW)) == count


def test_default_count_is_300() -> None:
    assert len(list(sample_articles(now=NOW))) == 300


def test_language_mix() -> None:
    articles = list(sample_articles(300, now=NOW))
    languages = Counter(a.language for a in articles)
    assert set(languages) <= set(LANGUAGES)
    for language in ("en", "ja", "de", "fr", "es", "zh", "mul"):
        assert languages[language] > 0, language
    assert languages["ja"] >= 40
    japanese = next(a for a in articles if a.language == "ja")
    assert any("\u3040" <= ch <= "\u30ff" for ch in japanese.content)  # kana
    mixed = next(a for a in articles if a.language == "mul")
    assert any(ch.isascii() and ch.isalpha() for ch in mixed.content)
    assert any("\u3040" <= ch <= "\u30ff" for ch in mixed.content)
    assert any(ord(ch) >= 0x1F000 or 0x2600 <= ord(ch) <= 0x27BF for ch in mixed.content)


@pytest.mark.parametrize(("min_chars", "max_chars"), [(300, 6000), (50, 400), (1000, 1000)])
def test_lengths_within_bounds(min_chars: int, max_chars: int) -> None:
    articles = sample_articles(200, now=NOW, min_chars=min_chars, max_chars=max_chars)
    lengths = [len(a.content) for a in articles]
    assert min(lengths) >= min_chars
    assert max(lengths) <= max_chars
    if min_chars < max_chars:
        assert len(set(lengths)) > 50  # spread, not a constant


def test_median_length_about_4500_when_unbounded() -> None:
    lengths = [len(a.content) for a in sample_articles(400, now=NOW, max_chars=1_000_000)]
    assert 3800 <= statistics.median(lengths) <= 5200
    assert max(lengths) > 9000  # a realistic long tail


def test_timestamps_within_window() -> None:
    articles = list(sample_articles(300, now=NOW))
    stamps = [a.published_at for a in articles]
    assert all(s.tzinfo is not None and s.utcoffset() == timedelta(0) for s in stamps)
    assert all(NOW - WINDOW <= s <= NOW for s in stamps)
    assert max(stamps) - min(stamps) > timedelta(days=90)  # spread over the window


def test_now_in_another_timezone_is_converted_to_utc() -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    assert list(sample_articles(5, now=tokyo)) == list(sample_articles(5, now=NOW))
    assert all(a.published_at.tzinfo == UTC for a in sample_articles(5, now=tokyo))


def test_default_now_is_current_time() -> None:
    before = datetime.now(UTC)
    stamps = [a.published_at for a in sample_articles(20)]
    after = datetime.now(UTC)
    assert all(before - WINDOW <= s <= after for s in stamps)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sample_articles(1, now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="min_chars"):
        sample_articles(1, now=NOW, min_chars=500, max_chars=100)
    with pytest.raises(ValueError, match="count"):
        sample_articles(-1, now=NOW)


def test_fields() -> None:
    articles = list(sample_articles(300, now=NOW))
    for a in articles:
        assert isinstance(a, SampleArticle)
        assert 1 <= a.feed_id <= 16
        assert 1 <= a.user_id <= 4
        assert a.title and a.content
        assert isinstance(a.tags, tuple) and 2 <= len(a.tags) <= 3
        assert a.tags[0] in TOPICS
        assert len(set(a.tags)) == len(a.tags)
    assert {a.tags[0] for a in articles} == set(TOPICS)
    read = sum(a.is_read for a in articles)
    assert 0 < read < len(articles)
    with pytest.raises(dataclasses.FrozenInstanceError):
        articles[0].title = "x"  # type: ignore[misc]


def test_sample_queries() -> None:
    queries = sample_queries()
    assert queries and all(isinstance(q, str) and q for _, q in queries)
    languages = {language for language, _ in queries}
    assert {"en", "ja"} <= languages <= set(LANGUAGES)
    assert ("ja", "東京の天気") in queries
    queries.clear()  # a fresh list each time
    assert sample_queries()


def test_generation_is_fast() -> None:
    """100,000 articles must take a few seconds; 5,000 here must take well under a second."""
    start = time.perf_counter()
    for _ in sample_articles(5000, now=NOW):
        pass
    assert time.perf_counter() - start < 2.0
