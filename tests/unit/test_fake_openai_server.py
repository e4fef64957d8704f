"""The fake OpenAI embeddings server (tests/fakes/openai_server.py), driven by the real client."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from tests.fakes.openai_server import FakeOpenAI, fake_vector, token_key

DIM = 8
MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dimensions=DIM) as srv:
        yield srv


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="test", base_url=fake.url, max_retries=0, timeout=5) as c:
        yield c


def as_array(embedding: object) -> np.ndarray:
    if isinstance(embedding, str):  # explicit encoding_format="base64"
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def test_fake_vector_is_deterministic_unit_length() -> None:
    v = fake_vector("hello", 1536)
    assert v.dtype == np.float32 and v.shape == (1536,)
    assert np.array_equal(v, fake_vector("hello", 1536))
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert abs(float(v @ fake_vector("world", 1536))) < 0.2
    assert fake_vector("\ud800 lone surrogate", 4).shape == (4,)


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_embedding_matches_fake_vector(
    fake: FakeOpenAI, client: openai.OpenAI, encoding_format: str | None
) -> None:
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    resp = client.embeddings.create(model=MODEL, input="hello", **kwargs)  # type: ignore[arg-type]
    assert resp.object == "list" and resp.model == MODEL
    assert [d.index for d in resp.data] == [0] and resp.data[0].object == "embedding"
    assert isinstance(resp.data[0].embedding, str) == (encoding_format == "base64")
    assert np.array_equal(as_array(resp.data[0].embedding), fake_vector("hello", DIM))
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == len(b"hello") // 4 + 1
    (rec,) = fake.requests
    assert (rec.model, rec.inputs, rec.dimensions, rec.status) == (MODEL, ["hello"], None, 200)
    assert rec.headers["authorization"] == "Bearer test" and rec.at <= time.time()


def test_list_input_keeps_order_and_dimensions(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    texts = [f"text {i}" for i in range(20)] + ["日本語のテキスト", "emoji 🎉"]
    resp = client.embeddings.create(model=MODEL, input=texts, dimensions=32)
    assert [d.index for d in resp.data] == list(range(len(texts)))
    for d, text in zip(resp.data, texts, strict=True):
        assert np.array_equal(as_array(d.embedding), fake_vector(text, 32))
    assert (fake.request_count, fake.input_count) == (1, len(texts))
    assert fake.requests[0].dimensions == 32


def test_token_array_inputs(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]])
    assert np.array_equal(as_array(resp.data[1].embedding), fake_vector(token_key([4, 5]), DIM))
    assert resp.usage.prompt_tokens == 5


def test_rate_limit_headers_and_health(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="x")
    assert int(raw.headers["x-ratelimit-limit-requests"]) >= 10_000
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) > 0
    assert raw.headers["x-ratelimit-reset-requests"] == "1s"
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (200, {"status": "ok"})
    finally:
        conn.close()


def test_fail_next_429_exposes_retry_after(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.fail_next(429, count=2, retry_after=2, retry_after_ms=1500)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as exc:
            client.embeddings.create(model=MODEL, input="x")
        assert exc.value.response.headers["retry-after"] == "2"
        assert exc.value.response.headers["retry-after-ms"] == "1500"
        assert exc.value.code == "rate_limit_exceeded"
    client.embeddings.create(model=MODEL, input="x")
    assert [r.status for r in fake.requests] == [429, 429, 200]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_fail_next_statuses(
    fake: FakeOpenAI, client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    fake.fail_next(status)
    with pytest.raises(error) as exc:
        client.embeddings.create(model=MODEL, input="x")
    assert exc.value.status_code == status
    assert isinstance(exc.value.body, dict) and set(exc.value.body) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_fail_next_custom_body(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.fail_next(400, body={"error": {"message": "custom", "type": "t", "code": "c"}})
    with pytest.raises(openai.BadRequestError, match="custom") as exc:
        client.embeddings.create(model=MODEL, input="x")
    assert exc.value.code == "c"


def test_bad_inputs_name_the_offending_index(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.bad_inputs.add("POISON")
    with pytest.raises(openai.BadRequestError, match=r"input\[2\]") as exc:
        client.embeddings.create(model=MODEL, input=["a", "b", "xxPOISONxx", "d"])
    assert exc.value.type == "invalid_request_error"
    assert len(client.embeddings.create(model=MODEL, input=["a", "b"]).data) == 2


def test_invalid_request_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="input"):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.BadRequestError, match=r"input\[1\]"):
        client.embeddings.create(model=MODEL, input=["ok", ""])


def test_require_api_key(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.require_api_key = "sk-right"
    with pytest.raises(openai.AuthenticationError) as exc:
        client.embeddings.create(model=MODEL, input="x")
    assert exc.value.code == "invalid_api_key"
    with openai.OpenAI(api_key="sk-right", base_url=fake.url, max_retries=0) as good:
        assert len(good.embeddings.create(model=MODEL, input="x").data) == 1
    fake.reset()
    assert fake.require_api_key is None


def test_short_and_wrong_dim_modes(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.next_response_mode("short")
    fake.next_response_mode("wrong_dim")
    assert len(client.embeddings.create(model=MODEL, input=["a", "b", "c"]).data) == 2
    assert len(client.embeddings.create(model=MODEL, input="a").data[0].embedding) == DIM + 1
    assert len(client.embeddings.create(model=MODEL, input="a").data[0].embedding) == DIM


def test_malformed_mode(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.next_response_mode("malformed")
    with pytest.raises(ValueError):  # this client raises json.JSONDecodeError
        client.embeddings.create(model=MODEL, input="a")
    assert fake.requests[0].status == 200


def test_hang_mode_times_out_client(fake: FakeOpenAI) -> None:
    fake.next_response_mode("hang")
    with (
        openai.OpenAI(api_key="t", base_url=fake.url, max_retries=0, timeout=0.2) as c,
        pytest.raises(openai.APITimeoutError),
    ):
        c.embeddings.create(model=MODEL, input="a")


def test_stop_is_prompt_with_a_hanging_request() -> None:
    srv = FakeOpenAI(dimensions=DIM).start()
    srv.next_response_mode("hang")
    errors: list[BaseException] = []

    def call() -> None:
        with openai.OpenAI(api_key="t", base_url=srv.url, max_retries=0, timeout=20) as c:
            try:
                c.embeddings.create(model=MODEL, input="a")
            except openai.APIError as exc:
                errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    while srv.request_count == 0:
        time.sleep(0.01)
    started = time.monotonic()
    srv.stop()
    worker.join(timeout=5)
    assert time.monotonic() - started < 2 and not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)


def test_restart_on_same_port() -> None:
    with FakeOpenAI(dimensions=DIM) as srv:
        url = srv.url
        srv.stop()
        srv.start()
        assert srv.url == url
        with openai.OpenAI(api_key="t", base_url=srv.url, max_retries=0) as c:
            assert len(c.embeddings.create(model=MODEL, input="a").data) == 1


def test_latency(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.latency_s = 0.15
    started = time.monotonic()
    client.embeddings.create(model=MODEL, input="a")
    assert time.monotonic() - started >= 0.15


def test_fault_rates_are_seeded(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    def run() -> list[int]:
        fake.reset()
        fake.fault_rates(rate_429=0.3, rate_500=0.2, retry_after=1, seed=7)
        for _ in range(30):
            try:
                client.embeddings.create(model=MODEL, input="a")
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"] == "1"
            except openai.InternalServerError:
                pass
        return [r.status for r in fake.requests]

    statuses = run()
    assert statuses == run()
    assert {200, 429, 500} == set(statuses)


def test_throughput_from_threads(fake: FakeOpenAI) -> None:
    batch = [f"document {i} " * 20 for i in range(64)]

    def work(n: int) -> None:
        with openai.OpenAI(api_key="t", base_url=fake.url, max_retries=0, timeout=10) as c:
            for _ in range(n):
                assert len(c.embeddings.create(model=MODEL, input=batch).data) == 64

    threads = [threading.Thread(target=work, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (fake.request_count, fake.input_count) == (200, 200 * 64)
    assert all(r.status == 200 for r in fake.requests)


def raw_items(client: openai.OpenAI, inputs: list[str], encoding: str = "float") -> list[dict]:
    """The answer's data items as sent (the SDK's parsing would reorder or refuse them)."""
    raw = client.embeddings.with_raw_response.create(
        model=MODEL,
        input=inputs,
        encoding_format=encoding,
    )
    return json.loads(raw.content)["data"]


@pytest.mark.parametrize(
    ("fault", "value"), [("nan", np.nan), ("inf", np.inf), ("huge", np.float32(1e5))]
)
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_input_faults_break_the_chosen_inputs_vector_only(
    fake: FakeOpenAI, client: openai.OpenAI, fault: str, value: float, encoding: str
) -> None:
    fake.input_faults = {"BAD": fault}
    items = raw_items(client, ["a", "xBADx", "c"], encoding)

    assert [item["index"] for item in items] == [0, 1, 2]
    vectors = [as_array(item["embedding"]) for item in items]
    for good, text in ((vectors[0], "a"), (vectors[2], "c")):
        assert np.array_equal(good, fake_vector(text, DIM))
    broken, expected = vectors[1], fake_vector("xBADx", DIM).copy()
    expected[1] = value
    assert np.array_equal(broken, expected, equal_nan=True)
    assert len(raw_items(client, ["a", "c"], encoding)) == 2  # other requests are untouched


def test_input_faults_wrong_size_and_indexes(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    inputs = ["a", "b", "xBADx"]
    fake.input_faults = {"BAD": "wrong_dim"}
    assert [len(as_array(i["embedding"])) for i in raw_items(client, inputs)] == [DIM, DIM, DIM + 1]
    fake.input_faults = {"BAD": "duplicate_index"}
    assert [i["index"] for i in raw_items(client, inputs)] == [0, 1, 0]
    assert [i["index"] for i in raw_items(client, ["xBADx", "b"])] == [0, 0, 1]
    fake.input_faults = {"BAD": "gap"}
    assert [i["index"] for i in raw_items(client, inputs)] == [0, 1, 3]
    fake.input_faults = {"BAD": "missing"}
    assert [i["index"] for i in raw_items(client, inputs)] == [0, 1]
    fake.reset()
    assert fake.input_faults == {}
    assert [i["index"] for i in raw_items(client, inputs)] == [0, 1, 2]
