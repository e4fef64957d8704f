"""Thin beat tasks for maintenance; the work and its advisory locks live in worker.maintenance."""

from __future__ import annotations

from typing import Any

from tasks.app import app, get_deps
from worker import maintenance


class MaintenanceFailed(Exception):
    """Some models' HNSW maintenance failed; the others were done (raised at the end)."""


@app.task(name="maintenance.ensure_partitions", acks_late=True)
def ensure_partitions() -> dict[str, Any]:
    return maintenance.ensure_partitions(get_deps()).as_dict()


@app.task(name="maintenance.rebuild_hnsw", acks_late=True)
def rebuild_hnsw(force: bool = False, model: str | None = None) -> dict[str, Any]:
    """The beat's daily check (force=False) and weekly rebuild (force=True).

    The weekly one skips indexes built within HNSW_REBUILD_MIN_INTERVAL_H: a second beat
    (during a deploy) or a churn rebuild the same night would otherwise rebuild them again.
    A model that failed does not stop the others; the task then fails, naming each one.
    """
    deps = get_deps()
    result = maintenance.rebuild_hnsw(
        deps,
        force=force,
        model=model,
        min_interval_s=deps.settings.hnsw_rebuild_min_interval_h * 3600,
    )
    if result.failed:
        raise MaintenanceFailed(
            f"HNSW maintenance failed for {len(result.failed)} model(s): "
            + "; ".join(f"{name}: {error}" for name, error in sorted(result.failed.items()))
        )
    return result.as_dict()
