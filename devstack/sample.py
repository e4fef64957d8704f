"""A deterministic, multilingual sample corpus for the demo and the benchmarks.

``sample_articles`` yields feed articles about twelve topics in English, Japanese,
German, French, Spanish and Chinese, plus a few mixed-script articles (English and
Japanese sentences with emoji, language ``"mul"``). Bodies are made of sentences from a
per-topic, per-language pool, so articles of the same topic share vocabulary, which is
what a lexical embedding (``worker.local_embedding``) can pick up. The text itself is
in ``sample_corpus.json``.

Everything is derived from ``seed`` (and ``now`` for the timestamps): the same arguments
always give the same articles. Generation is cheap (paragraphs are pre-built once per
call, an article is a handful of random draws and one string join), so 100,000 articles
take a few seconds.

Lengths are measured in characters (``len(content)``) and follow a log-normal
distribution with a median of about 4,500 characters, truncated to
``[min_chars, max_chars]``: with a large ``max_chars`` the median is ~4,500 characters;
with the default ``max_chars=6000`` it is ~3,500 characters, which is ~4.5 KB of UTF-8
because Japanese and Chinese take 3 bytes a character. ``tags[0]`` is always the topic.
Sentences repeat within an article (each topic has a small sentence pool), which is fine
for throughput and similarity demos but makes same-topic articles near-duplicates.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final

__all__ = ["LANGUAGES", "TOPICS", "SampleArticle", "sample_articles", "sample_queries"]


@dataclass(frozen=True)
class SampleArticle:
    feed_id: int
    user_id: int
    title: str
    content: str
    tags: tuple[str, ...]
    is_read: bool
    published_at: datetime
    language: str


# The corpus text (sentence and title templates per language and topic, filler values,
# queries) is data, not code: sample_corpus.json beside this file.
_CORPUS: Final[Mapping[str, Any]] = json.loads(
    (Path(__file__).with_name("sample_corpus.json")).read_text(encoding="utf-8")
)


def _tuples(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """JSON lists as tuples, one or two levels deep (the generator samples from tuples)."""
    return {
        key: tuple(value) if isinstance(value, list) else _tuples(value)
        for key, value in mapping.items()
    }


TOPICS: Final[tuple[str, ...]] = tuple(_CORPUS["topics"])
# Relative frequency of each language in the corpus ("mul": English + Japanese + emoji).
_LANGUAGE_WEIGHTS: Final[Mapping[str, int]] = dict(_CORPUS["language_weights"])
LANGUAGES: Final[tuple[str, ...]] = tuple(_LANGUAGE_WEIGHTS)

_MEDIAN_CHARS: Final = 4500
_SIGMA: Final = 0.6
SAMPLE_WINDOW: Final = timedelta(days=120)  # published_at spans this long before `now`
_FEEDS: Final = 16
_USERS: Final = 4
_READ_RATIO: Final = 0.35
_PARAGRAPHS_PER_POOL: Final = 24

_EXTRA_TAGS: Final[Mapping[str, tuple[str, ...]]] = _tuples(_CORPUS["extra_tags"])
_EMOJI: Final[Mapping[str, tuple[str, ...]]] = _tuples(_CORPUS["emoji"])
# Filler values for {city}, {name}, {num}, {small}, {temp}, {pct} in the templates.
_CITIES: Final[Mapping[str, tuple[str, ...]]] = _tuples(_CORPUS["cities"])
_NAMES: Final[Mapping[str, tuple[str, ...]]] = _tuples(_CORPUS["names"])
_DECIMAL_COMMA: Final = frozenset(_CORPUS["decimal_comma"])
_TITLES: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = _tuples(_CORPUS["titles"])
_SENTENCES: Final[Mapping[str, Mapping[str, tuple[str, ...]]]] = _tuples(_CORPUS["sentences"])
# Between sentences of one paragraph (Japanese and Chinese use no spaces).
_JOINER: Final[Mapping[str, str]] = dict(_CORPUS["joiner"])
_QUERIES: Final[tuple[tuple[str, str], ...]] = tuple(
    (language, text) for language, text in _CORPUS["queries"]
)


@dataclass(frozen=True)
class _Pool:
    titles: tuple[str, ...]
    paragraphs: tuple[str, ...]
    mean_paragraph: float


def _fill(template: str, language: str, rng: random.Random) -> str:
    if "{" not in template:
        return template
    pct = f"{rng.randint(11, 99) / 10:.1f}"
    if language in _DECIMAL_COMMA:
        pct = pct.replace(".", ",")
    return template.format(
        city=rng.choice(_CITIES[language]),
        name=rng.choice(_NAMES[language]),
        num=rng.randint(3, 45),
        small=rng.randint(2, 9),
        temp=rng.randint(8, 34),
        pct=pct,
    )


def _paragraph(topic: str, language: str, rng: random.Random) -> str:
    if language == "mul":
        emoji = _EMOJI[topic]
        en = rng.sample(_SENTENCES["en"][topic], 2)
        ja = rng.sample(_SENTENCES["ja"][topic], 2)
        parts: list[str] = []
        for sentence_en, sentence_ja in zip(en, ja, strict=True):
            parts.append(_fill(sentence_en, "en", rng))
            parts.append(_fill(sentence_ja, "ja", rng) + rng.choice(emoji))
        return " ".join(parts)
    sentences = _SENTENCES[language][topic]
    picked = rng.sample(sentences, min(len(sentences), rng.randint(3, 5)))
    return _JOINER[language].join(_fill(s, language, rng) for s in picked)


def _title_templates(topic: str, language: str) -> tuple[str, ...]:
    if language != "mul":
        return _TITLES[language][topic]
    pairs = zip(_TITLES["en"][topic], _TITLES["ja"][topic], strict=True)
    return tuple(f"{en} {_EMOJI[topic][0]} {ja}" for en, ja in pairs)


@functools.lru_cache(maxsize=8)
def _pools(seed: int) -> Mapping[tuple[str, str], _Pool]:
    """Titles and paragraphs of every (language, topic), built once per seed."""
    rng = random.Random(f"embedder-sample-pools-{seed}")
    pools: dict[tuple[str, str], _Pool] = {}
    for language in LANGUAGES:
        fill_language = "en" if language == "mul" else language
        for topic in TOPICS:
            titles = tuple(
                _fill(template, fill_language, rng)
                for template in _title_templates(topic, language)
                for _ in range(3)
            )
            paragraphs = tuple(
                _paragraph(topic, language, rng) for _ in range(_PARAGRAPHS_PER_POOL)
            )
            mean = sum(len(p) + 2 for p in paragraphs) / len(paragraphs)
            pools[(language, topic)] = _Pool(tuple(sorted(set(titles))), paragraphs, mean)
    return pools


def _tag_sets(topic: str) -> tuple[tuple[str, ...], ...]:
    extra = _EXTRA_TAGS[topic]
    sets: list[tuple[str, ...]] = [(topic, tag) for tag in extra]
    sets.extend((topic, *pair) for pair in itertools.combinations(extra, 2))
    return tuple(sets)


def _truncate(body: str, limit: int, floor: int) -> str:
    """Cut ``body`` to at most ``limit`` characters, at a sentence end when possible."""
    if len(body) <= limit:
        return body
    cut = max(body.rfind("。", 0, limit), body.rfind(". ", 0, limit), body.rfind("\n", 0, limit))
    if cut > 0:
        cut_body = body[: cut + 1].rstrip()
        if len(cut_body) >= floor:
            return cut_body
    return body[:limit]


def sample_articles(
    count: int = 300,
    *,
    seed: int = 0,
    now: datetime | None = None,
    min_chars: int = 300,
    max_chars: int = 6000,
) -> Iterator[SampleArticle]:
    """Yield ``count`` deterministic sample articles (same arguments, same articles).

    ``published_at`` is spread uniformly over the 120 days before ``now`` (default: the
    current time, UTC; an explicit ``now`` must be timezone-aware). Content lengths are
    log-normal around 4,500 characters, truncated to ``[min_chars, max_chars]``.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 1 <= min_chars <= max_chars:
        raise ValueError(f"need 1 <= min_chars <= max_chars, got {min_chars}, {max_chars}")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    return _generate(count, seed, now, min_chars, max_chars)


def _generate(
    count: int, seed: int, now: datetime, min_chars: int, max_chars: int
) -> Iterator[SampleArticle]:
    rng = random.Random(seed)
    pools = _pools(seed)
    tag_sets = {topic: _tag_sets(topic) for topic in TOPICS}
    languages = [lang for lang, weight in _LANGUAGE_WEIGHTS.items() for _ in range(weight)]

    # Log-normal lengths truncated to [min_chars, max_chars] by inverse-CDF sampling.
    normal = NormalDist()
    mu = math.log(_MEDIAN_CHARS)
    lo = normal.cdf((math.log(min_chars) - mu) / _SIGMA)
    hi = normal.cdf((math.log(max_chars) - mu) / _SIGMA)
    eps = 1e-12
    window_s = int(SAMPLE_WINDOW.total_seconds())

    for _ in range(count):
        language = languages[int(rng.random() * len(languages))]
        topic = TOPICS[int(rng.random() * len(TOPICS))]
        pool = pools[(language, topic)]

        p = min(max(lo + (hi - lo) * rng.random(), eps), 1.0 - eps)
        target = round(math.exp(mu + _SIGMA * normal.inv_cdf(p)))
        target = min(max(target, min_chars), max_chars)

        paragraphs = pool.paragraphs
        body = "\n\n".join(rng.choices(paragraphs, k=int(target / pool.mean_paragraph) + 2))
        while len(body) < target:
            body += "\n\n" + "\n\n".join(rng.choices(paragraphs, k=4))
        content = _truncate(body, target, min_chars)

        feed_id = 1 + int(rng.random() * _FEEDS)
        yield SampleArticle(
            feed_id=feed_id,
            user_id=1 + (feed_id - 1) % _USERS,
            title=pool.titles[int(rng.random() * len(pool.titles))],
            content=content,
            tags=tag_sets[topic][int(rng.random() * len(tag_sets[topic]))],
            is_read=rng.random() < _READ_RATIO,
            published_at=now - timedelta(seconds=int(rng.random() * window_s)),
            language=language,
        )


def sample_queries() -> list[tuple[str, str]]:
    """(language, query text) pairs for the demo's similarity search."""
    return list(_QUERIES)
