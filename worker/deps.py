"""Process-wide dependencies: built after fork in lifecycle hooks, passed down explicitly."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from worker import metrics, repository
from worker.config import Settings
from worker.db import make_engine
from worker.embedder import Embedder, RateLimiter, build_embedder
from worker.lease import LeaseKeeper
from worker.repository import ModelInfo


def _no_kick(_model: str) -> None:
    """Default: nobody to wake (tests call pipeline.drain directly)."""


@dataclass
class Deps:
    settings: Settings
    engine: Engine
    limiter: RateLimiter | None = None
    # Asks for a drain of `model` somewhere in the cluster (tasks/ wires it to Celery).
    kick_drain: Callable[[str], None] = _no_kick
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    embedder_factory: Callable[[Settings, ModelInfo], Embedder] | None = None
    # Where models' own API key variables (embedding_models.api_key_env) are looked up;
    # None is the process environment (tests pass a mapping instead).
    secret_env: Mapping[str, str] | None = None
    _embedders: dict[str, Embedder] = field(default_factory=dict)
    _models: dict[str, ModelInfo] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor | None = None
    _leases: LeaseKeeper | None = None

    def model(self, name: str | None) -> ModelInfo:
        """The registered model (cached per process); the configured default when None."""
        name = name or self.settings.embedding_model
        with self._lock:
            cached = self._models.get(name)
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            info = repository.get_model(conn, name)
        metrics.init_model(info.name)  # its series exist from now on, at 0 (alerts' rate())
        with self._lock:
            self._models[name] = info
        return info

    def forget_models(self) -> None:
        with self._lock:
            self._models.clear()

    def embedder(self, info: ModelInfo) -> Embedder:
        """The model's embedder, built once per process from its row (see build_embedder)."""
        with self._lock:
            existing = self._embedders.get(info.name)
            if existing is None:
                if self.embedder_factory is not None:
                    existing = self.embedder_factory(self.settings, info)
                else:
                    existing = build_embedder(
                        self.settings, info, self.limiter, env=self.secret_env
                    )
                self._embedders[info.name] = existing
            return existing

    def request_pool(self) -> ThreadPoolExecutor:
        """Threads for concurrent embedding requests of one claim (created on first use)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.settings.embed_request_concurrency,
                    thread_name_prefix="embed-request",
                )
            return self._pool

    def leases(self) -> LeaseKeeper:
        """This process's lease heartbeat for the claims its drains hold (worker.lease)."""
        with self._lock:
            if self._leases is None:
                self._leases = LeaseKeeper(self.engine, self.settings.job_heartbeat_s)
            return self._leases

    def close(self) -> None:
        if self._leases is not None:
            self._leases.close()
            self._leases = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for emb in self._embedders.values():
            emb.close()
        self._embedders.clear()
        self.engine.dispose()


def build_deps(settings: Settings, *, application_name: str | None = None) -> Deps:
    return Deps(settings=settings, engine=make_engine(settings, application_name=application_name))


_current: Deps | None = None


def install(deps: Deps) -> None:
    global _current
    _current = deps


def current() -> Deps:
    """The Deps installed for this process (by the Celery worker_process_init hook)."""
    if _current is None:
        raise RuntimeError("no Deps installed in this process (worker_process_init not run)")
    return _current


def uninstall() -> Deps | None:
    global _current
    deps, _current = _current, None
    return deps
