"""Pure batch planning: split inputs into requests bounded by count and by tokens."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(token_counts: Sequence[int], max_items: int, max_tokens: int) -> list[range]:
    """Consecutive ranges of inputs, each with at most `max_items` inputs and `max_tokens` tokens.

    An input larger than `max_tokens` on its own gets a batch of its own (callers truncate
    inputs to the per-input limit first, which is below the per-request one).
    """
    if max_items < 1 or max_tokens < 1:
        raise ValueError("max_items and max_tokens must be positive")
    batches: list[range] = []
    start = 0
    tokens = 0
    for i, count in enumerate(token_counts):
        if i > start and (i - start >= max_items or tokens + count > max_tokens):
            batches.append(range(start, i))
            start, tokens = i, 0
        tokens += count
    if start < len(token_counts):
        batches.append(range(start, len(token_counts)))
    return batches
