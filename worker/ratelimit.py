"""One rate limit for every worker on every host: token buckets in Redis.

Celery's `rate_limit` is per worker process, so N workers would send N times the limit.
Here each request takes 1 from the requests bucket and its token count from the tokens
bucket, atomically in a Lua script; when a bucket is empty the caller sleeps until the
script says it will have refilled. `x-ratelimit-remaining-*` headers from the provider
shrink the buckets when the provider sees less headroom than we think we have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from worker.config import Settings

logger = logging.getLogger(__name__)

# KEYS: requests bucket, tokens bucket. ARGV: now_ms, rpm, tpm, tokens.
# Returns 0 when both buckets had room (and were charged), else ms to wait.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local function refill(key, per_minute)
  if per_minute <= 0 then return nil end
  local level = tonumber(redis.call('HGET', key, 'level') or per_minute)
  local ts = tonumber(redis.call('HGET', key, 'ts') or now)
  level = math.min(per_minute, level + (now - ts) * per_minute / 60000)
  return level
end
local rpm, tpm, want = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local r = refill(KEYS[1], rpm)
local t = refill(KEYS[2], tpm)
local wait = 0
if r and r < 1 then wait = math.max(wait, (1 - r) * 60000 / rpm) end
if t then
  local need = math.min(want, tpm)
  if t < need then wait = math.max(wait, (need - t) * 60000 / tpm) end
end
if wait > 0 then return math.ceil(wait) end
if r then redis.call('HSET', KEYS[1], 'level', r - 1, 'ts', now); redis.call('PEXPIRE', KEYS[1], 120000) end
if t then redis.call('HSET', KEYS[2], 'level', t - math.min(want, tpm), 'ts', now); redis.call('PEXPIRE', KEYS[2], 120000) end
return 0
"""


class RedisRateLimiter:
    def __init__(
        self,
        client: Callable[[], redis.Redis[bytes]],
        *,
        rpm: int,
        tpm: int,
        prefix: str = "embedder:ratelimit",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self.rpm = rpm
        self.tpm = tpm
        self._keys = [f"{prefix}:requests", f"{prefix}:tokens"]
        self._sleep = sleep
        self._script: Any = None

    def acquire(self, tokens: int) -> None:
        """Block until one request of `tokens` tokens fits in the shared budget."""
        while True:
            wait_ms = int(self._run(tokens))
            if wait_ms <= 0:
                return
            self._sleep(min(wait_ms, 5000) / 1000.0)

    def _run(self, tokens: int) -> int:
        if self._script is None:
            self._script = self._client().register_script(_ACQUIRE)
        now_ms = int(time.time() * 1000)
        return int(self._script(keys=self._keys, args=[now_ms, self.rpm, self.tpm, tokens]))

    def observe_headers(self, headers: Any) -> None:
        """Lower our buckets to what the provider reports as remaining."""
        for key, header, limit in (
            (self._keys[0], "x-ratelimit-remaining-requests", self.rpm),
            (self._keys[1], "x-ratelimit-remaining-tokens", self.tpm),
        ):
            raw = headers.get(header) if headers is not None else None
            if not raw or limit <= 0:
                continue
            try:
                remaining = float(raw)
            except ValueError:
                continue
            client = self._client()
            level = client.hget(key, "level")
            if level is not None and remaining < float(level):
                client.hset(key, mapping={"level": remaining, "ts": int(time.time() * 1000)})


def build_limiter(
    settings: Settings, client: Callable[[], redis.Redis[bytes]]
) -> RedisRateLimiter | None:
    if settings.rate_limit_rpm <= 0 and settings.rate_limit_tpm <= 0:
        return None
    return RedisRateLimiter(client, rpm=settings.rate_limit_rpm, tpm=settings.rate_limit_tpm)
