"""Embedding providers: the OpenAI-compatible client (tenacity in charge) and the local one.

One retry policy is in force: the SDK's own retries are off (`max_retries=0`) and tenacity
retries transient errors with jittered exponential waits, never shorter than the server's
`Retry-After`/`retry-after-ms`. Permanent errors surface at once.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import openai
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from worker import metrics
from worker.config import Settings, secret_from_env
from worker.errors import (
    AuthenticationFailed,
    BadProviderResponse,
    BadVector,
    EmbeddingDimMismatch,
    IngestError,
    InvalidInput,
    MisindexedResponse,
    PermanentError,
    ProviderUnavailable,
    RateLimitDeferred,
    RateLimited,
    TransientError,
)
from worker.repository import ModelInfo

logger = logging.getLogger(__name__)

Vectors = np.ndarray[Any, np.dtype[np.float32]]
Vector = np.ndarray[Any, np.dtype[np.float32]]

# The largest finite float16. The HNSW indexes store halfvec by default (HNSW_INDEX_TYPE):
# a vector with a component beyond it makes the index expression's cast, and with it the
# claim's whole write transaction, fail ("out of range for type halfvec"). Embeddings are
# normalised or close to it, so such a value is a broken vector whatever the index type.
HALFVEC_MAX = 65504.0


class BadVectors(BadVector):
    """Some vectors of an answer are unusable; the others are fine (raised by `embed`).

    `good` and `bad` are keyed by the input's offset in the request; `bad` says why.
    embed_isolating keeps the good ones and asks again for each bad one alone.
    """

    def __init__(self, good: dict[int, Vector], bad: dict[int, str], count: int) -> None:
        shown = "; ".join(f"input {i} of {count}: {why}" for i, why in sorted(bad.items())[:3])
        super().__init__(f"{len(bad)} unusable vector(s): {shown}")
        self.good = good
        self.bad = bad


@dataclass
class EmbedStats:
    requests: int = 0
    retries: int = 0
    tokens: int = 0


class Embedder(Protocol):
    model: str
    dimensions: int
    stats: EmbedStats

    def embed(self, texts: Sequence[str], token_count: int = 0) -> Vectors:
        """One vector per text, shape (len(texts), dimensions); raise IngestError subclasses."""
        ...

    def close(self) -> None: ...


class EndpointLimiter(Protocol):
    """One provider endpoint's shared budget (worker/ratelimit.py, EndpointLimiter)."""

    def acquire(self, tokens: int) -> str:
        """Reserve a request (waiting ≤ RATE_LIMIT_MAX_WAIT_S) or raise RateLimitDeferred."""
        ...

    def settle(
        self,
        grant: str,
        *,
        used_tokens: int | None,
        headers: Mapping[str, str] | None,
        rejected: bool = False,
        retry_after_s: float | None = None,
    ) -> None: ...

    def ready_in_s(self) -> float: ...


class RateLimiter(Protocol):
    """Every endpoint's limiter (worker/ratelimit.py, RateLimits)."""

    def for_endpoint(self, base_url: str | None, key_env: str) -> EndpointLimiter: ...


@dataclass
class LocalEmbedder:
    """Deterministic character n-gram hashing (worker.local_embedding): offline, no model."""

    model: str
    dimensions: int
    stats: EmbedStats = field(default_factory=EmbedStats)

    def embed(self, texts: Sequence[str], token_count: int = 0) -> Vectors:
        from worker.local_embedding import embed_texts

        self.stats.requests += 1
        metrics.REQUESTS.labels(model=self.model).inc()
        self.stats.tokens += token_count
        return embed_texts(texts, self.dimensions)

    def close(self) -> None:
        pass


class OpenAIEmbedder:
    """Any OpenAI-compatible /v1/embeddings endpoint (OpenAI, Azure, Ollama, vLLM, TEI)."""

    def __init__(
        self,
        *,
        model: str,
        dimensions: int,
        api_key: str | None,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        retry_attempts: int = 6,
        retry_max_wait_s: float = 20.0,
        limiter: EndpointLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        key_env: str = "OPENAI_API_KEY",
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self.stats = EmbedStats()
        self._key_env = key_env  # named in the error when the provider refuses the key
        self._client = openai.OpenAI(
            api_key=api_key or "unused",
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,  # tenacity is the one retry policy
        )
        self._limiter = limiter
        self.limiter = limiter  # the pipeline asks it for room before claiming
        self._retry_attempts = retry_attempts
        self._wait = wait_random_exponential(multiplier=0.5, max=retry_max_wait_s)
        self._sleep = sleep
        # `dimensions` is only understood by text-embedding-3 and later; other servers
        # (Ollama, TEI, ada-002) reject it.
        self._send_dimensions = model.startswith("text-embedding-3")

    def close(self) -> None:
        self._client.close()

    def embed(self, texts: Sequence[str], token_count: int = 0) -> Vectors:
        retrying = Retrying(
            # A misindexed answer is not asked again as it stands: embed_isolating splits
            # the batch, which re-asks and finds an input that breaks the answer.
            retry=retry_if_exception(_is_retried),
            stop=stop_after_attempt(self._retry_attempts),
            wait=self._wait_for,
            before_sleep=self._log_retry,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(self._request, list(texts), token_count)

    def _wait_for(self, state: RetryCallState) -> float:
        jittered = float(self._wait(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and self._limiter is not None:
            # The shared limiter learned the 429 and its retry-after: the next acquire
            # waits its staggered turn (or gives the batch back), not every worker at once.
            return 0.0
        if isinstance(exc, TransientError) and exc.retry_after_s is not None:
            return max(jittered, exc.retry_after_s)
        return jittered

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = getattr(exc, "reason", "error")
        self.stats.retries += 1
        metrics.API_RETRIES.labels(reason=reason).inc()
        logger.warning(
            "embedding request failed (%s: %s); retry %s/%s in %.2fs",
            reason,
            exc,
            state.attempt_number,
            self._retry_attempts - 1,
            state.upcoming_sleep,
        )

    def _request(self, texts: list[str], token_count: int) -> Vectors:
        grant = self._limiter.acquire(token_count) if self._limiter is not None else None
        settled = False
        extra: dict[str, Any] = {}
        if self._send_dimensions:
            extra["dimensions"] = self.dimensions
        started = time.perf_counter()
        self.stats.requests += 1
        metrics.REQUESTS.labels(model=self.model).inc()
        try:
            raw = self._client.embeddings.with_raw_response.create(
                model=self.model, input=texts, encoding_format="base64", **extra
            )
            content = raw.content
        except openai.APIError as exc:
            error = classify(exc, key_env=self._key_env)
            if self._limiter is not None and grant is not None:
                settled = True
                response = getattr(exc, "response", None)
                self._limiter.settle(
                    grant,
                    used_tokens=None,
                    headers=getattr(response, "headers", None),
                    rejected=isinstance(error, RateLimited),
                    retry_after_s=error.retry_after_s if isinstance(error, RateLimited) else None,
                )
            raise error from exc
        except BaseException:
            if self._limiter is not None and grant is not None and not settled:
                self._limiter.settle(grant, used_tokens=None, headers=None)
            raise
        finally:
            metrics.API_LATENCY.observe(time.perf_counter() - started)
        used: int | None = None
        try:
            embeddings, used = _parse_body(content, len(texts))
        finally:
            if self._limiter is not None and grant is not None:
                # usage (what the provider counted) refunds or debits the estimate; an
                # unusable body keeps the estimate charged.
                self._limiter.settle(grant, used_tokens=used, headers=raw.headers)
        vectors = check_vectors([_as_array(e) for e in embeddings], self.dimensions, self.model)
        self.stats.tokens += used if used is not None else token_count
        return vectors


def _parse_body(content: bytes, expected: int) -> tuple[list[Any], int | None]:
    """(embeddings in input order, usage.total_tokens) of a 200 answer, checked by hand.

    Read with json rather than the SDK's `parse()`, whose model building for 256 embeddings
    stood out in a profile of the worker (docs/benchmarks.md); every field used is checked.
    The `index` fields must be 0 … expected - 1, each once: an answer with a duplicate, a
    gap or an item too many or too few is a MisindexedResponse, and none of its vectors is
    used (ordered by index, 0, 1, 0 would have stored one input's vector under another's id).
    """
    try:
        body = json.loads(content)
    except ValueError as exc:  # malformed JSON in a 200 answer
        raise BadProviderResponse(f"unparseable response: {exc}") from exc
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(d, dict) and type(d.get("index")) is int and "embedding" in d for d in data
    ):
        raise BadProviderResponse("response has no list of {index, embedding} objects")
    by_index: dict[int, Any] = {}
    repeated: set[int] = set()
    for d in data:
        if d["index"] in by_index:
            repeated.add(d["index"])
        by_index[d["index"]] = d["embedding"]
    if repeated or sorted(by_index) != list(range(expected)):
        raise MisindexedResponse(_misindexed(sorted(by_index), sorted(repeated), expected))
    usage = body.get("usage")
    used = usage.get("total_tokens") if isinstance(usage, dict) else None
    return [by_index[i] for i in range(expected)], used if isinstance(used, int) else None


def _misindexed(indexes: list[int], repeated: list[int], expected: int) -> str:
    """What is wrong with an answer's indexes, for the job's last_error."""
    missing = sorted(set(range(expected)) - set(indexes))
    extra = [i for i in indexes if not 0 <= i < expected]
    problems = [
        *(f"index {i} more than once" for i in repeated[:3]),
        *(f"index {i} missing" for i in missing[:3]),
        *(f"index {i} beyond the inputs" for i in extra[:3]),
    ]
    return f"the answer's indexes do not match the {expected} inputs: {', '.join(problems)}"


def _as_array(embedding: Any) -> Vector:
    try:
        # A value beyond float32 becomes inf here (and is refused by check_vectors).
        with np.errstate(over="ignore", invalid="ignore"):
            if isinstance(embedding, str):
                return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
            return np.asarray(embedding, dtype=np.float32)
    except (ValueError, TypeError) as exc:  # bad base64, or not a list of numbers
        raise BadProviderResponse(f"undecodable embedding: {exc}") from exc


def check_vectors(rows: Sequence[Vector], dimensions: int, model: str) -> Vectors:
    """The answer's vectors as one (len(rows), dimensions) array, once each is usable.

    Usable: the model's size, every value finite and within ±HALFVEC_MAX. When every vector
    has one other size, the model is registered with the wrong dimensions:
    EmbeddingDimMismatch for the whole batch. Otherwise the unusable ones raise BadVectors
    (with the good ones), for embed_isolating to ask again for each alone.
    """
    shapes = {row.shape for row in rows}
    if rows and len(shapes) == 1 and rows[0].ndim == 1 and rows[0].shape != (dimensions,):
        raise EmbeddingDimMismatch(
            f"model {model} returned {rows[0].shape[0]} dimensions, registered with {dimensions}"
        )
    bad = {
        i: f"{row.size} values where the model has {dimensions}"
        for i, row in enumerate(rows)
        if row.shape != (dimensions,)
    }
    fitting = [i for i in range(len(rows)) if i not in bad]
    matrix = (
        np.vstack([rows[i] for i in fitting]).astype(np.float32, copy=False)
        if fitting
        else np.empty((0, dimensions), np.float32)
    )
    finite = np.isfinite(matrix)
    unusable = ~finite.all(axis=1) | (np.abs(np.where(finite, matrix, 0)) > HALFVEC_MAX).any(axis=1)
    for row_number in np.flatnonzero(unusable):
        row = matrix[row_number]
        j = int(np.flatnonzero(~np.isfinite(row) | (np.abs(row) > HALFVEC_MAX))[0])
        bad[fitting[row_number]] = (
            f"non-finite value {row[j]:g} at position {j}"
            if not np.isfinite(row[j])
            else f"value {row[j]:g} at position {j} beyond halfvec's ±{HALFVEC_MAX:g}"
        )
    if bad:
        good = {i: matrix[n] for n, i in enumerate(fitting) if i not in bad}
        raise BadVectors(good, bad, len(rows))
    return matrix


def rate_wait_s(embedder: Embedder) -> float:
    """Seconds until the embedder's endpoint has rate budget again (0 when unlimited)."""
    limiter = embedder.limiter if isinstance(embedder, OpenAIEmbedder) else None
    if limiter is None:
        return 0.0
    try:
        return float(limiter.ready_in_s())
    except Exception as exc:  # Redis unreachable: the request itself will say so
        logger.debug("could not read the rate budget: %s", exc)
        return 0.0


def _is_retried(exc: BaseException) -> bool:
    # A deferral is not retried in place: the pipeline gives the batch back to pending.
    return isinstance(exc, TransientError) and not isinstance(
        exc, MisindexedResponse | RateLimitDeferred
    )


def classify(
    exc: openai.APIError, *, key_env: str = "OPENAI_API_KEY"
) -> TransientError | PermanentError:
    """Map an openai exception to our tree: what to retry and what to record.

    `key_env` is the variable that held the key, named when the credentials are refused.
    """
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return ProviderUnavailable(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return AuthenticationFailed(
            f"the embedding API refused the credentials (HTTP {exc.status_code}); check {key_env}"
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _error_message(exc)
        if status == 429:
            return RateLimited(f"HTTP 429: {message}", retry_after_s=retry_after(exc.response))
        if status >= 500 or status in (408, 409):
            return ProviderUnavailable(
                f"HTTP {status}: {message}", retry_after_s=retry_after(exc.response)
            )
        if status in (400, 413, 422):
            return InvalidInput(f"HTTP {status}: {message}")
        return PermanentError(f"HTTP {status}: {message}")
    return BadProviderResponse(f"{type(exc).__name__}: {exc}")


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
    return str(exc.message)[:500]


def retry_after(response: Any) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms wins over Retry-After)."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    seconds = headers.get("retry-after")
    if seconds:
        try:
            return float(seconds)
        except ValueError:
            return None  # an HTTP date: fall back to our own backoff
    return None


def embed_isolating(
    embedder: Embedder, texts: Sequence[str], tokens: Sequence[int]
) -> tuple[dict[int, Vector], dict[int, IngestError]]:
    """Embed `texts`, isolating the inputs the provider cannot answer for; the rest is embedded.

    - A 400 (InvalidInput): the batch is split in halves until the rejected inputs are
      alone; each ends with its InvalidInput.
    - Unusable vectors (BadVectors): the good ones are kept and each bad input is asked
      again alone; unusable a second time, it ends with a BadVector naming the cause.
    - An answer whose indexes do not match the inputs (MisindexedResponse): none of its
      vectors is used; the batch is split and both halves asked again. The search goes on
      in the one half that is still misindexed; when both are (the provider answers every
      request so) or a single input is left, those inputs end with the MisindexedResponse.

    Returns vectors by input index and, for each input without one, its error: a
    PermanentError to record, or a TransientError (MisindexedResponse, reason
    bad_response) to release for a later try. Errors about the whole batch propagate.
    """
    vectors: dict[int, Vector] = {}
    errors: dict[int, IngestError] = {}

    def ask(part: range) -> MisindexedResponse | None:
        """One request for `part`, its outcome recorded; a misindexed answer is returned."""
        try:
            result = embedder.embed([texts[i] for i in part], sum(tokens[i] for i in part))
        except InvalidInput as exc:
            if len(part) == 1:
                errors[part.start] = exc
            else:
                for half in _halves(part):
                    isolate(half)
            return None
        except MisindexedResponse as exc:
            return exc
        except BadVectors as exc:
            for offset, vector in exc.good.items():
                vectors[part[offset]] = vector
            for offset, why in sorted(exc.bad.items()):
                ask_alone(part[offset], f"{why} (input {offset} of {len(part)})")
            return None
        for offset, i in enumerate(part):
            vectors[i] = result[offset]
        return None

    def ask_alone(i: int, first: str) -> None:
        """Ask again for one input whose vector was unusable the first time."""
        try:
            vectors[i] = embedder.embed([texts[i]], tokens[i])[0]
        except (BadVectors, EmbeddingDimMismatch) as exc:
            # Alone, an input's odd size is the whole answer's: still this input's fault.
            errors[i] = BadVector(f"unusable vector: {first}; asked alone: {_why(exc)}")
        except (InvalidInput, MisindexedResponse) as exc:
            errors[i] = exc

    def isolate(part: range) -> None:
        misindexed = ask(part)
        while misindexed is not None:
            if len(part) == 1:
                errors[part.start] = misindexed
                return
            left, right = _halves(part)
            on_left, on_right = ask(left), ask(right)
            if on_left is not None and on_right is not None:
                # Not one input's doing: give the part back rather than ask for each input.
                errors.update(dict.fromkeys(part, on_left))
                return
            part, misindexed = (left, on_left) if on_left is not None else (right, on_right)

    isolate(range(len(texts)))
    return vectors, errors


def _halves(part: range) -> tuple[range, range]:
    mid = part.start + len(part) // 2
    return range(part.start, mid), range(mid, part.stop)


def _why(exc: IngestError) -> str:
    if isinstance(exc, BadVectors):
        return "; ".join(exc.bad.values())
    return str(exc)


@dataclass
class MissingKeyEmbedder:
    """Stands in for an openai model whose API key variable is unset: refuses every call.

    The refusal is an AuthenticationFailed, as if the provider had answered 401, so the
    pipeline parks the items (EMBED_AUTH_BACKOFF_S, no attempt counted) and stops draining
    the model instead of crashing; the message names the variable, never a value.
    """

    model: str
    dimensions: int
    key_env: str
    stats: EmbedStats = field(default_factory=EmbedStats)

    @property
    def message(self) -> str:
        return (
            f"model {self.model} needs an API key in the environment variable {self.key_env}, "
            f"which is not set in the worker's environment; set {self.key_env} and restart "
            "the worker (or change the model's api_key_env)"
        )

    def embed(self, texts: Sequence[str], token_count: int = 0) -> Vectors:  # noqa: ARG002
        raise AuthenticationFailed(self.message)

    def close(self) -> None:
        pass


def build_embedder(
    settings: Settings,
    info: ModelInfo,
    limiter: RateLimiter | None = None,
    env: Mapping[str, str] | None = None,
) -> Embedder:
    """The embedder the model's row describes; a null setting falls back to the process's.

    provider `local` is the offline n-gram embedder. provider `openai` calls `base_url`
    (null: OPENAI_BASE_URL) with the key in the variable `api_key_env` (null: the
    OPENAI_API_KEY read at start), looked up in `env` (None: the process environment).
    The model is charged to the shared rate budget of its endpoint (base URL + key
    variable): models of one endpoint share a budget, a model with its own has its own.
    """
    if info.provider == "local":
        return LocalEmbedder(model=info.name, dimensions=info.dimensions)
    if info.provider != "openai":  # the table's CHECK allows no other value
        raise ValueError(f"model {info.name!r} has an unknown provider {info.provider!r}")
    key_env = info.api_key_env or "OPENAI_API_KEY"
    api_key = (
        settings.openai_api_key
        if info.api_key_env is None
        else secret_from_env(info.api_key_env, env)
    )
    # A key is needed by OpenAI's own API, and wherever the row names a key variable. An
    # OpenAI-compatible server at a base URL (Ollama, vLLM, TEI) may need none.
    base_url = info.base_url or settings.openai_base_url
    if not api_key and (info.api_key_env is not None or base_url is None):
        logger.error(
            "model %s: API key variable %s is not set; its items wait until it is",
            info.name,
            key_env,
        )
        return MissingKeyEmbedder(model=info.name, dimensions=info.dimensions, key_env=key_env)
    return OpenAIEmbedder(
        model=info.name,
        dimensions=info.dimensions,
        api_key=api_key or None,
        base_url=base_url,
        timeout_s=settings.openai_timeout_s,
        retry_attempts=settings.embed_retry_attempts,
        retry_max_wait_s=settings.embed_retry_max_wait_s,
        # Each endpoint + key variable has its own shared budget (a model with its own
        # base_url or api_key_env is limited apart from the process's endpoint).
        limiter=limiter.for_endpoint(base_url, key_env) if limiter is not None else None,
        key_env=key_env,
    )
