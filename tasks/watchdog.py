"""The stall watchdog: a thread in the worker's main process (worker/stall.py has the rule).

Started when the worker is ready (`worker_ready`, in the main process, with its consumer),
it counts the messages the consumer received (`task_received`, and the expired, revoked,
rejected or unknown ones, which are consumed too) and every few seconds compares that with
the messages waiting in the queues the worker was started with (`-Q`; a queue cancelled
later with `cancel_consumer` still counts: not consuming it is what a stall looks like).
It publishes its record for `embedder health`; on a stall it logs one ERROR line and asks
for a warm shutdown with exit status 1 (the running tasks finish their batches), so a
supervisor (compose `restart: unless-stopped`, systemd `Restart=always`) starts it again.
Should the shutdown itself hang, the process exits (status 1) after TASK_TIME_LIMIT_S + 30 s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import signals
from celery.worker import state as worker_state

from worker import stall
from worker.config import Settings

logger = logging.getLogger(__name__)

EXIT_STALLED = 1

_settings: Settings | None = None
_received = 0  # messages the consumer received (the main process's event loop counts)
_stop = threading.Event()


def install(settings: Settings) -> None:
    """Arm the watchdog for the worker this process becomes (off when the timeout is 0)."""
    global _settings
    _settings = settings


def received() -> int:
    return _received


@signals.task_received.connect
@signals.task_revoked.connect
@signals.task_rejected.connect
@signals.task_unknown.connect
def _count_received(**_: object) -> None:
    global _received
    _received += 1


@signals.worker_ready.connect
def _start(sender: Any = None, **_: object) -> None:
    settings = _settings
    if settings is None or settings.worker_stall_timeout_s <= 0 or sender is None:
        return
    queues = sorted(q.name for q in sender.task_consumer.queues)
    _stop.clear()
    threading.Thread(
        target=_watch,
        args=(sender, str(sender.hostname), queues, settings),
        name="stall-watchdog",
        daemon=True,
    ).start()


@signals.worker_shutdown.connect
def _stop_watching(**_: object) -> None:
    _stop.set()


def has_room(consumer: Any) -> bool:
    """Does the worker hold fewer messages than its prefetch limit (could it take more)?"""
    limit = getattr(getattr(consumer, "qos", None), "value", 0) or 0
    return not limit or len(worker_state.reserved_requests) < limit


def _watch(consumer: Any, node: str, queues: list[str], settings: Settings) -> None:
    timeout = settings.worker_stall_timeout_s
    tick, ttl = stall.tick_s(timeout), stall.record_ttl_s(timeout)
    detector = stall.StallDetector(timeout)
    client: redis.Redis[bytes] = redis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5
    )
    try:
        while not _stop.wait(tick):
            try:
                ready = stall.ready_messages(client, queues)
            except redis.RedisError:
                detector.reset()  # the broker is away: the consumer reconnects by itself
                continue
            waiting = detector.observe(
                time.monotonic(), ready=ready, has_room=has_room(consumer), received=_received
            )
            stalled = detector.is_stalled(waiting)
            progress = stall.Progress(
                node=node,
                pid=os.getpid(),
                queues=queues,
                stall_timeout_s=timeout,
                checked_at=time.time(),
                received=_received,
                ready=ready,
                waiting_s=round(waiting, 1),
                stalled=stalled,
            )
            try:
                stall.publish(client, progress, ttl)
            except redis.RedisError as exc:
                logger.debug("could not publish this worker's progress: %s", exc)
            if stalled and not _stop.is_set():
                logger.error(
                    "stalled: %s; the consumer stopped consuming (e.g. after a broker reset), "
                    "so this worker exits with status %s for its supervisor to restart it",
                    progress.describe(),
                    EXIT_STALLED,
                )
                _exit(settings)
                return
    finally:
        client.close()


def _exit(settings: Settings) -> None:
    """Warm shutdown with status 1; a hard exit if that has not ended the process in time."""
    worker_state.should_stop = EXIT_STALLED  # the consumer's event loop raises WorkerShutdown
    grace = settings.task_time_limit_s + 30.0

    def hard_exit() -> None:  # a daemon thread: gone with the process when the shutdown ends
        time.sleep(grace)
        logger.error("stalled: the warm shutdown did not end in %.0fs; exiting now", grace)
        os._exit(EXIT_STALLED)

    threading.Thread(target=hard_exit, name="stall-exit", daemon=True).start()
