"""`embedder health`: can this deployment do its job right now? One JSON document, exit 0/1.

Checks, each independent (one failing does not hide the others):
- database: reachable, and migrated to the head revision of migrations/ (a worker running
  against an old schema fails in confusing ways; this says so plainly);
- broker: Redis answers PING;
- worker: at least one Celery worker answers a control ping (optionally a named one);
- backlog: the oldest pending item of every model is younger than a threshold.

Error details are one line, with any URL password redacted: the output is safe to log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from worker.config import Settings, redact_url

CHECKS = ("database", "broker", "worker", "backlog")
DEFAULT_MAX_BACKLOG_AGE_S = 900.0


@dataclass
class Check:
    ok: bool
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.data}


@dataclass
class Health:
    checks: dict[str, Check]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "checks": {name: c.as_dict() for name, c in self.checks.items()},
        }

    def render(self) -> str:
        lines = [f"health: {'ok' if self.ok else 'FAILING'}"]
        for name, check in self.checks.items():
            lines.append(f"  {name}: {'ok' if check.ok else 'FAIL'}  {check.detail}")
        return "\n".join(lines)


def _one_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    for word in message.split():
        if "://" in word:
            message = message.replace(word, redact_url(word))
    return f"{type(exc).__name__}: {message}"[:300]


def alembic_head() -> str | None:
    """The head revision of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    from worker.cli import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def check_database(engine: Any) -> Check:
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except Exception as exc:
        return Check(False, _one_line(exc))
    current = sorted(r[0] for r in rows)
    head = alembic_head()
    data = {"revision": current[0] if len(current) == 1 else current, "head": head}
    if current != [head]:
        return Check(False, f"schema at {current or 'nothing'}, code expects {head}", data)
    return Check(True, f"reachable, at head {head}", data)


def check_broker(redis_url: str, timeout_s: float) -> Check:
    import redis

    try:
        client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return Check(False, _one_line(exc))
    return Check(True, f"{redact_url(redis_url)} answers PING")


def ping_workers(
    redis_url: str, timeout_s: float, destination: Sequence[str] | None = None
) -> list[str]:
    """Names of the Celery workers answering a control ping within `timeout_s`."""
    # Celery only here, imported lazily: worker/ stays free of it for everything else.
    from celery import Celery

    app = Celery("embedder-health", broker=redis_url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=False, broker_connection_timeout=timeout_s)
    try:
        replies = app.control.ping(
            destination=list(destination) if destination else None, timeout=timeout_s
        )
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


def check_worker(
    redis_url: str,
    timeout_s: float,
    destination: Sequence[str] | None,
    ping: Callable[[str, float, Sequence[str] | None], list[str]] = ping_workers,
) -> Check:
    try:
        names = ping(redis_url, timeout_s, destination)
    except Exception as exc:
        return Check(False, _one_line(exc))
    if not names:
        wanted = f" named {', '.join(destination)}" if destination else ""
        return Check(False, f"no worker{wanted} answered a ping within {timeout_s:g}s")
    return Check(True, f"{len(names)} answering", {"workers": names})


def check_backlog(engine: Any, max_age_s: float) -> Check:
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    """
                    SELECT model, count(*), EXTRACT(EPOCH FROM now() - min(enqueued_at))
                    FROM embedding_jobs WHERE state = 'pending' GROUP BY model ORDER BY model
                    """
                )
            ).all()
    except Exception as exc:
        return Check(False, _one_line(exc))
    models = {r[0]: {"pending": int(r[1]), "oldest_pending_s": round(float(r[2]), 1)} for r in rows}
    oldest = max((m["oldest_pending_s"] for m in models.values()), default=0.0)
    data = {"oldest_pending_s": oldest, "max_age_s": max_age_s, "models": models}
    late = sorted(name for name, m in models.items() if m["oldest_pending_s"] > max_age_s)
    if late:
        return Check(
            False, f"oldest pending {oldest:.0f}s > {max_age_s:g}s for {', '.join(late)}", data
        )
    return Check(True, f"oldest pending {oldest:.0f}s (limit {max_age_s:g}s)", data)


def check_health(
    settings: Settings,
    *,
    engine: Any = None,
    max_backlog_age_s: float = DEFAULT_MAX_BACKLOG_AGE_S,
    skip: Sequence[str] = (),
    worker_names: Sequence[str] | None = None,
    timeout_s: float = 2.0,
) -> Health:
    """Run every check not in `skip`; builds (and disposes) an engine unless one is given."""
    from worker.db import make_engine

    started = time.monotonic()
    own_engine = engine is None and not {"database", "backlog"} <= set(skip)
    if own_engine:
        engine = make_engine(settings, application_name="embedder-health")
    checks: dict[str, Check] = {}
    try:
        if "database" not in skip:
            checks["database"] = check_database(engine)
        if "broker" not in skip:
            checks["broker"] = check_broker(settings.redis_url, timeout_s)
        if "worker" not in skip:
            checks["worker"] = check_worker(settings.redis_url, timeout_s, worker_names)
        if "backlog" not in skip:
            checks["backlog"] = check_backlog(engine, max_backlog_age_s)
    finally:
        if own_engine:
            engine.dispose()
    return Health(checks, time.monotonic() - started)
