"""The model-name rule (config.check_model_name) and the settings it guards."""

from __future__ import annotations

import re

import pytest

from worker.config import MODEL_NAME_MAX, ConfigError, Settings, check_model_name

GOOD_ENV = {"EMBEDDING_PROVIDER": "local"}


@pytest.mark.parametrize(
    "name",
    [
        "text-embedding-3-small",
        "nomic-embed-text:v1.5",  # Ollama's tags
        "nice-model :x",
        "it's 100% sure",
        "名前-モデル",
        "x" * MODEL_NAME_MAX,
    ],
)
def test_printable_names_with_colons_quotes_and_percent_are_allowed(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "must not be empty"),
        (" leading", "starts or ends with white space"),
        ("trailing ", "starts or ends with white space"),
        ("tab\there", "non-printable character U+0009"),
        ("new\nline", "non-printable character U+000A"),
        ("bell\x07", "non-printable character U+0007"),
        ("zero\u200bwidth", "non-printable character U+200B"),
        ("x" * (MODEL_NAME_MAX + 1), f"is {MODEL_NAME_MAX + 1} characters long"),
    ],
)
def test_other_names_are_refused_saying_why(name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(why)):
        check_model_name(name, "--model")


def test_embedding_model_follows_the_rule() -> None:
    # (values are stripped when read, so white space around a name never reaches the rule)
    with pytest.raises(ConfigError, match=re.escape("EMBEDDING_MODEL 'a\\x07b' contains")):
        Settings.from_env({**GOOD_ENV, "EMBEDDING_MODEL": "a\x07b"})
    assert Settings.from_env({**GOOD_ENV, "EMBEDDING_MODEL": "m:latest"}).embedding_model == (
        "m:latest"
    )


def test_the_weekly_rebuild_interval_is_a_setting() -> None:
    assert Settings.from_env(GOOD_ENV).hnsw_rebuild_min_interval_h == 24.0
    assert (
        Settings.from_env(
            {**GOOD_ENV, "HNSW_REBUILD_MIN_INTERVAL_H": "0"}
        ).hnsw_rebuild_min_interval_h
        == 0.0
    )
    with pytest.raises(ConfigError, match="HNSW_REBUILD_MIN_INTERVAL_H must be 0 or more"):
        Settings.from_env({**GOOD_ENV, "HNSW_REBUILD_MIN_INTERVAL_H": "-1"})
