"""The offline "local" embedding provider: signed feature hashing of character n-grams.

No model, no download, no network: ``embed_texts`` turns each text into a bag of
character n-grams, weights them with sublinear term frequency and folds them into a
fixed number of dimensions with a stable signed hash (the "hashing trick"). The result
is deterministic: the same text gives the same vector in any process, on any machine and
in any batch. (Only another Unicode database, i.e. another Python version, can change
the vector of a text with characters whose Unicode properties changed.)

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

* spaced runs: every word is padded with the character around it, normally a space
  (``" word "``), and contributes its character 3-grams and 4-grams plus the whole word;
* dense runs: character 1-, 2- and 3-grams (no tokeniser is needed, so Japanese,
  Chinese and Thai work as they are).

Mixed text is handled by the same rules: "東京でPostgreSQLを使う" gives the word
``postgresql``, its inner n-grams (plus "でpo" and "qlを" at the edges) and the
kanji/kana n-grams.

Weighting and hashing
---------------------
Each n-gram is hashed with a polynomial hash over its code points in ``uint64``
arithmetic (a rolling hash for the n-grams, prefix sums for whole words), salted by
feature kind and passed through the SplitMix64 finaliser: stable everywhere (Python's
salted ``hash()`` is never used). Weights: whole word 1.5, 3-/4-gram and dense 2-/3-gram
1.0, dense 1-gram 0.5, times the sublinear term frequency ``1 + log tf``.

``tf`` is counted in a hash table private to each text (at least 4 slots per character,
at least 1024, indexed by the feature hash), and each occurrence gets
``(1 + log tf) / tf``. Two distinct features of a text occasionally share a slot and are
then both slightly down-weighted; against an exact count the cosine stays above 0.99.
The table depends on the text alone, so a text's vector is bit-for-bit the same in any
batch and any process.

The output bucket is a multiply-shift reduction of 32 hash bits into
``[0, dimensions)`` and the sign is another hash bit, so bucket collisions cancel out on
average instead of piling up. Rows are L2-normalised; a text without any feature (empty,
whitespace or punctuation only) gets the fixed unit vector ``e_0``.

Everything is vectorised with numpy over the code points of a chunk of texts (no
per-character or per-n-gram Python loop): several thousand texts of ~4.5 KB per second
on one core.
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
# Texts are joined into one code point buffer, each one preceded and followed by a space.
_SEP_BYTES: Final = " ".encode("utf-32-le")

# Texts are processed in chunks of roughly this many code points (a text counts for at
# least _MIN_CHUNK_COST): big enough to amortise numpy call overhead, small enough for the
# temporaries to stay in cache. Chunking never changes the result.
_CHUNK_CHARS: Final = 1 << 15
_MIN_CHUNK_COST: Final = 256

# Size of a text's term-frequency hash table, in slots per character (rounded up to a
# power of two): a text has at most ~3 n-gram occurrences per character, and fewer
# distinct ones, so slots shared by two different features are uncommon.
_TF_SLOTS_PER_CHAR: Final = 4
_TF_MIN_BITS: Final = 10

# Power tables for word hashing are cached up to this many positions (16 MB).
_POWERS_CACHE_MAX: Final = 1 << 20

# Polynomial base for n-grams and words (the FNV-64 prime: odd, so invertible mod 2**64).
_BASE: Final = 0x100000001B3
_BASE_INV: Final = pow(_BASE, -1, 1 << 64)
_P: Final = np.uint64(_BASE)

# SplitMix64 finaliser constants.
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)

# Feature kinds: (kind id, salt). The salt keeps e.g. the 3-gram "abc" and the word "abc"
# apart. A 3-gram is either "spaced" (its middle character is a word character) or "dense"
# (three dense characters); the two can never have the same content, so they share a kind.
_K3: Final = (0, np.uint64(0x51ED270B27A1F0E3))  # 3-grams
_K4: Final = (1, np.uint64(0xA24BAED4963EE407))  # 4-grams of spaced words
_KW: Final = (2, np.uint64(0x9FB21C651E98DF25))  # whole spaced words
_K1: Final = (3, np.uint64(0x3C6EF372FE94F82B))  # dense 1-grams
_K2: Final = (4, np.uint64(0xBB67AE8584CAA73B))  # dense 2-grams
# Weight of each kind: whole words are the most specific features, single dense characters
# (の, は, 的, ...) the least.
_KIND_WEIGHTS: Final = np.array([1.0, 1.0, 1.5, 0.5, 1.0, 0.0, 0.0, 0.0])

# Layout of a feature key (uint64): text index in the chunk | kind | feature hash.
_TID_SHIFT: Final = 52
_KIND_SHIFT: Final = 49
_MAX_CHUNK_TEXTS: Final = 1 << (64 - _TID_SHIFT)
_HASH_MASK: Final = np.uint64((1 << _KIND_SHIFT) - 1)

# Ranges (inclusive) of scripts written without spaces: their letters are "dense".
_DENSE_RANGES: Final = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2E80, 0x2FDF),  # CJK and Kangxi radicals
    (0x3005, 0x3007),  # 々 〆 〇  # noqa: RUF003 (the characters themselves)
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
# Symbols that are dense characters too: BMP emoji (miscellaneous symbols, dingbats).
# Astral emoji (U+1F000-U+1FAFF) and CJK extensions (U+20000-U+3FFFF) are handled in
# _classify.
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
        """Tables of at least ``n`` entries."""
        fwd, inv = self._fwd, self._inv
        if fwd.size >= n:
            return fwd, inv
        if n > _POWERS_CACHE_MAX:  # one huge text: don't keep the tables around
            return _powers(_BASE, n), _powers(_BASE_INV, n)
        with self._lock:
            if self._fwd.size < n:
                size = min(max(n, 2 * self._fwd.size, 1 << 16), _POWERS_CACHE_MAX)
                fwd, inv = _powers(_BASE, size), _powers(_BASE_INV, size)
                fwd.setflags(write=False)
                inv.setflags(write=False)
                self._fwd, self._inv = fwd, inv
            return self._fwd, self._inv


def _powers(base: int, n: int) -> U64:
    """base**i mod 2**64 for i in [0, n)."""
    table = np.full(n, base, dtype=np.uint64)
    table[0] = 1
    return np.cumprod(table, out=table)


_POWERS: Final = _Powers()


def _mix(h: U64) -> U64:
    """SplitMix64 finaliser, in place."""
    h ^= h >> np.uint64(30)
    h *= _MIX1
    h ^= h >> np.uint64(27)
    h *= _MIX2
    h ^= h >> np.uint64(31)
    return h


@functools.cache
def _nfkc_table() -> NDArray[np.uint32]:
    """NFKC image of every BMP code point whose image is a single code point (else itself)."""
    images = (unicodedata.normalize("NFKC", chr(cp)) for cp in range(0x10000))
    table = np.array(
        [ord(image) if len(image) == 1 else cp for cp, image in enumerate(images)],
        dtype=np.uint32,
    )
    table.setflags(write=False)
    return table


def _normalise(text: str) -> str:
    """``casefold(NFKC(text))``, without CPython's slow full normalisation when possible."""
    if text.isascii():
        return text.lower()  # NFKC leaves ASCII alone; casefold is lower() on ASCII
    if not unicodedata.is_normalized("NFKC", text):
        # Typical culprits are single characters with a single-character image (fullwidth
        # punctuation and letters, the ideographic space): map those with a table. If the
        # result is NFKC-normalised it *is* NFKC(text) (each character was replaced by a
        # compatibility-equivalent one); otherwise fall back to the full algorithm.
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        mapped = np.where(cps > 0xFFFF, cps, _nfkc_table()[np.minimum(cps, 0xFFFF)])
        text = mapped.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
    return text.casefold()


def _emit(
    out: list[U64],
    h: U64,
    valid: NDArray[np.bool_] | None,
    tid_bits: U64,
    kind: int,
    salt: np.uint64,
) -> None:
    """Finalise the raw hashes ``h`` (where ``valid``) into feature keys, append to ``out``.

    ``h`` is consumed: it may be modified in place.
    """
    if valid is not None:
        count = int(np.count_nonzero(valid))
        if count == 0:
            return
        if 3 * count < valid.size:  # sparse: select first, then finalise fewer values
            h, tid_bits, valid = h[valid], tid_bits[valid], None
    h += salt
    _mix(h)
    h &= _HASH_MASK
    h |= tid_bits
    h |= np.uint64(kind << _KIND_SHIFT)
    out.append(h if valid is None else h[valid])


def _embed_chunk(texts: Sequence[str], dimensions: int) -> NDArray[np.float64]:
    """Unnormalised embeddings of at most _MAX_CHUNK_TEXTS texts."""
    n = len(texts)
    encoded = [_normalise(t).encode("utf-32-le", "surrogatepass") for t in texts]
    chars = [len(e) // 4 for e in encoded]
    buf = _SEP_BYTES + _SEP_BYTES.join(encoded) + _SEP_BYTES
    cp = np.frombuffer(buf, dtype="<u4").astype(np.uint32, copy=False)
    size = cp.size
    # Text index of every position, pre-shifted into the key layout. Each text owns the
    # separator after it; features are always attributed through a non-separator position.
    tid_bits = np.empty(size, dtype=np.uint64)
    tid_bits[0] = 0
    tid_bits[1:] = np.repeat(
        np.arange(n, dtype=np.uint64) << np.uint64(_TID_SHIFT),
        np.array(chars, dtype=np.int64) + 1,
    )

    cls = _classify(cp)
    isw = cls == _WORD
    isd = cls == _DENSE
    has_words = bool(isw.any())
    has_dense = bool(isd.any())
    keys: list[U64] = []

    # One rolling polynomial hash over all positions, separators mapped to a space:
    # h2[i] = u[i..i+1], h3[i] = u[i..i+2], h4[i] = u[i..i+3]. All raw hashes are
    # computed before any is finalised (_emit works in place).
    u = np.where(cls == _SEP, np.uint32(_SPACE), cp).astype(np.uint64)
    h2 = u[:-1] * _P
    h2 += u[1:]
    h3 = h2[:-1] * _P
    h3 += u[2:]

    if has_words:
        # 4-grams of space-padded words: both middle characters are word characters.
        h4 = h3[:-1] * _P
        h4 += u[3:]
        # Whole words via prefix sums: hash(u[s:e]) = sum_j u[s+j] * B**j
        #   = (C[e] - C[s]) * B**-s  where C[i] = sum_{k<i} u[k] * B**k.
        fwd, inv = _POWERS.get(size)
        prefix = np.zeros(size + 1, dtype=np.uint64)
        np.cumsum(u * fwd[:size], out=prefix[1:])
        edges = np.diff(isw.view(np.int8))
        starts = np.flatnonzero(edges == 1) + 1
        ends = np.flatnonzero(edges == -1) + 1
        words = prefix[ends] - prefix[starts]
        words *= inv[starts]
        _emit(keys, words, None, tid_bits[starts], *_KW)
        _emit(keys, h4, isw[1:-2] & isw[2:-1], tid_bits[1:-2], *_K4)

    # 3-grams: spaced ones are attributed to their middle (word) character, so that
    # " wo", "wor", "ord", "rd " of " word " are all kept; dense ones need 3 dense characters.
    valid3 = isw[1:-1].copy()
    if has_dense:
        dense2 = isd[:-1] & isd[1:]
        valid3 |= dense2[:-1] & isd[2:]
        _emit(keys, h3, valid3, tid_bits[1:-1], *_K3)
        _emit(keys, h2, dense2, tid_bits[:-1], *_K2)
        _emit(keys, u, isd, tid_bits, *_K1)
    else:
        _emit(keys, h3, valid3, tid_bits[1:-1], *_K3)

    out = np.zeros(n * dimensions, dtype=np.float64)
    if not keys:
        return out.reshape(n, dimensions)
    key = np.concatenate(keys)

    # Sublinear tf: count every (text, feature) key in a hash table, then give each
    # occurrence (1 + log tf) / tf so that a feature's occurrences add up to 1 + log tf.
    # Every text gets its own region of the table, sized from its own length only (at
    # least _TF_SLOTS_PER_CHAR slots per character), and the slot is taken from the
    # feature hash alone: a text's vector never depends on the other texts of the batch.
    region_bits = [max(_TF_MIN_BITS, (_TF_SLOTS_PER_CHAR * c).bit_length()) for c in chars]
    sizes = np.left_shift(1, np.array(region_bits, dtype=np.uint64), dtype=np.uint64)
    offsets = np.zeros(n, dtype=np.uint64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    tid = (key >> np.uint64(_TID_SHIFT)).view(np.int64)
    slot = key & (sizes - np.uint64(1))[tid]
    slot += offsets[tid]
    slot_i = slot.view(np.int64)
    tf = np.bincount(slot_i, minlength=int(sizes.sum()))[slot_i]
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
    flat = tid * dimensions
    flat += bucket.view(np.int64)
    out += np.bincount(flat, weights=weight, minlength=n * dimensions)
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
        stop, cost = start + 1, max(len(texts[start]), _MIN_CHUNK_COST)
        while stop < n and stop - start < _MAX_CHUNK_TEXTS:
            cost += max(len(texts[stop]), _MIN_CHUNK_COST)
            if cost > _CHUNK_CHARS:
                break
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
