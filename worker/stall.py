"""Is each worker still consuming? The rule, and one progress record per worker in Redis.

Celery/kombu consumers can stay connected to Redis yet stop consuming after a broker reset
(Celery issues #10205, #10302): the worker answers pings, so nothing restarts it, while its
queue fills. The watchdog in each worker's main process (tasks/watchdog.py) looks every few
seconds at its own queues and at what it received:

    stalled  =  its queues had ready messages at every look for WORKER_STALL_TIMEOUT_S,
                it had room for more all along (fewer messages held than its prefetch limit),
                and it received none.

A worker that is merely busy holds its prefetch limit and is not stalled; one whose queues
other workers keep empty is not either (nothing waits for it). A stalled worker records the
stall, logs one ERROR line and exits with status 1 for its supervisor to restart it.

The records live in Redis, `embedder:worker-progress:<node name>`, a JSON object that expires
by itself (PROGRESS_TTL_S after the last look): they describe the broker side of a worker,
whose main process holds no database connection (engines are built per pool child), and a
worker that is gone leaves no stale row behind. `embedder health` reads them: a stalled
worker fails its `worker` check until its record expires or the restarted worker (same node
name) replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

PROGRESS_KEY = "embedder:worker-progress:{node}"
PROGRESS_MATCH = "embedder:worker-progress:*"
# kombu's Redis transport keeps a queue's messages of priority p > 0 in the list
# "<queue>\x06\x16<p>" (priority steps 0, 3, 6, 9); priority 0 is the list "<queue>".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def tick_s(timeout_s: float) -> float:
    """How often the watchdog looks: ten looks per timeout, between 0.5 and 5 seconds."""
    return min(5.0, max(0.5, timeout_s / 10))


def record_ttl_s(timeout_s: float) -> float:
    """How long a record outlives the worker's last look (a stall stays visible a while)."""
    return max(60.0, 3 * tick_s(timeout_s))


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding `queue`'s messages, every priority."""
    return [queue, *(f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS)]


def ready_messages(client: Any, queues: Sequence[str]) -> int:
    """Messages waiting in these queues (not yet delivered to any worker)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


@dataclass
class Progress:
    """One worker's consumption as its watchdog last saw it."""

    node: str
    pid: int
    queues: list[str]
    stall_timeout_s: float
    checked_at: float  # time.time() of the look
    received: int  # messages received since the worker started
    ready: int  # messages waiting in its queues at the look
    waiting_s: float  # how long work has waited for it while it had room and took none
    stalled: bool

    def describe(self) -> str:
        return (
            f"{self.node} consumed nothing for {self.waiting_s:.0f}s while "
            f"{', '.join(self.queues)} had {self.ready} ready"
        )


def publish(client: Any, progress: Progress, ttl_s: float) -> None:
    client.set(
        PROGRESS_KEY.format(node=progress.node),
        json.dumps(asdict(progress)),
        px=int(ttl_s * 1000),
    )


def read_all(client: Any) -> list[Progress]:
    """Every worker's record (expired ones are gone); unreadable ones are skipped."""
    keys = sorted(client.scan_iter(match=PROGRESS_MATCH, count=100))
    found: list[Progress] = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:
            continue
        try:
            found.append(Progress(**json.loads(raw)))
        except (TypeError, ValueError):
            continue
    return found


class StallDetector:
    """The stall rule over successive looks (pure: the caller brings clock and counts)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._since: float | None = None
        self._received: int | None = None

    def reset(self) -> None:
        """Forget the wait (e.g. the broker could not be asked)."""
        self._since = None

    def observe(self, now: float, *, ready: int, has_room: bool, received: int) -> float:
        """Seconds work has waited for this worker without it taking any (0 when it has not).

        `received` is the worker's running count of messages received.
        """
        took_some = self._received is not None and received != self._received
        self._received = received
        if ready <= 0 or not has_room:
            self._since = None  # nothing waited for it, or it could take nothing more
            return 0.0
        if took_some or self._since is None:
            self._since = now  # it is consuming: any wait starts now
        return now - self._since

    def is_stalled(self, waiting_s: float) -> bool:
        return self.timeout_s > 0 and waiting_s >= self.timeout_s
