"""The stall rule (worker/stall.py) and how `embedder health` reports a stalled worker."""

from __future__ import annotations

from collections.abc import Sequence

from worker import stall
from worker.health import check_worker


def test_work_waiting_for_a_worker_with_room_that_takes_none_is_a_stall() -> None:
    detector = stall.StallDetector(timeout_s=10)
    assert detector.observe(0.0, ready=3, has_room=True, received=7) == 0.0
    assert detector.observe(4.0, ready=5, has_room=True, received=7) == 4.0
    assert not detector.is_stalled(9.9)
    waited = detector.observe(10.0, ready=9, has_room=True, received=7)
    assert waited == 10.0 and detector.is_stalled(waited)


def test_taking_a_message_an_empty_queue_or_a_full_prefetch_is_no_stall() -> None:
    detector = stall.StallDetector(timeout_s=10)
    detector.observe(0.0, ready=3, has_room=True, received=0)
    assert detector.observe(8.0, ready=3, has_room=True, received=0) == 8.0
    # It received one: the wait starts again.
    assert detector.observe(9.0, ready=3, has_room=True, received=1) == 0.0
    assert detector.observe(15.0, ready=3, has_room=True, received=1) == 6.0
    # Other workers emptied the queue for a moment: nothing was waiting for it.
    assert detector.observe(16.0, ready=0, has_room=True, received=1) == 0.0
    assert detector.observe(17.0, ready=2, has_room=True, received=1) == 0.0
    # Busy: it holds its prefetch limit, so it could not take more.
    assert detector.observe(30.0, ready=2, has_room=False, received=1) == 0.0
    assert detector.observe(45.0, ready=2, has_room=False, received=1) == 0.0
    # The broker could not be asked: forget the wait.
    detector.observe(46.0, ready=2, has_room=True, received=1)
    detector.reset()
    assert detector.observe(50.0, ready=2, has_room=True, received=1) == 0.0


def test_a_zero_timeout_never_stalls() -> None:
    assert not stall.StallDetector(timeout_s=0).is_stalled(1e9)


def test_looks_and_record_lifetime_follow_the_timeout() -> None:
    assert stall.tick_s(120) == 5.0
    assert stall.tick_s(3) == 0.5
    assert stall.record_ttl_s(120) == 60.0
    assert stall.queue_keys("embeddings") == [
        "embeddings",
        "embeddings\x06\x163",
        "embeddings\x06\x166",
        "embeddings\x06\x169",
    ]


def progress(node: str, *, stalled: bool) -> stall.Progress:
    return stall.Progress(
        node=node,
        pid=42,
        queues=["embeddings"],
        stall_timeout_s=120,
        checked_at=0.0,
        received=3,
        ready=17,
        waiting_s=121.0,
        stalled=stalled,
    )


def test_health_fails_the_worker_check_for_a_stalled_worker_it_names_or_any() -> None:
    stuck, fine = "embeddings@a", "embeddings@b"

    def ping(url: str, timeout: float, destination: Sequence[str] | None) -> list[str]:
        return list(destination or [stuck, fine])

    def stalls(url: str, timeout: float) -> list[stall.Progress]:
        return [progress(stuck, stalled=True)]

    check = check_worker("redis://x", 1.0, None, ping=ping, stalls=stalls)
    assert not check.ok
    assert check.detail == (
        "stalled: embeddings@a consumed nothing for 121s while embeddings had 17 ready "
        "(it exits to be restarted)"
    )
    assert check.data["stalled"] == [stuck]
    assert not check_worker("redis://x", 1.0, [stuck], ping=ping, stalls=stalls).ok
    assert check_worker("redis://x", 1.0, [fine], ping=ping, stalls=stalls).ok

    def none(url: str, timeout: float) -> list[stall.Progress]:
        return []

    assert check_worker("redis://x", 1.0, None, ping=ping, stalls=none).ok
