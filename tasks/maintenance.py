"""Thin beat tasks for maintenance; the work and its advisory locks live in worker.maintenance."""

from __future__ import annotations

from typing import Any

from tasks.app import app, get_deps
from worker import maintenance


@app.task(name="maintenance.ensure_partitions", acks_late=True)
def ensure_partitions() -> dict[str, Any]:
    return maintenance.ensure_partitions(get_deps()).as_dict()


@app.task(name="maintenance.rebuild_hnsw", acks_late=True)
def rebuild_hnsw(force: bool = False, model: str | None = None) -> dict[str, Any]:
    return maintenance.rebuild_hnsw(get_deps(), force=force, model=model).as_dict()
