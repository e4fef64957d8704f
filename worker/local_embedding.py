"""The offline "local" embedding provider: signed feature hashing of character n-grams.

No model, no download, no network: ``embed_texts`` turns each text into a bag of
character n-grams, weights them with sublinear term frequency and folds them into a
fixed number of dimensions with a stable signed hash (the "hashing trick"). The result
is deterministic across processes, machines and Python versions.

What "similar" means here
-------------------------
Cosine similarity between two of these vectors measures **lexical overlap**: how many
words and character substrings (weighted) the two texts share. It is *not* semantic
similarity:

* texts about the same subject that reuse the same words ("PostgreSQL index",
  「東京の天気」) come out close;
* synonyms ("car" / "automobile"), paraphrases with different wording and
  translations ("weather" / 「天気」) are *not* close;
* very common n-grams (" th", "the", "です", "の") are shared by almost every text of
  a language, so two unrelated texts in the same language still score above two texts
  in different scripts. Compare scores relative to each other, not to a fixed threshold.

Use an OpenAI-compatible provider when meaning matters; this one exists so the worker,
the demo and the tests run offline, fast and reproducibly.

Features
--------
Text is normalised with Unicode NFKC and ``str.casefold``. Each code point is put in
one of three classes: separator (whitespace, punctuation, symbols), "spaced" word
character (Latin, Cyrillic, Greek, Arabic, digits, ...) and "dense" character (scripts
written without spaces between words: Han, kana, Hangul, Thai, Lao, Khmer, Myanmar,
Tibetan, plus emoji).

* spaced runs: every word is padded with a space (``" word "``) and contributes its
  character 3-grams and 4-grams plus the whole word;
* dense runs: character 1-, 2- and 3-grams (no tokeniser is needed, so Japanese,
  Chinese and Thai work as they are).

Mixed text is handled by the same rules ("東京でPostgreSQLを使う" gives the word
``postgresql`` and the kanji/kana n-grams).

Weighting and hashing
---------------------
Each n-gram is hashed with a polynomial hash over its code points in ``uint64``
arithmetic, followed by the SplitMix64 finaliser (stable; Python's salted ``hash()`` is
never used). Every occurrence of a feature gets the weight ``(1 + log tf) / tf`` so that
the occurrences of a feature add up to the sublinear ``1 + log tf``; ``tf`` is counted
in a per-batch hash table about twice the size of the batch's n-gram occurrences, so
two distinct features rarely share a slot (when they do, both are slightly
down-weighted). The bucket is a multiply-shift reduction of the top 32 hash bits into
``[0, dimensions)`` and the sign is the lowest hash bit, so collisions in the output
space cancel out on average instead of piling up. Rows are L2-normalised; a text with no
features at all (empty, only punctuation) gets the fixed unit vector ``e_0``.

Everything is vectorised with numpy over the code points of a whole chunk of texts
(no per-n-gram Python loop); see ``bench`` for throughput.
"""

from __future__ import annotations

import functools
import threading
import unicodedata
from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["embed_texts"]

U64 = NDArray[np.uint64]

# Code point classes.
_SEP: Final = 0
_WORD: Final = 1
_DENSE: Final = 2

_SPACE: Final = 0x20
# Texts are joined into one code point buffer, separated by a space; the buffer gets two
# extra spaces at the end so that the n-gram look-ahead never runs off the end.
_SEP_BYTES: Final = " ".encode("utf-32-le")

# Texts are processed in chunks of roughly this many code points: big enough to amortise
# numpy call overhead, small enough for the temporaries to stay in cache.
_CHUNK_CHARS: Final = 1 << 16

# Polynomial base for n-grams and words (the FNV-64 prime: odd, so invertible mod 2**64).
_BASE: Final = 0x100000001B3
_BASE_INV: Final = pow(_BASE, -1, 1 << 64)
_P: Final = np.uint64(_BASE)

# SplitMix64 finaliser constants.
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)

# Feature kinds: (kind id, salt, weight). The salt keeps e.g. the 3-gram "abc" and the
# word "abc" apart; longer n-grams and whole words are more specific, so they weigh more.
_S3: Final = (0, np.uint64(0x51ED270B27A1F0E3))
_S4: Final = (1, np.uint64(0xA24BAED4963EE407))
_SW: Final = (2, np.uint64(0x9FB21C651E98DF25))
_D1: Final = (3, np.uint64(0x3C6EF372FE94F82B))
_D2: Final = (4, np.uint64(0xBB67AE8584CAA73B))
_D3: Final = (5, np.uint64(0x6A09E667F3BCC908))
_KIND_WEIGHTS: Final = np.array([1.0, 1.0, 1.5, 0.5, 1.0, 1.0, 0.0, 0.0])

# Layout of a feature key (uint64): text index in the chunk | kind | feature hash.
_TID_SHIFT: Final = 52
_KIND_SHIFT: Final = 49
_MAX_CHUNK_TEXTS: Final = 1 << (64 - _TID_SHIFT)
_HASH_MASK: Final = np.uint64((1 << _KIND_SHIFT) - 1)

# Ranges (inclusive) of scripts written without spaces, and of emoji.
_DENSE_RANGES: Final = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2600, 0x27BF),  # Miscellaneous symbols, dingbats (BMP emoji)
    (0x2E80, 0x2FDF),  # CJK and Kangxi radicals
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3031, 0x3035),  # kana repeat marks
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31A0, 0x31FF),  # Bopomofo extended, Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended-A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended-B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
)
_DENSE_SYMBOL_RANGES: Final = ((0x2600, 0x27BF),)
_NOT_WORD: Final = (
    (0x200B, 0x200F),  # zero-width space/joiners, direction marks
    (0xFE00, 0xFE0F),  # variation selectors (emoji presentation)
)


@functools.cache
def _class_table() -> NDArray[np.uint8]:
    """Class of every BMP code point (built once, ~20 ms)."""
    cats = [unicodedata.category(chr(cp))[0] for cp in range(0x10000)]
    table = np.array([_WORD if c in "LNM" else _SEP for c in cats], dtype=np.uint8)
    symbols = np.array([c == "S" for c in cats], dtype=bool)
    for lo, hi in _DENSE_RANGES:
        part = table[lo : hi + 1]
        part[part == _WORD] = _DENSE
    for lo, hi in _DENSE_SYMBOL_RANGES:
        table[lo : hi + 1][symbols[lo : hi + 1]] = _DENSE
    for lo, hi in _NOT_WORD:
        table[lo : hi + 1] = _SEP
    table.setflags(write=False)
    return table


def _classify(cp: NDArray[np.uint32]) -> NDArray[np.uint8]:
    table = _class_table()
    if cp.size == 0 or int(cp.max()) < 0x10000:
        return table[cp]
    cls = table[np.minimum(cp, 0xFFFF)]
    astral = cp > 0xFFFF
    dense = ((cp >= 0x1F000) & (cp < 0x1FB00)) | ((cp >= 0x20000) & (cp < 0x40000))
    cls[astral] = _WORD
    cls[dense] = _DENSE
    cls[cp >= 0xE0000] = _SEP  # tags, variation selectors supplement, private use
    return cls


class _Powers:
    """Cached tables of BASE**i and BASE**-i (mod 2**64) for prefix-sum word hashing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fwd: U64 = np.ones(1, dtype=np.uint64)
        self._inv: U64 = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[U64, U64]:
        fwd, inv = self._fwd, self._inv
        if fwd.size >= n:
            return fwd, inv
        with self._lock:
            size = max(n, 2 * self._fwd.size, 1 << 16)
            fwd = np.full(size, _BASE, dtype=np.uint64)
            fwd[0] = 1
            np.cumprod(fwd, out=fwd)
            inv = np.full(size, _BASE_INV, dtype=np.uint64)
            inv[0] = 1
            np.cumprod(inv, out=inv)
            fwd.setflags(write=False)
            inv.setflags(write=False)
            self._fwd, self._inv = fwd, inv
        return fwd, inv


_POWERS: Final = _Powers()


def _mix(h: U64) -> U64:
    """SplitMix64 finaliser, in place."""
    h ^= h >> np.uint64(30)
    h *= _MIX1
    h ^= h >> np.uint64(27)
    h *= _MIX2
    h ^= h >> np.uint64(31)
    return h


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _keys(h: U64, kind: int, salt: np.uint64, tid_bits: U64) -> U64:
    """Finalise raw n-gram hashes into feature keys (in place)."""
    h += salt
    _mix(h)
    h &= _HASH_MASK
    h |= tid_bits
    h |= np.uint64(kind << _KIND_SHIFT)
    return h


def _embed_chunk(texts: Sequence[str], dimensions: int) -> NDArray[np.float64]:
    """Unnormalised embeddings of at most _MAX_CHUNK_TEXTS texts."""
    n = len(texts)
    encoded = [_normalise(t).encode("utf-32-le", "surrogatepass") for t in texts]
    buf = _SEP_BYTES + _SEP_BYTES.join(encoded) + _SEP_BYTES * 3
    cp = np.frombuffer(buf, dtype=np.uint32)
    size = cp.size
    # Text index of every position, pre-shifted into the key layout. Each text owns the
    # separator after it; features are always attributed through a non-separator position.
    lengths = np.fromiter((len(e) // 4 + 1 for e in encoded), dtype=np.int64, count=n)
    tid_bits = np.empty(size, dtype=np.uint64)
    used = 1 + int(lengths.sum())
    tid_bits[0] = 0
    tid_bits[1:used] = np.repeat(np.arange(n, dtype=np.uint64) << np.uint64(_TID_SHIFT), lengths)
    tid_bits[used:] = tid_bits[used - 1]

    cls = _classify(cp)
    keys: list[U64] = []

    # Spaced scripts: 3-/4-grams of space-padded words, and whole words.
    isw = cls == _WORD
    if isw.any():
        y = np.where(isw, cp, np.uint32(_SPACE)).astype(np.uint64)
        h3 = y[:-2] * _P
        h3 += y[1:-1]
        h3 *= _P
        h3 += y[2:]
        h4 = h3[:-1] * _P
        h4 += y[3:]
        # The n-gram starting at i is attributed to position i + 1, its first inner
        # character; it is valid if all its inner characters are word characters.
        inner3 = isw[1:-1]
        inner4 = inner3[:-1] & isw[2:-1]
        keys.append(_keys(h3, *_S3, tid_bits[1:-1])[inner3])
        keys.append(_keys(h4, *_S4, tid_bits[1:-2])[inner4])

        # Whole words via prefix sums: hash(y[s:e]) = sum_j y[s+j] * B**j
        #   = (C[e] - C[s]) * B**-s  where C[i] = sum_{k<i} y[k] * B**k.
        fwd, inv = _POWERS.get(size)
        prefix = np.zeros(size + 1, dtype=np.uint64)
        np.cumsum(y * fwd[:size], out=prefix[1:])
        edges = np.diff(isw.view(np.int8))
        starts = np.flatnonzero(edges == 1) + 1
        ends = np.flatnonzero(edges == -1) + 1
        words = prefix[ends] - prefix[starts]
        words *= inv[starts]
        keys.append(_keys(words, *_SW, tid_bits[starts]))

    # Unspaced scripts: 1-, 2- and 3-grams within runs of dense characters.
    isd = cls == _DENSE
    if isd.any():
        idx = np.flatnonzero(isd)
        d1 = cp[idx].astype(np.uint64)
        m2 = isd[idx + 1]
        m3 = m2 & isd[idx + 2]
        d2 = d1 * _P
        d2 += cp[idx + 1]
        d3 = d2 * _P
        d3 += cp[idx + 2]
        t_idx = tid_bits[idx]
        keys.append(_keys(d2[m2], *_D2, t_idx[m2]))
        keys.append(_keys(d3[m3], *_D3, t_idx[m3]))
        keys.append(_keys(d1, *_D1, t_idx))

    out = np.zeros(n * dimensions, dtype=np.float64)
    key = np.concatenate(keys)
    if key.size == 0:
        return out.reshape(n, dimensions)

    # Sublinear tf: count every (text, feature) key in a hash table about twice the size
    # of the number of occurrences (Fibonacci hashing on the whole key), then give each
    # occurrence (1 + log tf) / tf so that a feature's occurrences add up to 1 + log tf.
    bits = max(12, (2 * key.size - 1).bit_length())
    slot = key * _GOLDEN
    slot >>= np.uint64(64 - bits)
    slot_i = slot.view(np.int64)
    tf = np.bincount(slot_i, minlength=1 << bits)[slot_i]
    # Weight table indexed by (kind, tf, sign bit): kind weight * (1 + log tf) / tf * sign.
    top = int(tf.max()) + 1
    ramp = np.arange(top, dtype=np.float64)
    ramp[0] = 1.0
    per_tf = (1.0 + np.log(ramp)) / ramp
    table = (_KIND_WEIGHTS[:, None, None] * per_tf[None, :, None]) * np.array([1.0, -1.0])
    kind = (key >> np.uint64(_KIND_SHIFT)) & np.uint64(7)
    kind *= np.uint64(top)
    lookup = kind.view(np.int64)
    lookup += tf
    lookup <<= 1
    lookup |= (key & np.uint64(1)).view(np.int64)
    weight = table.ravel()[lookup]

    # Bucket: multiply-shift of hash bits 16..47 into [0, dimensions).
    bucket = (key >> np.uint64(16)) & np.uint64(0xFFFFFFFF)
    bucket *= np.uint64(dimensions)
    bucket >>= np.uint64(32)
    flat = key >> np.uint64(_TID_SHIFT)
    flat *= np.uint64(dimensions)
    flat += bucket
    out += np.bincount(flat.view(np.int64), weights=weight, minlength=n * dimensions)
    return out.reshape(n, dimensions)


def embed_texts(texts: Sequence[str], dimensions: int) -> NDArray[np.float32]:
    """Embed ``texts`` into L2-normalised float32 vectors of shape (len(texts), dimensions).

    Deterministic: the same text always gives the same vector, in any process. A text
    with no features (empty, whitespace or punctuation only) gets the unit vector e_0.
    """
    if dimensions < 1:
        raise ValueError(f"dimensions must be positive, got {dimensions}")
    if isinstance(texts, str):
        raise TypeError("embed_texts expects a sequence of strings, not a single string")
    n = len(texts)
    result = np.empty((n, dimensions), dtype=np.float32)
    start = 0
    while start < n:
        stop, chars = start, 0
        while stop < n and (
            stop == start
            or (chars + len(texts[stop]) <= _CHUNK_CHARS and stop - start < _MAX_CHUNK_TEXTS)
        ):
            chars += len(texts[stop])
            stop += 1
        block = _embed_chunk(texts[start:stop], dimensions)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        empty = norms == 0.0
        block[empty, 0] = 1.0
        norms[empty] = 1.0
        block /= norms[:, None]
        result[start:stop] = block
        start = stop
    return result
