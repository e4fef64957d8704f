"""worker/broker.py copies three kombu methods to read each popped value before kombu does:
a kombu upgrade that changes them must be looked at (port the copies, then update
broker.KOMBU_FINGERPRINTS)."""

from __future__ import annotations

from worker import broker


def test_the_copied_kombu_methods_are_unchanged() -> None:
    assert broker.kombu_fingerprints() == broker.KOMBU_FINGERPRINTS, (
        "kombu changed a method worker/broker.py copies: port the change into the copy, "
        "then update KOMBU_FINGERPRINTS"
    )
