"""The fake provider's OpenAI-style rate limits (tests/fakes/openai_server.py), driven by the
real openai client: what bench/ratelimit.py and tests/integration/test_ratelimit.py rely on."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.fakes.openai_server import FakeOpenAI
from worker.ratelimit import parse_duration

MODEL = "text-embedding-3-small"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dimensions=8, rpm=3, tpm=100, window_s=60, tokenizer="cl100k") as server:
        yield server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="k", base_url=fake.url, max_retries=0, timeout=5) as c:
        yield c


def test_usage_and_headers_count_cl100k_tokens(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=["hello world"] * 3)
    assert raw.parse().usage.prompt_tokens == 6  # "hello world" is 2 cl100k tokens
    h = raw.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-limit-tokens"]) == ("3", "100")
    assert (h["x-ratelimit-remaining-requests"], h["x-ratelimit-remaining-tokens"]) == ("2", "94")
    # Until the remaining shown is the limit again: 1 of 3 per minute, 6 of 100 per minute.
    assert parse_duration(h["x-ratelimit-reset-requests"]) == pytest.approx(20, abs=0.01)
    assert parse_duration(h["x-ratelimit-reset-tokens"]) == pytest.approx(3.6, abs=0.01)
    assert fake.requests[0].tokens == 6 and fake.tokens_admitted == 6


def test_over_the_limit_is_a_429_with_retry_after_and_the_headers(
    fake: FakeOpenAI, client: openai.OpenAI
) -> None:
    first = client.embeddings.create(model=MODEL, input=["word " * 90])
    used = first.usage.prompt_tokens  # ~90 of 100
    with pytest.raises(openai.RateLimitError) as exc:
        client.embeddings.create(model=MODEL, input=["word " * 20])  # ~20: more than left
    refused = fake.requests[-1].tokens
    h = exc.value.response.headers
    assert exc.value.code == "rate_limit_exceeded"
    assert h["x-ratelimit-remaining-tokens"] == str(100 - used)
    # The missing tokens at 100 per minute (600 ms each), less what refilled meanwhile.
    wait_ms = (refused - (100 - used)) * 600
    assert wait_ms - 300 <= int(h["retry-after-ms"]) <= wait_ms
    assert int(h["retry-after"]) == -(-int(h["retry-after-ms"]) // 1000)
    assert fake.tokens_admitted == used  # the refused request counted nothing
    with pytest.raises(openai.RateLimitError):
        for _ in range(3):  # the request limit: 3 per minute, 1 used
            client.embeddings.create(model=MODEL, input=["a"])
    assert [r.status for r in fake.requests][-1] == 429


def test_limits_change_while_it_runs(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.set_limits(rpm=500, tpm=50_000, window_s=2)
    h = client.embeddings.with_raw_response.create(model=MODEL, input="x").headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-limit-tokens"]) == ("500", "50000")
    assert fake.limits == (500, 50_000, 2)
    fake.set_limits()  # not enforced any more: the old fixed headers, never a 429
    for _ in range(5):
        client.embeddings.create(model=MODEL, input="word " * 90)
    assert {r.status for r in fake.requests} == {200}
