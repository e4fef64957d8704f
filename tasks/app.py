"""The Celery app: configuration from Settings, per-process resources, beat schedule.

Nothing connects at import time. Each worker process builds its own Deps (engine pool,
embedders, Redis client) after fork, in `worker_process_init`, or lazily on first use
for the solo/threads pools.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import redis
from celery import Celery, Task, signals
from celery.schedules import crontab
from kombu.entity import Exchange, Queue

from tasks import watchdog
from tasks.flower_auth import refuse_open_flower
from worker import broker, logs, metrics
from worker import deps as deps_mod
from worker.config import ConfigError, Settings
from worker.deps import Deps, build_deps

logger = logging.getLogger(__name__)

QUEUE = "embeddings"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (QUEUE, MAINTENANCE_QUEUE)
KICK_KEY = "embedder:drain-kick:{model}"
KICK_TTL_S = 10
# Beat's sweep: a dead worker's claims are requeued (and a drain kicked) within this of
# their lease running out, even when no drain is running to requeue them at claim time.
SWEEP_EVERY_S = 5.0
# The task modules, imported by the worker at start (this module never imports them:
# they import it, so the dependency runs one way).
TASK_MODULES = ("tasks.embeddings", "tasks.maintenance")


def _settings() -> Settings:
    """Settings, or exit with one line naming every bad variable (no traceback)."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"embedder: {exc}") from None


def make_app(settings: Settings) -> Celery:
    app = Celery(
        "embedder",
        broker=settings.redis_url,
        backend=settings.result_backend_url,
        include=list(TASK_MODULES),
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle: a pickle message is refused
        task_default_queue=QUEUE,
        # Both queues declared (as Celery would create them), so Flower's Broker page lists
        # `maintenance` even before it has inspected a worker that consumes it. Every worker
        # names its queue with -Q (Procfile, compose): one without -Q would consume both.
        task_queues=[_queue(name) for name in QUEUES],
        task_routes={"maintenance.*": {"queue": MAINTENANCE_QUEUE}},
        task_acks_late=True,
        # A task that ends in FAILURE is acked, never redelivered: a drain whose items failed
        # (tasks/embeddings.py, ItemsFailed) has committed everything, and running it again
        # would only pick up other work. Only a lost worker's message is redelivered.
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(settings.task_time_limit_s - 30, 1),
        broker_transport_options={
            # Redis redelivers unacked messages after this; it must exceed the longest task.
            "visibility_timeout": settings.visibility_timeout_s,
            **broker.transport_options(task_queues=QUEUES, dead_letter_queue=QUEUE),
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        result_expires=3600,
        task_ignore_result=settings.result_backend_url is None,
        worker_prefetch_multiplier=4,
        worker_concurrency=settings.worker_concurrency,
        worker_max_memory_per_child=settings.worker_max_memory_per_child_kb,
        worker_send_task_events=True,
        # No `task-sent` events: only tasks Celery itself publishes carry one (beat's
        # housekeeping every few seconds, drain kicks, retries; producers' messages never do), so in
        # Flower they mostly listed beat's sweeps as tasks "PENDING" for good. Tasks appear
        # when a worker receives them; queue depth is on Flower's Broker page.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        beat_schedule=beat_schedule(),
        timezone="UTC",
    )
    # redis:// and rediss:// get kombu's Redis transport with one change: a value on a queue
    # that is not a readable task message is dead-lettered instead of stopping the worker
    # (worker/broker.py; broker_transport_options above configure it). Registered before
    # the app's first connection (Celery connects lazily).
    broker.register(known_task=lambda name: _known_task(app, name))
    return app


def _known_task(app: Celery, name: str) -> bool:
    """For the broker transport: does this app run a task called `name`? Undecided (True)
    until the task modules are loaded (the worker loads them at start), so a registry that
    is not loaded yet never refuses a message."""
    tasks = app.tasks
    return name in tasks or "embeddings.embed_articles" not in tasks


def _queue(name: str) -> Queue:
    """The queue Celery would create for `name`: a direct exchange of the same name."""
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]


def beat_schedule() -> dict[str, dict[str, Any]]:
    """What runs when; docs/operations.md explains each entry."""
    return {
        "sweep-pending": {
            "task": "embeddings.sweep",
            "schedule": SWEEP_EVERY_S,
            "options": {"expires": SWEEP_EVERY_S - 1},
        },
        "reconcile-recent": {
            "task": "embeddings.reconcile",
            "schedule": 300.0,
            "options": {"expires": 240},
        },
        "ensure-partitions": {
            "task": "maintenance.ensure_partitions",
            "schedule": crontab(minute="7", hour="*/6"),
            "options": {"expires": 3600},
        },
        "hnsw-churn-check": {
            "task": "maintenance.rebuild_hnsw",
            "schedule": crontab(minute="23", hour="3"),
            "kwargs": {"force": False},
            "options": {"expires": 3600},
        },
        "hnsw-weekly-rebuild": {
            "task": "maintenance.rebuild_hnsw",
            "schedule": crontab(minute="41", hour="4", day_of_week="sun"),
            "kwargs": {"force": True},
            "options": {"expires": 3600},
        },
    }


settings = _settings()
app = make_app(settings)
watchdog.install(settings)  # a worker's main process watches its own consumption

_deps_lock = threading.Lock()
_redis: redis.Redis[bytes] | None = None


def redis_client() -> redis.Redis[bytes]:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    return _redis


def kick_drain(model: str) -> None:
    """Ask for a drain of `model`, unless one is already queued (a Redis NX key)."""
    if redis_client().set(KICK_KEY.format(model=model), "1", nx=True, ex=KICK_TTL_S):
        app.send_task("embeddings.drain", args=[model], expires=300)


def get_deps() -> Deps:
    """This process's Deps, built on first use if no hook built them."""
    try:
        return deps_mod.current()
    except RuntimeError:
        with _deps_lock:
            try:
                return deps_mod.current()
            except RuntimeError:
                built = _build()
                deps_mod.install(built)
                return built


def _build() -> Deps:
    from worker.ratelimit import build_limiter

    built = build_deps(settings, application_name=f"embedder-worker:{os.getpid()}")
    built.kick_drain = kick_drain
    built.limiter = build_limiter(settings, redis_client)
    # The series alerts read exist from the start, at 0 (docs/operations.md, "Alerts and
    # dashboard").
    metrics.init_model(settings.embedding_model)
    metrics.init_tasks(name for name in app.tasks if not name.startswith("celery."))
    return built


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    logs.configure(settings.log_level, settings.log_format)


@signals.import_modules.connect
def _refuse_open_flower(**_: object) -> None:
    # Sent by every program that loads the task modules; in `celery flower` it comes after
    # Flower has read all its options and before it listens (tasks/flower_auth.py).
    refuse_open_flower()


# Graceful stop of a pool child. SIGTERM reaches the children too when the whole process
# group is signalled (honcho, systemd's default KillMode); by default they die mid-batch,
# stranding their claim until JOB_LEASE_S. (`docker stop` signals only PID 1: there the
# running drain uses up its EMBED_DRAIN_BUDGET_S within the grace period.) Instead a busy child finishes the
# batch in hand and its drain returns early (the parent's warm shutdown then acks and exits);
# an idle child exits at once, through billiard's own handler.
_stopping = threading.Event()
_busy = 0
_in_pool_child = False
_previous_sigterm: Any = None


def stopping() -> bool:
    """True once this process was asked to stop: drains end after the current batch."""
    return _stopping.is_set()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stopping.set()
    if _busy:
        logger.warning("SIGTERM: stopping after the current batch")
        return
    if callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@signals.task_prerun.connect
def _task_started(**_: object) -> None:
    global _busy, _previous_sigterm
    _busy += 1
    # Installed here, not at process init: billiard sets its own SIGTERM handler after
    # worker_process_init. Only in prefork children: in a solo worker the main process's
    # handler is Celery's warm shutdown, which must stay.
    if _in_pool_child and threading.current_thread() is threading.main_thread():
        current = signal.getsignal(signal.SIGTERM)
        if current is not _on_sigterm:
            _previous_sigterm = current
            signal.signal(signal.SIGTERM, _on_sigterm)


@signals.task_postrun.connect
def _task_finished(task: Task | None = None, state: str | None = None, **_: object) -> None:
    global _busy
    _busy = max(_busy - 1, 0)
    # Every outcome of every task, quiet ones too (embeddings.sweep sends Flower no events):
    # a failing housekeeping task shows in the metrics and their alerts.
    if task is not None and state:
        metrics.TASKS.labels(task=task.name, state=state.lower()).inc()


@signals.worker_process_init.connect
def _open_process_resources(**_: object) -> None:
    global _redis, _in_pool_child
    _redis = None  # never share the parent's sockets with a forked child
    _in_pool_child = True
    _stopping.clear()
    deps_mod.uninstall()
    deps_mod.install(_build())


@signals.worker_process_shutdown.connect
def _close_process_resources(pid: int | None = None, **_: object) -> None:
    built = deps_mod.uninstall()
    if built is not None:
        built.close()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Drop this child's live gauges (pool connections) from the aggregate; its counters
        # stay, so totals never go backwards.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]
