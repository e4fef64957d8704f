"""Reading OpenAI's rate-limit headers (worker/ratelimit.py) and writing them (the fake)."""

from __future__ import annotations

import pytest

from tests.fakes.openai_server import format_duration
from worker.ratelimit import endpoint_id, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("120ms", 0.12),
        ("1m30.5s", 90.5),
        ("2h", 7200.0),
        ("1h2m3s", 3723.0),
        ("0ms", 0.0),
        ("17.2s", 17.2),
        ("0.5", 0.5),
        (" 2s ", 2.0),
    ],
)
def test_durations_as_openai_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s", "1s2", "-"])
def test_unreadable_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("seconds", [0.0, 0.12, 0.999, 1.0, 59.5, 60.0, 90.5, 360.0])
def test_the_fake_writes_durations_the_worker_reads(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.001)


def test_endpoints_are_keyed_by_url_and_key_variable_never_the_key() -> None:
    a = endpoint_id("http://h:1/v1", "OPENAI_API_KEY")
    assert a == endpoint_id("http://h:1/v1/", "OPENAI_API_KEY")
    assert a != endpoint_id("http://h:2/v1", "OPENAI_API_KEY")
    assert a != endpoint_id("http://h:1/v1", "OTHER_KEY")
    assert endpoint_id(None, "OPENAI_API_KEY") == endpoint_id(
        "https://api.openai.com/v1", "OPENAI_API_KEY"
    )
