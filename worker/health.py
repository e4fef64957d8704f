"""`embedder health`: can this deployment do its job right now? One JSON document, exit 0/1.

Checks, each independent (one failing does not hide the others):
- database: reachable, and migrated to the head revision of migrations/ (a worker running
  against an old schema fails in confusing ways; this says so plainly); it also reports
  the PostgreSQL and pgvector versions, with a warning (not a failure) for a pgvector too
  old for safe HNSW vacuums;
- broker: Redis answers PING;
- worker: at least one Celery worker answers a control ping (optionally a named one), and
  none (of the named ones) reports a stall: work waiting in its queues that it, with room
  for more, did not take (worker/stall.py);
- backlog: the oldest pending item of every model is younger than a threshold.

Two uses (docs/operations.md, "Health checks: restart or page"): `--liveness` runs only
what a restart can cure, for an orchestrator's health check of one worker container; the
full set says whether the deployment keeps up, for alerting a human.

Error details are one line, with any URL password redacted: the output is safe to log.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker import hnsw, repository, schema, stall
from worker.config import ConfigError, Settings, redact_url

CHECKS = ("database", "broker", "worker", "backlog")
# What an orchestrator may restart a worker container on: does this worker still take
# commands? The ping travels through the broker, so `broker` runs too and says why when it
# fails. Not `database`: a worker rides out a database outage by itself (pre-ping, task
# retries), and restarting every worker during a failover only adds a reconnect storm; a
# schema behind the code is cured by `embedder migrate`, not a restart. Not `backlog`: a long
# backfill or a provider outage makes the backlog old while every worker is fine.
LIVENESS_CHECKS = ("broker", "worker")
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
            lines += [f"    WARNING: {w}" for w in check.data.get("warnings", [])]
        return "\n".join(lines)


def _one_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    for word in message.split():
        if "://" in word:
            message = message.replace(word, redact_url(word))
    return f"{type(exc).__name__}: {message}"[:300]


def check_database(engine: Any) -> Check:
    """Reachable and at head; also the server's versions.

    A pgvector older than hnsw.PGVECTOR_MIN_SAFE is a warning in `warnings`, never a
    failure: health decides restarts and pages, and neither cures an old extension
    (`embedder diagnose` fails on it: plan the upgrade).
    """
    try:
        with engine.connect() as conn:
            current = sorted(schema.applied_revisions(conn))
            versions = hnsw.server_versions(conn)
    except Exception as exc:
        return Check(False, _one_line(exc))
    head = schema.head_revision()
    data: dict[str, Any] = {
        "revision": current[0] if len(current) == 1 else current,
        "head": head,
        "server_version": versions.postgres,
        "pgvector": versions.pgvector,
    }
    problem = versions.pgvector_problem
    if problem is not None:
        data["warnings"] = [problem]
    running = f"PostgreSQL {versions.postgres}, pgvector {versions.pgvector or 'not installed'}"
    if current != [head]:
        return Check(False, f"schema at {current or 'nothing'}, code expects {head}", data)
    return Check(True, f"reachable, at head {head}; {running}", data)


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


# Celery's control exchange (`control_exchange`, default "celery"): workers consume
# broadcast commands from "celery.pidbox" and answer on "reply.celery.pidbox".
CONTROL_EXCHANGE = "celery"


def ping_workers(
    redis_url: str, timeout_s: float, destination: Sequence[str] | None = None
) -> list[str]:
    """Names of the Celery workers answering a control ping within `timeout_s`.

    Spoken with kombu's pidbox Mailbox, the same object Celery's `app.control.ping` uses,
    so worker/ stays free of Celery itself (only tasks/ imports it).
    """
    from kombu.connection import Connection
    from kombu.pidbox import Mailbox

    mailbox = Mailbox(  # type: ignore[no-untyped-call]
        CONTROL_EXCHANGE, type="fanout", accept=["json"], serializer="json"
    )
    with Connection(redis_url, connect_timeout=timeout_s) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1, timeout=timeout_s)
        replies = mailbox(conn).call(
            list(destination) if destination else None, "ping", timeout=timeout_s
        )
    return sorted(name for reply in replies or [] for name in reply)


_NODE_NAME_KEY = re.compile(r"%(.)")


def expand_node_name(name: str, hostname: str | None = None) -> str:
    """`name` with the abbreviations `celery worker -n` expands: %h, %n, %d and %%.

    %h is this host's name, %n its first label, %d the rest, so the health check inside a
    container names the worker started there as its command line does (`embeddings@%h`).
    """
    host = hostname if hostname is not None else socket.gethostname()
    short, _, domain = host.partition(".")
    keys = {"h": host, "n": short, "d": domain, "%": "%"}

    def expand(match: re.Match[str]) -> str:
        try:
            return keys[match.group(1)]
        except KeyError:
            raise ConfigError(
                f"unknown abbreviation %{match.group(1)} in worker name {name!r} "
                "(known: %h, %n, %d, %%)"
            ) from None

    return _NODE_NAME_KEY.sub(expand, name)


def stalled_workers(redis_url: str, timeout_s: float) -> list[stall.Progress]:
    """The workers whose watchdog found them stalled (their records in Redis)."""
    import redis

    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        return [p for p in stall.read_all(client) if p.stalled]
    finally:
        client.close()


def check_worker(
    redis_url: str,
    timeout_s: float,
    destination: Sequence[str] | None,
    ping: Callable[[str, float, Sequence[str] | None], list[str]] = ping_workers,
    stalls: Callable[[str, float], list[stall.Progress]] = stalled_workers,
) -> Check:
    try:
        names = ping(redis_url, timeout_s, destination)
        stalled = [
            p for p in stalls(redis_url, timeout_s) if not destination or p.node in destination
        ]
    except Exception as exc:
        return Check(False, _one_line(exc))
    if stalled:
        # Such a worker answers pings but takes no work: it exits for its supervisor to
        # restart it; a liveness probe restarts it too.
        return Check(
            False,
            "stalled: " + "; ".join(p.describe() for p in stalled) + " (it exits to be restarted)",
            {"workers": names, "stalled": [p.node for p in stalled]},
        )
    if not names:
        wanted = f" named {', '.join(destination)}" if destination else ""
        return Check(False, f"no worker{wanted} answered a ping within {timeout_s:g}s")
    return Check(True, f"{len(names)} answering", {"workers": names})


def check_backlog(engine: Any, max_age_s: float) -> Check:
    try:
        with engine.connect() as conn:
            counts = repository.by_state(repository.job_counts(conn))
    except Exception as exc:
        return Check(False, _one_line(exc))
    models = {
        model: {"pending": count, "oldest_pending_s": round(oldest, 1)}
        for (model, state), (count, oldest) in sorted(counts.items())
        if state == "pending"
    }
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
    liveness: bool = False,
) -> Health:
    """Run every check not in `skip`; builds (and disposes) an engine unless one is given.

    `liveness` runs only LIVENESS_CHECKS (and of those, only what `skip` leaves). Worker
    names may use %h, %n and %d as `celery worker -n` does.
    """
    from worker.db import make_engine

    if liveness:
        skip = (*skip, *(name for name in CHECKS if name not in LIVENESS_CHECKS))
    if worker_names:
        worker_names = [expand_node_name(name) for name in worker_names]
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
