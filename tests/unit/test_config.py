"""Settings.from_env: every bad variable named in one error, and no secret ever printed."""

from __future__ import annotations

import pytest

from worker.config import (
    DEFAULT_DATABASE_URL,
    ConfigError,
    Settings,
    check_env_name,
    check_model_settings,
    redact_url,
    secret_from_env,
)

SECRET = "sk-live-TOPSECRET-0123456789"
DB_PASSWORD = "pg-PASSWORD-s3cr3t"
REDIS_PASSWORD = "redis-PASSWORD-hunter2"

GOOD = {
    "DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@db.internal:5432/news",
    "REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0",
    "EMBEDDING_PROVIDER": "openai",
    "OPENAI_API_KEY": SECRET,
}


def env(**overrides: str) -> dict[str, str]:
    values = dict(GOOD)
    for name, value in overrides.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    message = str(info.value)
    for secret in (SECRET, DB_PASSWORD, REDIS_PASSWORD):
        assert secret not in message
    return message


def test_a_complete_environment_is_read_into_settings():
    settings = Settings.from_env(
        env(DB_POOL_SIZE="3", DB_MAX_OVERFLOW="0", DB_POOL_TIMEOUT_S="2.5", DB_POOL_PRE_PING="off")
    )
    assert settings.database_url == GOOD["DATABASE_URL"]
    assert settings.sqlalchemy_url == (
        f"postgresql+psycopg://app:{DB_PASSWORD}@db.internal:5432/news"
    )
    assert (settings.embedding_provider, settings.openai_api_key) == ("openai", SECRET)
    assert (settings.db_pool_size, settings.db_max_overflow) == (3, 0)
    assert (settings.db_pool_timeout_s, settings.db_pool_pre_ping) == (2.5, False)
    assert settings.max_connections_per_process == 3
    assert SECRET not in repr(settings)


def test_missing_or_blank_database_url_falls_back_to_the_local_default():
    assert Settings.from_env(env(DATABASE_URL=None)).database_url == DEFAULT_DATABASE_URL
    assert Settings.from_env(env(DATABASE_URL="   ")).database_url == DEFAULT_DATABASE_URL


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"mysql://app:{DB_PASSWORD}@db/news", "DATABASE_URL must start with postgresql://"),
        ("db.internal:5432/news", "DATABASE_URL must start with"),
        ("not a url at all", "DATABASE_URL must start with"),
        (f"postgresql://app:{DB_PASSWORD}@/news", "DATABASE_URL has no host"),
        (f"postgresql://app:{DB_PASSWORD}@[::1/news", "DATABASE_URL is not a valid URL"),
    ],
)
def test_malformed_database_url_is_named_without_its_password(url, problem):
    assert problem in config_error(env(DATABASE_URL=url))


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u@h/db",
        "postgresql+psycopg://u@h:5432/db",
        "postgresql:///db?host=/var/run/postgresql",
    ],
)
def test_accepted_database_url_forms(url):
    settings = Settings.from_env(env(DATABASE_URL=url))
    assert settings.sqlalchemy_url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"http://:{REDIS_PASSWORD}@cache:6379/0", "REDIS_URL must start with redis://"),
        (f"redis://:{REDIS_PASSWORD}@/0", "REDIS_URL has no host"),
        ("cache:6379", "REDIS_URL must start with"),
    ],
)
def test_malformed_redis_url_is_named_without_its_password(url, problem):
    assert problem in config_error(env(REDIS_URL=url))


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0", "rediss://:pw@cache:6380/1", "unix:///tmp/redis.sock"]
)
def test_accepted_redis_url_forms(url):
    assert Settings.from_env(env(REDIS_URL=url)).redis_url == url


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("DB_POOL_SIZE", "ten", "DB_POOL_SIZE: expected an integer"),
        ("DB_POOL_SIZE", "2.5", "DB_POOL_SIZE: expected an integer"),
        ("DB_POOL_SIZE", "0", "DB_POOL_SIZE must be at least 1"),
        ("DB_POOL_SIZE", "-3", "DB_POOL_SIZE must be at least 1"),
        ("DB_MAX_OVERFLOW", "-1", "DB_MAX_OVERFLOW must be 0 or more"),
        ("DB_POOL_TIMEOUT_S", "soon", "DB_POOL_TIMEOUT_S: expected a number"),
        ("DB_POOL_TIMEOUT_S", "0", "DB_POOL_TIMEOUT_S must be positive"),
        ("DB_POOL_TIMEOUT_S", "-1", "DB_POOL_TIMEOUT_S must be positive"),
        ("DB_POOL_TIMEOUT_S", "nan", "DB_POOL_TIMEOUT_S"),
        ("DB_POOL_TIMEOUT_S", "inf", "DB_POOL_TIMEOUT_S"),
        ("DB_POOL_PRE_PING", "maybe", "DB_POOL_PRE_PING: expected true/false"),
        ("DB_PREPARE_THRESHOLD", "sometimes", "DB_PREPARE_THRESHOLD: expected an integer"),
        ("EMBED_BATCH_MAX", "4096", "EMBED_BATCH_MAX must be between 1 and 2048"),
        ("HNSW_INDEX_TYPE", "float16", "HNSW_INDEX_TYPE must be 'halfvec' or 'vector'"),
    ],
)
def test_bad_pool_and_batch_values_are_named(name, value, problem):
    assert problem in config_error(env(**{name: value}))


def test_a_bad_value_is_never_echoed_it_may_be_a_misplaced_secret():
    message = config_error(env(DB_POOL_SIZE=SECRET, DB_POOL_TIMEOUT_S=DB_PASSWORD))
    assert "DB_POOL_SIZE" in message and "DB_POOL_TIMEOUT_S" in message


def test_every_bad_variable_is_named_in_one_error():
    message = config_error(
        env(
            DB_POOL_SIZE="many",  # unparseable
            DATABASE_URL=f"mysql://app:{DB_PASSWORD}@db/news",  # parseable but invalid
            REDIS_URL=f"http://:{REDIS_PASSWORD}@cache/0",
            EMBED_BATCH_MAX="0",
        )
    )
    for name in ("DB_POOL_SIZE", "DATABASE_URL", "REDIS_URL", "EMBED_BATCH_MAX"):
        assert name in message, f"{name} missing from {message!r}"


@pytest.mark.parametrize("provider", ["cohere", "OpenAI-ish", "0"])
def test_unknown_provider_is_refused_with_the_known_ones(provider):
    message = config_error(env(EMBEDDING_PROVIDER=provider))
    assert "EMBEDDING_PROVIDER: unknown provider (expected one of openai, local)" in message


@pytest.mark.parametrize("provider", ["openai", "OPENAI", "local", "Local"])
def test_provider_names_are_case_insensitive(provider):
    assert Settings.from_env(env(EMBEDDING_PROVIDER=provider)).embedding_provider == (
        provider.lower()
    )


@pytest.mark.parametrize("key", [None, "", "   "])
def test_no_command_needs_an_api_key_to_start(key):
    """A key is needed only to embed through an endpoint that asks for one (worker.embedder
    parks the items of a model whose key is missing); read-only commands never need it."""
    settings = Settings.from_env(env(OPENAI_API_KEY=key))
    assert (settings.embedding_provider, settings.openai_api_key) == ("openai", None)


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("DATABASE_URL", "postgres://u@h:notaport/db"),
        ("DATABASE_URL", "postgresql://u@h:70000/db"),
        ("REDIS_URL", "redis://127.0.0.1:63x9/0"),
    ],
)
def test_a_url_with_a_bad_port_is_a_config_error_naming_the_setting(name, url):
    message = config_error(env(**{name: url}))
    assert f"{name} has an invalid port" in message


def test_local_provider_needs_no_api_key():
    settings = Settings.from_env(env(EMBEDDING_PROVIDER="local", OPENAI_API_KEY=None))
    assert (settings.embedding_provider, settings.openai_api_key) == ("local", None)


def test_cross_field_rules_are_checked():
    message = config_error(
        env(
            TASK_TIME_LIMIT_S="900",
            VISIBILITY_TIMEOUT_S="600",
            JOB_LEASE_S="10",
            JOB_HEARTBEAT_S="4",
            WORKER_STALL_TIMEOUT_S="0.5",
        )
    )
    assert "VISIBILITY_TIMEOUT_S must be greater than TASK_TIME_LIMIT_S" in message
    assert "JOB_HEARTBEAT_S must be positive and at most a third of JOB_LEASE_S" in message
    assert "WORKER_STALL_TIMEOUT_S must be 0 (off) or at least 1" in message


def test_a_lease_may_be_shorter_than_the_drain_budget_its_heartbeat_renews_it():
    settings = Settings.from_env(
        env(JOB_LEASE_S="15", JOB_HEARTBEAT_S="5", EMBED_DRAIN_BUDGET_S="60")
    )
    assert (settings.job_lease_s, settings.job_heartbeat_s) == (15, 5.0)
    assert "JOB_LEASE_S" in config_error(env(JOB_LEASE_S="0"))
    assert "JOB_HEARTBEAT_S" in config_error(env(JOB_HEARTBEAT_S="0"))
    assert Settings.from_env(env(WORKER_STALL_TIMEOUT_S="0")).worker_stall_timeout_s == 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"postgresql://app:{DB_PASSWORD}@db:5432/news", "postgresql://app:***@db:5432/news"),
        (f"redis://:{REDIS_PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://app:p%40ss@db/news", "postgresql://app:***@db/news"),
        ("postgresql://app:p@ss@db/news", "postgresql://app:***@db/news"),
        ("postgresql://app@db/news", "postgresql://app@db/news"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        # libpq also takes the password as a query parameter.
        (
            f"postgresql://app@db/news?sslmode=require&password={DB_PASSWORD}",
            "postgresql://app@db/news?sslmode=require&password=***",
        ),
        ("http://[::1", "<unparseable url>"),
    ],
)
def test_redact_url_hides_any_password(url, expected):
    assert redact_url(url) == expected


def test_to_env_round_trips_through_from_env():
    settings = Settings(
        database_url="postgresql://u@h:5432/d",
        embedding_provider="openai",
        openai_api_key="sk-x",
        db_prepare_threshold=None,
        db_pool_pre_ping=False,
        embed_retry_max_wait_s=0.5,
    )
    assert Settings.from_env(settings.to_env()) == settings


def test_secret_from_env_reads_the_named_variable_of_a_mapping():
    environ = {"MODEL_B_KEY": f"  {SECRET}\n", "BLANK": "   "}
    assert secret_from_env("MODEL_B_KEY", environ) == SECRET
    assert secret_from_env("BLANK", environ) is None
    assert secret_from_env("MISSING", environ) is None


def test_secret_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("EMBEDDER_TEST_MODEL_KEY", SECRET)  # restored by monkeypatch
    assert secret_from_env("EMBEDDER_TEST_MODEL_KEY") == SECRET
    monkeypatch.delenv("EMBEDDER_TEST_MODEL_KEY")
    assert secret_from_env("EMBEDDER_TEST_MODEL_KEY") is None


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "MODEL_B_KEY", "_K", "K2"])
def test_env_names_are_accepted(name):
    assert check_env_name(name) == name


@pytest.mark.parametrize(
    "value", [SECRET, "sk-proj-abc", "openai_api_key", "2KEY", "KEY-B", "A B", "KEY=1", ""]
)
def test_anything_but_an_env_name_is_refused_without_being_echoed(value):
    with pytest.raises(ConfigError) as info:
        check_env_name(value)
    message = str(info.value)
    assert "--api-key-env must be the name of an environment variable" in message
    assert not value or value not in message
    assert ("looks like an API key" in message) == value.startswith("sk-")


def test_model_settings_are_checked_together():
    with pytest.raises(ConfigError) as info:
        check_model_settings(
            "local",
            base_url="ftp://host",
            api_key_env=SECRET,
            batch_max=4096,
            batch_max_tokens=0,
        )
    message = str(info.value)
    assert SECRET not in message
    for problem in (
        "--api-key-env must be the name",
        "--base-url must be an http:// or https:// URL",
        "apply to provider openai only",
        "--batch-max must be between 1 and 2048",
        "--batch-max-tokens must be at least 1",
    ):
        assert problem in message
    with pytest.raises(ConfigError, match="--provider must be one of openai, local"):
        check_model_settings("cohere")
    check_model_settings("local", batch_max=8)
    check_model_settings(
        "openai", base_url="https://api.example/v1", api_key_env="KEY", batch_max_tokens=1
    )
