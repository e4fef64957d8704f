"""worker.batching.plan_batches: requests bounded by input count and by tokens (pure)."""

from __future__ import annotations

import itertools
import random

import pytest

from worker.batching import plan_batches


def as_lists(plan: list[range]) -> list[list[int]]:
    return [list(r) for r in plan]


@pytest.mark.parametrize(
    ("tokens", "max_items", "max_tokens", "expected"),
    [
        ([], 4, 100, []),
        ([10], 4, 100, [[0]]),
        ([1, 1, 1, 1, 1], 2, 100, [[0, 1], [2, 3], [4]]),
        ([1, 1, 1, 1], 2, 100, [[0, 1], [2, 3]]),
        ([40, 40, 40], 10, 100, [[0, 1], [2]]),
        ([50, 50, 50, 50], 10, 100, [[0, 1], [2, 3]]),  # exactly at the budget fits
        ([51, 50], 10, 100, [[0], [1]]),
        ([500], 10, 100, [[0]]),  # too big alone: its own batch, never dropped
        ([1, 500, 1], 10, 100, [[0], [1], [2]]),
        ([0, 0, 0], 2, 1, [[0, 1], [2]]),
        ([3] * 7, 1, 100, [[i] for i in range(7)]),
    ],
)
def test_plan_batches_examples(tokens, max_items, max_tokens, expected):
    assert as_lists(plan_batches(tokens, max_items, max_tokens)) == expected


@pytest.mark.parametrize(("max_items", "max_tokens"), [(0, 10), (10, 0), (-1, 10), (1, -5)])
def test_non_positive_limits_are_refused(max_items, max_tokens):
    with pytest.raises(ValueError, match="must be positive"):
        plan_batches([1, 2], max_items, max_tokens)


@pytest.mark.parametrize("seed", range(40))
def test_plan_covers_every_input_once_in_order_within_both_limits(seed):
    rng = random.Random(seed)
    n = rng.randint(0, 300)
    max_items = rng.randint(1, 64)
    max_tokens = rng.randint(1, 5000)
    tokens = [rng.choice([0, 1, rng.randint(1, 800), rng.randint(1, 8000)]) for _ in range(n)]

    plan = plan_batches(tokens, max_items, max_tokens)

    assert [i for r in plan for i in r] == list(range(n))  # each once, in order
    for r in plan:
        assert 1 <= len(r) <= max_items
        total = sum(tokens[i] for i in r)
        assert total <= max_tokens or len(r) == 1  # only a lone oversized input may exceed
    for left, right in itertools.pairwise(plan):
        # Greedy: the next input did not fit into the previous batch.
        merged = tokens[left.start : right.start + 1]
        assert len(merged) > max_items or sum(merged) > max_tokens


def test_plan_accepts_any_sequence():
    assert as_lists(plan_batches((5, 5, 5), 2, 100)) == [[0, 1], [2]]
