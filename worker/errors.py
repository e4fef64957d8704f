"""One exception tree: transient errors are retried, permanent ones are recorded and skipped."""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error the pipeline raises on purpose."""

    reason: str = "error"


class TransientError(IngestError):
    """Worth retrying later: rate limits, timeouts, 5xx, lost connections."""

    reason = "transient"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(IngestError):
    """Retrying the same input will fail the same way; record it and move on."""

    reason = "permanent"


class RateLimited(TransientError):
    """The provider answered 429, or the shared budget has no room: never a permanent failure.

    The pipeline gives such a batch back to pending (not_before = retry_after_s) without
    counting an attempt.
    """

    reason = "rate_limited"


class RateLimitDeferred(RateLimited):
    """The endpoint's shared rate budget (worker/ratelimit.py) has no room within
    RATE_LIMIT_MAX_WAIT_S: nothing was sent or reserved. Not retried in place: the batch
    goes back to pending for `retry_after_s`, so no claim or connection waits in a sleep."""


class ProviderUnavailable(TransientError):
    reason = "provider_unavailable"


class InvalidInput(PermanentError):
    """The provider rejected an input (HTTP 400)."""

    reason = "invalid_input"


class AuthenticationFailed(PermanentError):
    """The provider refused our credentials (HTTP 401/403); every item would fail alike."""

    reason = "auth_error"


class BadProviderResponse(TransientError):
    """The provider answered, but not with one vector of the right size per input."""

    reason = "bad_response"


class MisindexedResponse(BadProviderResponse):
    """The answer's `index` fields do not cover the inputs one to one (duplicates, gaps,
    missing or extra items): no vector of it can be trusted to belong to its input.

    Not retried as it stands: embed_isolating splits the batch instead, which re-asks and
    finds an input whose presence breaks the answer; that input is released (bad_response).
    """


class BadVector(PermanentError):
    """The provider's vector for one input is unusable: a non-finite value, a value no
    index type can hold, or a size other than the rest of the answer's."""

    reason = "bad_vector"


class EmbeddingDimMismatch(PermanentError):
    """The provider's vectors do not have the model's registered dimensions."""

    reason = "dimension_mismatch"


class UnknownModel(PermanentError):
    """The model is not in the embedding_models registry."""

    reason = "unknown_model"


class InvalidPayload(PermanentError):
    """A task message that does not follow the enqueue contract."""

    reason = "invalid_payload"


# Why a message, or part of one, is refused and kept as a dead letter (dead_letters.reason,
# embedder_dead_letters_total{reason}). The broker refuses values it cannot read
# (worker.messages.read_message), intake refuses bad ids and models; both raise
# worker.messages.Refused, an InvalidPayload whose reason is one of these.
# tests/unit/test_dead_letters.py checks the code records no other.
DEAD_LETTER_REASONS = (
    "not_json",  # not UTF-8 JSON
    "not_envelope",  # JSON, but not a message (no body, headers or properties)
    "bad_envelope",  # a message field missing or of the wrong type
    "body_not_base64",  # the body cannot be base64-decoded
    "unsupported_content",  # not application/json in utf-8 (pickle, …)
    "bad_body",  # the body is not JSON [args, kwargs, embed]
    "unknown_task",  # no such task is registered
    "bad_arguments",  # arguments that do not fit the task's signature
    "undeliverable",  # passed every check, yet the worker could not take it
    "invalid_ids",  # ids that are not positive 64-bit integers (only those are refused)
    "invalid_model",  # a model that is not a string (or not storable text)
    "unknown_model",  # a model that is not registered
)
