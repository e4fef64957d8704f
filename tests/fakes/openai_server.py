"""A local OpenAI-compatible embeddings server for tests and benchmarks (stdlib + numpy).

``FakeOpenAI`` serves ``POST /v1/embeddings`` and ``GET /health`` on 127.0.0.1 with
deterministic vectors (see ``fake_vector``), records every request, and can inject
faults: queued error statuses, seeded random 429/500/slow responses, rejected inputs,
API-key checks, broken responses (short, wrong dimension, malformed, garbled, hanging) and
broken answers for chosen inputs (``input_faults``: NaN, inf, out-of-range or wrong-size
vectors, duplicate, out-of-range or missing indexes).

Rate limits like OpenAI's (``rpm``/``tpm``, or ``set_limits`` while it runs): a request
bucket and a token bucket per server, each full at the limit and refilling continuously
over ``window_s`` (60 s, as OpenAI's per-minute limits; shorter in tests). A request that
does not fit is answered 429 with ``retry-after``/``retry-after-ms`` and counts nothing;
every answer carries ``x-ratelimit-limit/remaining/reset-{requests,tokens}`` (resets as
OpenAI writes them: ``6m0s``, ``1s``, ``120ms``, ``1m30.5s``) and a 200 its ``usage``.
``tokenizer="cl100k"`` counts tokens with the offline cl100k_base encoder (bpe-openai), as
the provider does; the default, ``"bytes"``, is UTF-8 bytes / 4 + 1 per input.

    with FakeOpenAI(dimensions=8) as server:
        client = openai.OpenAI(api_key="test", base_url=server.url)

Standalone: ``python -m tests.fakes.openai_server --port 8089 --latency-ms 100``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import itertools
import json
import math
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

ResponseMode = Literal["short", "wrong_dim", "malformed", "garbled", "hang"]
# How the answer for an input containing one of ``FakeOpenAI.input_faults``' needles is
# broken, on every otherwise-successful response:
# - "nan", "inf": that value at position 1 of its vector (JSON ``NaN``/``Infinity`` in float
#   encoding, as Python's json writes them; the IEEE bits in base64);
# - "huge": 1e5 at position 1 (finite in float32, beyond halfvec's ±65504);
# - "wrong_dim": its vector has one value too many (the others are right);
# - "duplicate_index": its item carries input 0's index (0, 1, 0 for three inputs); for
#   input 0 itself, its item is sent twice;
# - "gap": its item carries an index past the last input (0, 1, 3 for three inputs);
# - "missing": its item is left out.
InputFault = Literal["nan", "inf", "huge", "wrong_dim", "duplicate_index", "gap", "missing"]
MAX_INPUTS = 2048
_MALFORMED = b'{"object":"list","data":[{"object":"embedding","index":0,"embedd'
_ERROR_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", None, "Unknown request URL."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def fake_vector(text: str, dim: int) -> npt.NDArray[np.float32]:
    """The unit-length float32 vector the server returns for ``text`` at dimension ``dim``.

    SHAKE-128 output read as int16 (~15 µs for 1536 dims, 3-4x cheaper than seeding a
    numpy Generator per text); components are uniform rather than Gaussian, which is
    irrelevant for a fake: distinct texts still give near-orthogonal vectors.
    """
    raw = hashlib.shake_128(text.encode("utf-8", "surrogatepass")).digest(2 * dim)
    vec = np.frombuffer(raw, dtype="<i2").astype(np.float32)
    norm = np.float32(np.sqrt(np.dot(vec, vec)))
    return vec / norm if norm else np.full(dim, dim**-0.5, dtype=np.float32)


def token_key(tokens: list[int]) -> str:
    """The text a token-array input is recorded (and hashed by ``fake_vector``) as."""
    return "<tokens " + " ".join(map(str, tokens)) + ">"


@dataclass
class RecordedRequest:
    model: str
    inputs: list[str]
    dimensions: int | None
    headers: dict[str, str]  # names lower-cased
    status: int
    at: float  # time.time() on arrival
    tokens: int = 0  # the request's tokens as the server counts them (``tokenizer``)


@dataclass
class _Parsed:
    model: str = ""
    inputs: list[str] = field(default_factory=list)
    dimensions: int | None = None
    encoding: str = "float"
    tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    delay_s: float = 0.0


@dataclass(frozen=True)
class _Rates:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    slow_s: float = 0.0
    retry_after: float = 0.0


def _error(
    status: int, message: str | None = None, headers: dict[str, str] | None = None
) -> _Reply:
    kind, code, default = _ERROR_KINDS.get(status, ("api_error", None, f"HTTP {status}"))
    err = {"message": message or default, "type": kind, "param": None, "code": code}
    return _Reply(status, headers or {}, json.dumps({"error": err}).encode())


def _parse(raw: bytes, count: Any = None) -> _Parsed:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _Parsed(error="We could not parse the JSON body of your request.")
    model, value = body.get("model"), body.get("input")
    dims, encoding = body.get("dimensions"), body.get("encoding_format") or "float"
    if isinstance(value, str) or (isinstance(value, list) and _is_tokens(value)):
        value = [value]  # a single input
    if not isinstance(model, str) or not model:
        return _Parsed(error="You must provide a model parameter.")
    p = _Parsed(model=model)
    if not isinstance(value, list) or not 0 < len(value) <= MAX_INPUTS:
        p.error = f"'$.input' is invalid: give 1 to {MAX_INPUTS} strings or token arrays."
    elif dims is not None and (type(dims) is not int or dims < 1):
        p.error = f"Invalid value for 'dimensions': {dims!r}."
    elif encoding not in ("float", "base64"):
        p.error = f"Invalid value for 'encoding_format': {encoding!r}."
    else:
        p.dimensions, p.encoding = dims, encoding
        for i, item in enumerate(value):
            if isinstance(item, list) and _is_tokens(item):
                p.tokens += len(item)
                item = token_key(item)
            elif not isinstance(item, str) or not item:
                p.error = f"'$.input[{i}]' is invalid: expected a non-empty string or tokens."
                break
            else:
                p.tokens += (
                    count(item) if count else len(item.encode("utf-8", "surrogatepass")) // 4 + 1
                )
            p.inputs.append(item)
    return p


def _is_tokens(value: list[Any]) -> bool:
    return bool(value) and all(type(t) is int for t in value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() joins handler threads itself, with a timeout
    request_queue_size = 128
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # dropped connections are normal
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        found = self.path == "/health"
        self._send(_Reply(200, {}, b'{"status":"ok"}') if found else _error(404))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/embeddings":
            return self._send(_error(404))
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake = self.server.fake
        fake._enter()
        try:
            reply = fake._process(headers, raw)
            if reply.delay_s > 0 and fake._stopped.wait(reply.delay_s):
                self.close_connection = True  # stop() cut the wait short: drop, don't answer
                return
            self._send(reply)
        finally:
            fake._leave()

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("x-request-id", f"req_fake_{next(self.server.fake._ids)}")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client gave up (timeout) or stop() cut the connection
            self.close_connection = True


class FakeOpenAI:
    """OpenAI-compatible embeddings server; all knobs may be changed while it runs."""

    def __init__(
        self,
        *,
        port: int = 0,
        dimensions: int = 1536,
        latency_s: float = 0.0,
        require_api_key: str | None = None,
        ratelimit_requests: int = 1_000_000,
        ratelimit_tokens: int = 1_000_000_000,
        rpm: int | None = None,
        tpm: int | None = None,
        window_s: float = 60.0,
        tokenizer: Literal["bytes", "cl100k"] = "bytes",
    ) -> None:
        self.dimensions = dimensions
        self.ratelimit_requests, self.ratelimit_tokens = ratelimit_requests, ratelimit_tokens
        self.tokenizer = tokenizer
        self._limit_defaults = (rpm, tpm, window_s)
        self._limits = _Limits(rpm, tpm, window_s)
        self.hang_s = 30.0
        self._port, self._defaults = port, (latency_s, require_api_key)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ids = itertools.count(1)
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        """Forget recorded requests and return every knob to its constructor value."""
        with self._lock:
            self.latency_s, self.require_api_key = self._defaults
            self.bad_inputs: set[str] = set()
            # needle -> how the answer for every input containing it is broken (InputFault)
            self.input_faults: dict[str, InputFault] = {}
            self._records: list[RecordedRequest] = []
            self._inputs = 0
            self._failures: collections.deque[_Reply] = collections.deque()
            self._modes: collections.deque[ResponseMode] = collections.deque()
            self._rates, self._rng = _Rates(), random.Random(0)
            self._window, self._window_requests, self._window_tokens = 0, 0, 0
            self._in_flight = 0
            self.max_in_flight = 0  # most embeddings requests being answered at once
            self._limits = _Limits(*self._limit_defaults)
            self.tokens_admitted = 0  # tokens of the requests the limits let through

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        if self._httpd is not None:
            raise RuntimeError("FakeOpenAI is already running")
        self._stopped.clear()
        httpd = _Server(("127.0.0.1", self._port), _Handler)
        httpd.fake, self._httpd, self._port = self, httpd, httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; cuts open connections and wakes hanging requests. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopped.set()
        httpd.shutdown()
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in (*conns.values(), self._thread):
            if thread is not None:
                thread.join(timeout=2)
        httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL for ``openai.OpenAI(base_url=...)``, e.g. ``http://127.0.0.1:PORT/v1``."""
        if not self._port:
            raise RuntimeError("FakeOpenAI has not been started")
        return f"http://127.0.0.1:{self._port}/v1"

    # -- records -------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def input_count(self) -> int:
        with self._lock:
            return self._inputs

    # -- fault injection -----------------------------------------------------------------
    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` and an OpenAI-style error."""
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        reply = _error(status, headers=headers)
        if body is not None:
            reply = _Reply(status, headers, json.dumps(body).encode())
        with self._lock:
            self._failures.extend([reply] * count)

    def fault_rates(
        self,
        rate_429: float = 0.0,
        rate_500: float = 0.0,
        rate_slow: float = 0.0,
        slow_s: float = 0.0,
        retry_after: float = 0.0,
        seed: int = 0,
    ) -> None:
        """Random faults per request; ``retry_after`` > 0 adds Retry-After to the 429s."""
        with self._lock:
            self._rates = _Rates(rate_429, rate_500, rate_slow, slow_s, retry_after)
            self._rng = random.Random(seed)

    def set_limits(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        window_s: float | None = None,
        *,
        empty: bool = False,
    ) -> None:
        """Enforce these limits from now on (None: not enforced); the buckets start full, or
        empty (``empty``: as a provider already used up by others, for steady-state tests)."""
        with self._lock:
            self._limits = _Limits(rpm, tpm, window_s or self._limits.window_s)
            if empty:
                self._limits.empty()

    @property
    def limits(self) -> tuple[int | None, int | None, float]:
        """(rpm, tpm, window_s) enforced now."""
        with self._lock:
            return self._limits.rpm, self._limits.tpm, self._limits.window_s

    def next_response_mode(self, mode: ResponseMode, count: int = 1) -> None:
        """Break the next ``count`` otherwise-successful responses in the given way."""
        with self._lock:
            self._modes.extend([mode] * count)

    # -- request handling (runs on handler threads) --------------------------------------
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns[conn] = threading.current_thread()
            else:
                self._conns.pop(conn, None)

    def _process(self, headers: dict[str, str], raw: bytes) -> _Reply:
        at, req = time.time(), _parse(raw, _cl100k_count if self.tokenizer == "cl100k" else None)
        reply = self._decide(headers, req)
        with self._lock:
            self._records.append(
                RecordedRequest(
                    req.model, req.inputs, req.dimensions, headers, reply.status, at, req.tokens
                )
            )
            self._inputs += len(req.inputs)
        return reply

    def _decide(self, headers: dict[str, str], req: _Parsed) -> _Reply:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
            rates, draw, slow_draw = self._rates, self._rng.random(), self._rng.random()
            needles = tuple(self.bad_inputs)
        bad = [i for i, text in enumerate(req.inputs) if any(n in text for n in needles)]
        delay = self.latency_s + (rates.slow_s if slow_draw < rates.rate_slow else 0.0)
        key = self.require_api_key
        if failure is not None:
            reply = failure
        elif key is not None and headers.get("authorization") != f"Bearer {key}":
            reply = _error(401)
        elif draw < rates.rate_429:
            retry = {"Retry-After": f"{rates.retry_after:g}"} if rates.retry_after > 0 else {}
            reply = _error(429, headers=retry)
        elif draw < rates.rate_429 + rates.rate_500:
            reply = _error(500)
        elif req.error is not None:
            reply = _error(400, req.error)
        elif bad:
            reply = _error(400, f"'$.input[{bad[0]}]' is invalid: input {bad[0]} was rejected.")
        else:
            with self._lock:
                limits = self._limits
                admitted, limit_headers, wait_s = limits.admit(req.tokens)
                if admitted:
                    self.tokens_admitted += req.tokens
            if admitted:
                return self._success(req, delay, limit_headers)
            # Enforced limits and no room: a 429 like OpenAI's, answered at once.
            headers = dict(limit_headers or {})
            headers["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
            headers["retry-after"] = str(max(1, math.ceil(wait_s)))
            reply = _error(429, _limit_message(limits, req.tokens), headers)
            return _Reply(429, reply.headers, reply.body, min(delay, 0.02))
        return _Reply(reply.status, reply.headers, reply.body, delay)

    def _success(
        self, req: _Parsed, delay: float, limit_headers: dict[str, str] | None = None
    ) -> _Reply:
        with self._lock:
            mode = self._modes.popleft() if self._modes else None
            window = int(time.monotonic())
            if window != self._window:
                self._window, self._window_requests, self._window_tokens = window, 0, 0
            self._window_requests += 1
            self._window_tokens += req.tokens
            used = self._window_requests, self._window_tokens
        headers = limit_headers or {
            "x-ratelimit-limit-requests": str(self.ratelimit_requests),
            "x-ratelimit-remaining-requests": str(max(0, self.ratelimit_requests - used[0])),
            "x-ratelimit-limit-tokens": str(self.ratelimit_tokens),
            "x-ratelimit-remaining-tokens": str(max(0, self.ratelimit_tokens - used[1])),
            "x-ratelimit-reset-requests": "1s",
        }
        if mode == "malformed":
            return _Reply(200, headers, _MALFORMED, delay)
        if mode == "garbled":  # valid JSON, unusable content: no index, undecodable vectors
            items = ",".join('{"object":"embedding","embedding":"not base64!"}' for _ in req.inputs)
            return _Reply(200, headers, f'{{"object":"list","data":[{items}]}}'.encode(), delay)
        dim = (req.dimensions or self.dimensions) + (1 if mode == "wrong_dim" else 0)
        inputs = req.inputs[:-1] if mode == "short" else req.inputs
        with self._lock:
            faults = dict(self.input_faults)
        items = ",".join(
            _item(index, _encode(vec, req))
            for i, t in enumerate(inputs)
            for index, vec in _answers(i, t, dim, len(req.inputs), faults)
        )
        usage = f'{{"prompt_tokens":{req.tokens},"total_tokens":{req.tokens}}}'
        body = (
            f'{{"object":"list","data":[{items}],"model":{json.dumps(req.model)},"usage":{usage}}}'
        )
        return _Reply(200, headers, body.encode(), delay + (self.hang_s if mode == "hang" else 0))


class _Limits:
    """OpenAI-style request and token buckets: full at the limit, refilling over window_s.

    Not thread-safe on its own: FakeOpenAI calls it under its lock.
    """

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float) -> None:
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self.refill_all()

    def refill_all(self) -> None:
        self._requests = float(self.rpm or 0)
        self._tokens = float(self.tpm or 0)
        self._at = time.monotonic()

    def empty(self) -> None:
        self._requests, self._tokens, self._at = 0.0, 0.0, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._at = now - self._at, now
        if self.rpm:
            self._requests = min(self.rpm, self._requests + elapsed * self.rpm / self.window_s)
        if self.tpm:
            self._tokens = min(self.tpm, self._tokens + elapsed * self.tpm / self.window_s)

    def admit(self, tokens: int) -> tuple[bool, dict[str, str] | None, float]:
        """(let through?, the x-ratelimit-* headers or None when not enforced, wait if not)."""
        if not self.rpm and not self.tpm:
            return True, None, 0.0
        self._refill()
        need = min(tokens, self.tpm) if self.tpm else 0
        wait = 0.0
        if self.rpm and self._requests < 1:
            wait = (1 - self._requests) * self.window_s / self.rpm
        if self.tpm and self._tokens < need:
            wait = max(wait, (need - self._tokens) * self.window_s / self.tpm)
        if wait == 0.0:
            if self.rpm:
                self._requests -= 1
            if self.tpm:
                self._tokens -= need
        return wait == 0.0, self._headers(), wait

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, limit, level in (
            ("requests", self.rpm, self._requests),
            ("tokens", self.tpm, self._tokens),
        ):
            if not limit:
                continue
            remaining = max(0, math.floor(level))
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            # Until the remaining shown is the limit again (consistent with it, as OpenAI's).
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(
                (limit - remaining) * self.window_s / limit
            )
        return headers


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes its reset headers: ``6m0s``, ``1s``, ``120ms``, ``1m30.5s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text


def _limit_message(limits: _Limits, tokens: int) -> str:
    return (
        f"Rate limit reached on tokens per min (TPM): Limit {limits.tpm}, Requested {tokens}. "
        "Please try again later."
    )


def _cl100k_count(text: str) -> int:
    """Tokens of ``text`` in cl100k_base, the offline encoder the worker truncates with."""
    if "cl100k" not in _ENCODERS:
        import bpe_openai

        _ENCODERS["cl100k"] = bpe_openai.get_encoding("cl100k_base")
    return len(_ENCODERS["cl100k"].encode_ordinary(text))


_ENCODERS: dict[str, Any] = {}


def _item(index: int, embedding: str) -> str:
    return f'{{"object":"embedding","index":{index},"embedding":{embedding}}}'


def _answers(
    i: int, text: str, dim: int, count: int, faults: dict[str, InputFault]
) -> list[tuple[int, npt.NDArray[np.float32]]]:
    """The (index, vector) items answering input ``i`` (see ``InputFault``)."""
    fault = next((f for needle, f in faults.items() if needle in text), None)
    vec = fake_vector(text, dim + (1 if fault == "wrong_dim" else 0))
    if fault in ("nan", "inf", "huge"):
        vec = vec.copy()
        vec[1 % len(vec)] = {"nan": np.nan, "inf": np.inf, "huge": 1e5}[fault]
    if fault == "missing":
        return []
    if fault == "gap":
        return [(count, vec)]
    if fault == "duplicate_index":
        return [(0, vec)] if i else [(0, vec), (0, vec)]
    return [(i, vec)]


def _encode(vec: npt.NDArray[np.float32], req: _Parsed) -> str:
    if req.encoding == "base64":
        return '"' + base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii") + '"'
    # 9 digits: exact f32; NaN and infinities as Python's json writes them.
    return "[" + ",".join(map(_float, vec.tolist())) + "]"


def _float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return f"{value:.9g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--rpm", type=int, default=None, help="enforce a request limit")
    parser.add_argument("--tpm", type=int, default=None, help="enforce a token limit")
    parser.add_argument("--window-s", type=float, default=60.0, help="limits refill over this")
    parser.add_argument("--tokenizer", choices=("bytes", "cl100k"), default="bytes")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = FakeOpenAI(
        port=args.port,
        dimensions=args.dimensions,
        latency_s=args.latency_ms / 1000,
        require_api_key=args.api_key,
        rpm=args.rpm,
        tpm=args.tpm,
        window_s=args.window_s,
        tokenizer=args.tokenizer,
    )
    with server:
        print(f"fake OpenAI embeddings server at {server.url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server._stopped.wait()


if __name__ == "__main__":
    main()
