"""Claim leases, renewed by a heartbeat thread while this process holds the claims.

A claim (repository.claim_pending) is a lease on its jobs: `claimed_at` is when it was last
renewed, and a job in flight whose lease is older than JOB_LEASE_S is requeued by the sweep,
or by the next claim of its model (pipeline._claim). While a drain holds a claim (loading
it, waiting on the provider, writing it), the process's LeaseKeeper renews it every
JOB_HEARTBEAT_S from a daemon thread, so a live worker keeps its claims however slow the
provider is, and a killed, frozen or cut-off one loses them within JOB_LEASE_S.

Ownership is the claim token, not the clock: at write time the drain locks its jobs by token
and writes only those it still owns (pipeline.write_claim), so a worker that lost its lease
can never write over the result of the worker that took the jobs over.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from worker import repository
from worker.repository import Claim

logger = logging.getLogger(__name__)

# After a failed renewal (pool exhausted, database restarting) try again this soon, not a
# whole interval later: the lease is only three intervals long.
RETRY_S = 0.5


class LeaseKeeper:
    """Renews the leases of the claims this process holds, every `interval_s` seconds.

    Thread-safe (a threads-pool worker shares one keeper between its drains). The thread
    starts with the first claim held and borrows a pooled connection for one statement per
    beat: no connection beyond DB_POOL_SIZE + DB_MAX_OVERFLOW.
    """

    def __init__(self, engine: Engine, interval_s: float) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._held: dict[str, tuple[str, Claim]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0
        self.renewals = 0  # beats that renewed something (tests, debugging)

    def hold(self, model: str, claim: Claim) -> None:
        """Keep renewing `claim` (of `model`) until release()."""
        if not claim.article_ids:
            return
        with self._lock:
            self._held[claim.token] = (model, claim)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="lease-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, claim: Claim) -> None:
        """Stop renewing `claim`: it was written or handed back, or is left to its lease."""
        with self._lock:
            self._held.pop(claim.token, None)

    def held(self) -> list[tuple[str, Claim]]:
        with self._lock:
            return list(self._held.values())

    def renew(self) -> int:
        """One heartbeat now: renew every claim held; returns the jobs renewed."""
        claims = self.held()
        if not claims:
            return 0
        with self.engine.begin() as conn:
            renewed = repository.renew_leases(conn, claims)
        self.renewals += 1
        return renewed

    def _run(self) -> None:
        delay = self.interval_s
        while not self._stop.wait(delay):
            try:
                self.renew()
            except Exception as exc:  # the next beat tries again; the lease has two more
                delay = min(self.interval_s, RETRY_S)
                now = time.monotonic()
                if now - self._last_warning >= self.interval_s:
                    self._last_warning = now
                    logger.warning("could not renew the leases of the claims in hand: %s", exc)
            else:
                delay = self.interval_s

    def close(self) -> None:
        """Stop the thread (the claims still held are left to their leases)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
