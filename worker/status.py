"""`embedder status`: is it keeping up, what is stuck, and why — from PostgreSQL alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker import partitions, repository
from worker.config import redact_url
from worker.db import pool_stats
from worker.deps import Deps
from worker.hnsw import index_name, index_size, index_state


def collect_status(deps: Deps) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    with deps.engine.connect() as conn:
        registered = repository.list_models(conn)
        embedded = repository.embedding_counts(conn)
        for info in registered:
            name = index_name(info.name)
            size = index_size(conn, name)
            models[info.name] = {
                "dimensions": info.dimensions,
                "embedded": embedded.get(info.name, 0),
                "pending": 0,
                "in_flight": 0,
                "failed": {},
                "skipped": {},
                "oldest_pending_s": None,
                "index": {"name": name, "state": index_state(conn, name), "bytes": size},
                "is_indexed": info.is_indexed,
            }
        counts = repository.job_counts(conn)
        for c in counts:
            entry = models.setdefault(
                c.model, {"failed": {}, "skipped": {}, "pending": 0, "in_flight": 0}
            )
            if c.state in ("failed", "skipped"):
                entry[c.state][c.reason or "unknown"] = c.count
        for (model, state), (count, oldest) in repository.by_state(counts).items():
            if state in ("pending", "in_flight"):
                models[model][state] = count
                if state == "pending":
                    models[model]["oldest_pending_s"] = oldest
        present = partitions.existing_partitions(conn)
        dead = repository.dead_letter_counts(conn)
    wanted = [
        p.name
        for p in partitions.upcoming_months(
            datetime.now(UTC).date(), deps.settings.partitions_ahead
        )
    ]
    return {
        "database": redact_url(deps.settings.database_url),
        "models": models,
        "partitions": {
            "present": sorted(present),
            "missing_upcoming": [n for n in wanted if n not in present],
        },
        "pool": pool_stats(deps.engine).as_dict(),
        # What the workers refused (embedder dead-letters list); by reason.
        "dead_letters": {"total": sum(dead.values()), "by_reason": dict(sorted(dead.items()))},
    }


def render_status(status: dict[str, Any]) -> str:
    lines = [f"database: {status['database']}"]
    for name, m in status["models"].items():
        age = m.get("oldest_pending_s")
        lines.append(
            f"model {name}: embedded={m.get('embedded', 0)} pending={m.get('pending', 0)} "
            f"in_flight={m.get('in_flight', 0)} oldest_pending={'-' if age is None else f'{age:.0f}s'}"
        )
        for kind in ("failed", "skipped"):
            for reason, count in sorted(m.get(kind, {}).items()):
                lines.append(f"  {kind} {reason}: {count}")
        index = m.get("index")
        if index:
            lines.append(
                f"  index {index['name']}: {index['state']} ({(index['bytes'] or 0) // 1024} KiB)"
            )
    parts = status["partitions"]
    lines.append(
        f"partitions: {len(parts['present'])} present; missing upcoming: {', '.join(parts['missing_upcoming']) or 'none'}"
    )
    dead = status.get("dead_letters") or {"total": 0, "by_reason": {}}
    reasons = ", ".join(f"{r}={n}" for r, n in dead["by_reason"].items())
    lines.append(
        f"dead letters: {dead['total']}"
        + (f" ({reasons}; embedder dead-letters list)" if dead["total"] else "")
    )
    pool = status["pool"]
    lines.append(
        f"pool (this process): checked_out={pool['checked_out']} idle={pool['idle']} "
        f"overflow={pool['overflow']} max={pool['max_connections']}"
    )
    return "\n".join(lines)
