"""Models as data: each embedding_models row decides how its model is embedded.

Real PostgreSQL + pgvector and real OpenAI-compatible servers (tests/fakes). The process's
own provider (conftest: the session fake server, key sk-test-secret-key-123) must see none
of the traffic of a model whose row names another endpoint, key variable or provider.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from tests.conftest import MODEL, REPO, SMALL_MODEL, fetch
from tests.fakes.openai_server import FakeOpenAI, fake_vector
from worker import maintenance, pipeline
from worker.batching import plan_batches
from worker.config import ConfigError, Settings
from worker.local_embedding import embed_texts
from worker.text import compose, prepare

pytestmark = pytest.mark.integration

PROCESS_KEY = "sk-test-secret-key-123"  # conftest.base_settings: the process's OPENAI_API_KEY
B_KEY = "sk-model-b-only-4242"
B_DIMS = 64
A_DIMS = 256


@pytest.fixture
def provider_b() -> Iterator[FakeOpenAI]:
    """A second OpenAI-compatible provider, answering only model B's own key."""
    with FakeOpenAI(dimensions=B_DIMS, require_api_key=B_KEY) as server:
        yield server


def vectors_of(deps, model: str) -> dict[int, np.ndarray]:
    rows = fetch(
        deps, "SELECT article_id, embedding FROM article_embeddings WHERE model = :m", m=model
    )
    return {a: e.to_numpy() for a, e in rows}


def texts_of(deps, ids: list[int]) -> dict[int, str]:
    rows = fetch(
        deps, "SELECT id, title, content FROM articles WHERE id = ANY(:ids)", ids=list(ids)
    )
    return {i: compose(t, c) for i, t, c in rows}


def test_a_local_and_a_hosted_model_embed_side_by_side_in_one_worker(
    make_deps, make_article, fake_openai, provider_b
):
    deps = make_deps()
    deps.secret_env = {"MODEL_B_KEY": B_KEY}  # the worker's environment, without os.environ
    a = maintenance.register_model(deps, "ngram-a", A_DIMS, "local")
    b = maintenance.register_model(
        deps, "hosted-b", B_DIMS, "openai", base_url=provider_b.url, api_key_env="MODEL_B_KEY"
    )
    assert (a.provider, a.base_url, a.api_key_env) == ("local", None, None)
    assert (b.provider, b.base_url, b.api_key_env) == ("openai", provider_b.url, "MODEL_B_KEY")
    ids = [make_article() for _ in range(30)]
    pipeline.intake(deps, ids, "ngram-a")
    pipeline.intake(deps, ids, "hosted-b")

    result_a = pipeline.drain(deps, "ngram-a")
    result_b = pipeline.drain(deps, "hosted-b")

    assert (result_a.embedded, result_a.failed, result_a.released) == (30, 0, 0)
    assert (result_b.embedded, result_b.failed, result_b.released) == (30, 0, 0)
    per_model = fetch(
        deps,
        "SELECT model, count(*), count(DISTINCT article_id) FROM article_embeddings "
        "GROUP BY model ORDER BY model",
    )
    assert [tuple(r) for r in per_model] == [("hosted-b", 30, 30), ("ngram-a", 30, 30)]
    texts = texts_of(deps, ids)
    got_a, got_b = vectors_of(deps, "ngram-a"), vectors_of(deps, "hosted-b")
    expected_a = embed_texts([texts[i] for i in ids], A_DIMS)
    for row, i in enumerate(ids):
        np.testing.assert_allclose(got_a[i], expected_a[row], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got_b[i], fake_vector(texts[i], B_DIMS), rtol=0, atol=1e-6)
    # Provider B saw model B only, with model B's key; the process's provider saw nothing.
    assert provider_b.requests
    assert {r.model for r in provider_b.requests} == {"hosted-b"}
    assert {r.headers.get("authorization") for r in provider_b.requests} == {f"Bearer {B_KEY}"}
    assert sorted(i for r in provider_b.requests for i in r.inputs) == sorted(texts.values())
    assert fake_openai.request_count == 0
    assert fetch(deps, "SELECT count(*) FROM embedding_jobs")[0][0] == 0


def test_a_model_on_process_defaults_still_uses_the_process_provider(
    deps, make_article, fake_openai, provider_b
):
    # Registered by `migrate` with nulls: embedded through EMBEDDING_PROVIDER's endpoint and
    # key, exactly as before 0006.
    info = deps.model(MODEL)
    assert (info.provider, info.base_url, info.api_key_env) == ("openai", None, None)
    assert (info.batch_max, info.batch_max_tokens) == (None, None)
    ids = [make_article() for _ in range(20)]
    pipeline.intake(deps, ids, MODEL)

    assert pipeline.drain(deps, MODEL).embedded == 20

    assert sorted(len(r.inputs) for r in fake_openai.requests) == [4, 16]  # EMBED_BATCH_MAX
    assert {r.headers.get("authorization") for r in fake_openai.requests} == {
        f"Bearer {PROCESS_KEY}"
    }
    assert provider_b.request_count == 0


def test_a_missing_key_variable_parks_the_items_and_names_the_variable(
    make_deps, make_article, fake_openai, provider_b, caplog
):
    deps = make_deps()
    deps.secret_env = {"SOME_OTHER_KEY": "sk-not-this-one"}  # MODEL_C_KEY is not set
    maintenance.register_model(
        deps, "hosted-c", B_DIMS, "openai", base_url=provider_b.url, api_key_env="MODEL_C_KEY"
    )
    maintenance.register_model(deps, "ngram-a", A_DIMS, "local")
    ids = [make_article() for _ in range(20)]
    pipeline.intake(deps, ids, "hosted-c")
    pipeline.intake(deps, ids, "ngram-a")

    result = pipeline.drain(deps, "hosted-c")  # returns: the worker does not crash

    assert result.is_stopped
    assert (result.claimed, result.embedded, result.failed) == (20, 0, 0)
    assert result.embedded + result.failed + result.released == len(ids)  # nothing lost
    rows = fetch(
        deps,
        "SELECT article_id, state, attempts, reason, last_error, "
        "not_before > now() + interval '4 minutes' FROM embedding_jobs "
        "WHERE model = 'hosted-c' ORDER BY article_id",
    )
    assert [r[:4] for r in rows] == [(i, "pending", 0, "auth_error") for i in ids]
    assert all(r[5] for r in rows)  # parked for EMBED_AUTH_BACKOFF_S, no attempt counted
    for row in rows:
        assert "MODEL_C_KEY" in row[4] and "set MODEL_C_KEY" in row[4]
        assert "sk-" not in row[4]
    assert "MODEL_C_KEY" in caplog.text and "sk-not-this-one" not in caplog.text
    assert provider_b.request_count == 0 and fake_openai.request_count == 0
    assert pipeline.drain(deps, "hosted-c").claimed == 0  # waits out the back-off
    assert fetch(deps, "SELECT count(*) FROM article_embeddings WHERE model = 'hosted-c'") == [(0,)]
    # The same worker goes on embedding its other models.
    assert pipeline.drain(deps, "ngram-a").embedded == len(ids)


def test_a_compatible_server_that_needs_no_key_is_called_without_one(make_deps, make_article):
    # Ollama, vLLM, TEI: a base URL and no OPENAI_API_KEY anywhere.
    deps = make_deps(embedding_provider="local", openai_api_key=None)
    with FakeOpenAI(dimensions=B_DIMS) as keyless:
        maintenance.register_model(deps, "hosted-k", B_DIMS, "openai", base_url=keyless.url)
        ids = [make_article() for _ in range(4)]
        pipeline.intake(deps, ids, "hosted-k")

        result = pipeline.drain(deps, "hosted-k")

        assert (result.embedded, result.failed, result.released) == (4, 0, 0)
        assert keyless.request_count >= 1
    texts = texts_of(deps, ids)
    for article_id, vector in vectors_of(deps, "hosted-k").items():
        assert np.allclose(vector, fake_vector(texts[article_id], B_DIMS), atol=1e-6)


def test_a_server_that_refuses_the_missing_key_names_openai_api_key(
    make_deps, make_article, provider_b
):
    deps = make_deps(embedding_provider="local", openai_api_key=None)
    maintenance.register_model(deps, "hosted-d", B_DIMS, "openai", base_url=provider_b.url)
    ids = [make_article() for _ in range(4)]
    pipeline.intake(deps, ids, "hosted-d")

    result = pipeline.drain(deps, "hosted-d")

    assert (result.embedded, result.released) == (0, 4)
    errors = fetch(deps, "SELECT DISTINCT reason, last_error FROM embedding_jobs")
    assert len(errors) == 1 and errors[0][0] == "auth_error"
    assert "OPENAI_API_KEY" in errors[0][1]


def test_openais_own_api_without_a_key_is_never_called(make_deps, make_article, fake_openai):
    deps = make_deps(embedding_provider="openai", openai_api_key=None, openai_base_url=None)
    maintenance.register_model(deps, "hosted-o", B_DIMS, "openai")
    ids = [make_article() for _ in range(4)]
    pipeline.intake(deps, ids, "hosted-o")

    result = pipeline.drain(deps, "hosted-o")

    assert (result.embedded, result.released) == (0, 4)
    errors = fetch(deps, "SELECT DISTINCT reason, last_error FROM embedding_jobs")
    assert len(errors) == 1 and errors[0][0] == "auth_error"
    assert "OPENAI_API_KEY" in errors[0][1] and "is not set" in errors[0][1]
    assert fake_openai.request_count == 0


def test_a_refused_own_key_is_reported_with_the_models_key_variable(
    make_deps, make_article, provider_b
):
    deps = make_deps()
    deps.secret_env = {"MODEL_B_KEY": "sk-revoked"}
    maintenance.register_model(
        deps, "hosted-b", B_DIMS, "openai", base_url=provider_b.url, api_key_env="MODEL_B_KEY"
    )
    ids = [make_article() for _ in range(3)]
    pipeline.intake(deps, ids, "hosted-b")

    assert pipeline.drain(deps, "hosted-b").released == 3

    ((reason, error),) = fetch(deps, "SELECT DISTINCT reason, last_error FROM embedding_jobs")
    assert reason == "auth_error" and "check MODEL_B_KEY" in error
    assert "sk-revoked" not in error


def _estimates(deps, ids: list[int]) -> list[int]:
    texts = texts_of(deps, ids)
    limit = deps.settings.embed_input_max_tokens
    return [prepare(texts[i], limit).token_estimate for i in ids]


def test_a_models_batch_limits_shape_its_requests(make_deps, make_article, provider_b):
    deps = make_deps(embed_batch_max=16, embed_request_concurrency=1)
    deps.secret_env = {"MODEL_B_KEY": B_KEY}
    maintenance.register_model(
        deps,
        "hosted-b",
        B_DIMS,
        "openai",
        base_url=provider_b.url,
        api_key_env="MODEL_B_KEY",
        batch_max=3,
    )
    ids = [make_article() for _ in range(10)]
    pipeline.intake(deps, ids, "hosted-b")

    result = pipeline.drain(deps, "hosted-b")

    assert result.embedded == 10
    assert [len(r.inputs) for r in provider_b.requests] == [3, 3, 3, 1]


def test_a_models_token_limit_is_capped_by_the_process_limit(make_deps, make_article, provider_b):
    # Equal-length texts: every input has the same token estimate.
    ids = [make_article(title=f"Note {n:02d}", content="pgvector " * 20) for n in range(12)]
    probe = make_deps()
    (estimate,) = set(_estimates(probe, ids))
    # The model allows 2 inputs' worth of tokens; the process allows 5: the model wins.
    deps = make_deps(embed_batch_max_tokens=5 * estimate, embed_request_concurrency=1)
    deps.secret_env = {"MODEL_B_KEY": B_KEY}
    maintenance.register_model(
        deps,
        "tight-b",
        B_DIMS,
        "openai",
        base_url=provider_b.url,
        api_key_env="MODEL_B_KEY",
        batch_max_tokens=2 * estimate,
    )
    # The model allows far more than the process: the process's limit still holds.
    maintenance.register_model(
        deps,
        "loose-b",
        B_DIMS,
        "openai",
        base_url=provider_b.url,
        api_key_env="MODEL_B_KEY",
        batch_max=2048,
        batch_max_tokens=1_000_000,
    )
    for model in ("tight-b", "loose-b"):
        pipeline.intake(deps, ids, model)
        assert pipeline.drain(deps, model).embedded == len(ids)

    sizes = {
        model: [len(r.inputs) for r in provider_b.requests if r.model == model]
        for model in ("tight-b", "loose-b")
    }
    assert sizes["tight-b"] == [len(p) for p in plan_batches([estimate] * 12, 16, 2 * estimate)]
    assert sizes["tight-b"] == [2] * 6
    assert sizes["loose-b"] == [5, 5, 2]


def test_registration_refuses_a_key_in_place_of_a_variable_name(deps):
    with pytest.raises(ConfigError) as info:
        maintenance.register_model(
            deps, "leaky", 8, "openai", api_key_env="sk-live-abcdef0123456789"
        )
    message = str(info.value)
    assert "--api-key-env" in message and "looks like an API key" in message
    assert "sk-live-abcdef0123456789" not in message
    for bad in ("model_key", "1KEY", "KEY-NAME", "KEY NAME", ""):
        with pytest.raises(ConfigError):
            maintenance.register_model(deps, "leaky", 8, "openai", api_key_env=bad or " ")
    with pytest.raises(ConfigError, match="openai only"):
        maintenance.register_model(deps, "leaky", 8, "local", api_key_env="SOME_KEY")
    assert fetch(deps, "SELECT count(*) FROM embedding_models WHERE name = 'leaky'") == [(0,)]


def test_registering_again_with_other_settings_is_refused(deps, provider_b):
    maintenance.register_model(deps, "hosted-b", B_DIMS, "openai", base_url=provider_b.url)
    again = maintenance.register_model(deps, "hosted-b", B_DIMS, "openai")  # idempotent
    assert again.base_url == provider_b.url
    with pytest.raises(ValueError, match="another base_url"):
        maintenance.register_model(
            deps, "hosted-b", B_DIMS, "openai", base_url="http://elsewhere:1/v1"
        )


def run_cli(settings: Settings, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`python -m worker.cli ARGS` with only these settings (and PATH) in its environment."""
    env = {**settings.to_env(), "PATH": os.environ.get("PATH", ""), **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "value", ["sk-proj-AbCdEf0123456789abcdef", "my_key", "MODEL KEY", "9LIVES", "KEY=VALUE"]
)
def test_cli_refuses_an_invalid_api_key_env_with_exit_2_and_one_line(settings, value):
    done = run_cli(
        settings, "models", "add", "cli-bad", "--dimensions", "8", "--api-key-env", value
    )

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("embedder: ") and "--api-key-env" in lines[0]
    assert "name of an environment variable" in lines[0]
    assert value not in done.stderr and value not in done.stdout
    if value.startswith("sk-"):
        assert "looks like an API key" in lines[0]


def test_cli_adds_a_model_with_its_provider_and_lists_its_settings_never_a_key(
    settings, deps, provider_b
):
    added = run_cli(
        settings,
        "models",
        "add",
        "cli-hosted",
        "--dimensions",
        "16",
        "--provider",
        "openai",
        "--base-url",
        provider_b.url,
        "--api-key-env",
        "CLI_MODEL_KEY",
        "--batch-max",
        "32",
        "--batch-max-tokens",
        "20000",
        CLI_MODEL_KEY="sk-cli-secret-value-77",
    )
    assert added.returncode == 0, added.stderr
    listed = run_cli(settings, "models", "list", CLI_MODEL_KEY="sk-cli-secret-value-77")

    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    assert rows["cli-hosted"] == [
        "cli-hosted",
        "16",
        "openai",
        "indexed",
        provider_b.url,
        "CLI_MODEL_KEY",
        "32",
        "20000",
    ]
    assert rows["mini-384"] == ["mini-384", "384", "openai", "indexed", "-", "-", "-", "-"]
    for output in (added.stdout, added.stderr, listed.stdout, listed.stderr):
        assert "sk-cli-secret-value-77" not in output and PROCESS_KEY not in output
    stored = fetch(
        deps,
        "SELECT provider, base_url, api_key_env, batch_max, batch_max_tokens "
        "FROM embedding_models WHERE name = 'cli-hosted'",
    )
    assert [tuple(r) for r in stored] == [("openai", provider_b.url, "CLI_MODEL_KEY", 32, 20000)]


def test_cli_help_describes_every_models_option(settings):
    done = run_cli(settings, "models", "--help")
    assert done.returncode == 0
    for option in (
        "--dimensions",
        "--provider",
        "--base-url",
        "--api-key-env",
        "--batch-max",
        "--batch-max-tokens",
        "--no-index",
    ):
        assert option in done.stdout
    assert "never the" in done.stdout  # --api-key-env: the variable's name, never the key


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["models", "add", ""], "models add needs NAME and --dimensions N"),
        (["models", "add", "some-model"], "models add needs NAME and --dimensions N"),
        (["models", "add", " padded", "--dimensions", "8"], "starts or ends with white space"),
        (["models", "add", "bell\x07", "--dimensions", "8"], "non-printable character U+0007"),
    ],
)
def test_cli_refuses_a_model_without_a_usable_name_or_dimensions_with_exit_2(
    settings, deps, args, says
):
    done = run_cli(settings, *args)

    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("embedder: ") and says in line
    assert fetch(deps, "SELECT name FROM embedding_models ORDER BY name") == [
        (SMALL_MODEL,),
        (MODEL,),
    ]
