"""One rate limit per provider endpoint for every worker on every host: buckets in Redis.

Celery's `rate_limit` is per worker process, so N workers would send N times the limit.
Here every request of an endpoint (a hash of its base URL and key variable name, never the
key) reserves 1 request and its estimated tokens from two shared buckets, in one Lua script
whose clock is Redis `TIME` (not each host's):

- **Limits are learned from the provider**: `x-ratelimit-limit-*` is the bucket size, and
  the refill rate is what `x-ratelimit-reset-*` says (time until the bucket is full again
  for what `x-ratelimit-remaining-*` lacks), smoothed; a changed limit replaces the old one
  at once. Where the provider sends no headers, RATE_LIMIT_RPM/TPM (per minute) are used;
  with neither, requests are not paced (but 429s still close the endpoint, below).
- **Estimate, then settle**: the estimate is charged up front and settled with the
  provider's `usage` afterwards (refund or debit), so a conservative estimate does not
  waste the budget. `x-ratelimit-remaining-*` (less what is still in flight) can only
  lower the buckets. All of this happens in the script, atomically with the bucket.
- **Reservations**: a bucket may go below zero; each caller is told when its reservation
  is paid off, so waiting callers leave in turn, one refill apart, never all at once. A
  caller whose wait would exceed RATE_LIMIT_MAX_WAIT_S reserves nothing and gets
  RateLimitDeferred: its batch goes back to pending with `not_before`, no attempt counted.
- **A 429 closes the endpoint** for every worker until `retry-after`, and callers then go
  back one stagger gap apart instead of all at `retry-after`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis

from worker.config import Settings
from worker.errors import RateLimitDeferred

logger = logging.getLogger(__name__)

PREFIX = "embedder:ratelimit"
GRANT_TTL_MS = 120_000  # an unsettled reservation (its worker died) stops counting as in flight
STAGGER_MS = 100  # after a 429 closure, callers go back this far apart (when no RPM is known)
PROBE_WAIT_MS = 50  # limits unknown: one request at a time until the provider has answered
PROBE_TIMEOUT_MS = 2000  # ... unless that first request has not been settled for this long

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Fields of the hash KEYS[1]: rl/tl learned limits (per window), rr/tr learned refill per ms,
# rv/tv levels, ts last refill, closed (closed until, ms), slot (next staggered slot),
# probed (a response was seen), ratio (provider's count / our estimate, smoothed).
# KEYS[2]: sorted set of reservations in flight, member "id|tokens charged|tokens
# estimated", score = expiry. ARGV of every script starts with cfg_rpm, cfg_tpm, share.
_STATE = (
    _NOW
    + """
local H, Z = KEYS[1], KEYS[2]
local cfg_rpm, cfg_tpm, share = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', Z, '-inf', now)
local f = redis.call('HMGET', H, 'rl', 'tl', 'rr', 'tr', 'rv', 'tv', 'ts', 'closed', 'slot', 'probed', 'ratio', 'probe')
local rl, tl = tonumber(f[1] or 0), tonumber(f[2] or 0)
local rr, tr = tonumber(f[3] or 0), tonumber(f[4] or 0)
local closed, slot, probed = tonumber(f[8] or 0), tonumber(f[9] or 0), f[10] == '1'
local ratio = tonumber(f[11] or 1)
local probe = tonumber(f[12] or 0)
local function caps()
  local rcap = (rl > 0 and rl or cfg_rpm) * share
  local tcap = (tl > 0 and tl or cfg_tpm) * share
  local rrate = (rl > 0 and rr > 0) and rr * share or rcap / 60000
  local trate = (tl > 0 and tr > 0) and tr * share or tcap / 60000
  return rcap, rrate, tcap, trate
end
local rcap, rrate, tcap, trate = caps()
local ts = tonumber(f[7] or now)
local function refill(level, cap, rate)
  if cap <= 0 then return 0 end
  if not level then return cap end
  return math.min(cap, tonumber(level) + math.max(0, now - ts) * rate)
end
local rv, tv = refill(f[5], rcap, rrate), refill(f[6], tcap, trate)
local function inflight()
  local members = redis.call('ZRANGE', Z, 0, -1)
  local tokens = 0
  for _, m in ipairs(members) do tokens = tokens + tonumber(string.match(m, '^[^|]*|(%d+)') or 0) end
  return #members, tokens
end
local function save()
  redis.call('HSET', H, 'rl', rl, 'tl', tl, 'rr', rr, 'tr', tr, 'rv', rv, 'tv', tv, 'ts', now,
    'closed', closed, 'slot', slot, 'probed', probed and '1' or '0', 'ratio', ratio, 'probe', probe)
  redis.call('PEXPIRE', H, 3600000)
  redis.call('PEXPIRE', Z, 3600000)
end
"""
)

# ARGV: cfg_rpm, cfg_tpm, share, tokens, max_wait_ms, grant id, probe wait, stagger gap,
# grant TTL, probe timeout (ms).
# Returns {1, wait_ms, grant} when reserved (send after wait_ms), {0, wait_ms} when not: try again
# after wait_ms if that is within max_wait_ms (probing), else give the batch back.
_ACQUIRE = (
    _STATE
    + """
local want, max_wait, id = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local wait = 0
local staggered = nil
if closed > now then
  staggered = math.max(closed, slot)
  wait = staggered - now
end
-- Nothing known yet: one request at a time until the provider has answered one; a probe
-- whose worker died (never settled) stops blocking the others after ARGV[10] ms.
if rcap <= 0 and tcap <= 0 and not probed then
  if now - probe < tonumber(ARGV[10]) then return {0, math.max(wait, tonumber(ARGV[7]))} end
  probe = now
end
-- The estimate, corrected by what the provider counted for earlier ones (and 5% more).
local charge = math.ceil(want * math.min(1.5, ratio * 1.05))
if tcap > 0 then charge = math.floor(math.min(charge, tcap)) end
local nrv, ntv = rv, tv
if rcap > 0 then
  nrv = rv - 1
  if nrv < 0 then wait = math.max(wait, -nrv / rrate) end
end
if tcap > 0 then
  ntv = tv - charge
  if ntv < 0 then wait = math.max(wait, -ntv / trate) end
end
wait = math.ceil(wait)
if wait > max_wait then return {0, wait} end
rv, tv = nrv, ntv
if staggered then slot = staggered + tonumber(ARGV[8]) end
save()
local member = id .. '|' .. string.format('%d', charge) .. '|' .. string.format('%d', want)
redis.call('ZADD', Z, now + wait + tonumber(ARGV[9]), member)
return {1, wait, member}
"""
)

# ARGV: cfg_rpm, cfg_tpm, share, then: member, used tokens (-1 unknown), rejected (1 = 429),
# retry_after_ms (-1), limit_r, remaining_r, reset_r_ms, limit_t, remaining_t, reset_t_ms
# (-1 = header absent). Returns {requests limit, tokens limit} as now known.
_SETTLE = (
    _STATE
    + """
local member, used, rejected, retry_ms = ARGV[4], tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local charged = tonumber(string.match(member, '^[^|]*|(%d+)') or 0)
local estimated = tonumber(string.match(member, '|(%d+)$') or 0)
local had = redis.call('ZREM', Z, member) == 1
if had then
  if rejected then
    rv = rv + 1; tv = tv + charged  -- the provider counted nothing; the remaining header says the rest
  elseif used >= 0 then
    tv = tv + charged - used  -- refund (or debit) the estimate's error
    if estimated > 0 and used > 0 then
      ratio = math.max(0.2, math.min(1.5, 0.8 * ratio + 0.2 * used / estimated))
    end
  end
end
probed = true
local function learn(limit, remaining, reset_ms, old_limit, old_rate)
  if limit <= 0 then return old_limit, old_rate end
  local rate = old_rate
  if limit ~= old_limit then rate = 0 end
  local missing = limit - math.max(remaining, 0)
  if remaining >= 0 and reset_ms > 0 and missing >= 1 then
    local seen = missing / reset_ms
    if rate > 0 then rate = 0.8 * rate + 0.2 * seen else rate = seen end
  end
  return limit, rate
end
local lr, rem_r, reset_r = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local lt, rem_t, reset_t = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local rcap0, tcap0 = rcap, tcap
rl, rr = learn(lr, rem_r, reset_r, rl, rr)
tl, tr = learn(lt, rem_t, reset_t, tl, tr)
rcap, rrate, tcap, trate = caps()
-- A bucket learned just now starts full; the remaining header (below) says what is left.
if rcap0 <= 0 then rv = rcap end
if tcap0 <= 0 then tv = tcap end
rv, tv = math.min(rv, rcap), math.min(tv, tcap)
local n, tokens = inflight()
-- What the provider has left, less the headroom (1 - share of its limit) and what is in
-- flight: an absolute cushion, so an estimate that was low does not meet an empty bucket.
if rem_r >= 0 and rcap > 0 then rv = math.min(rv, rem_r - (rcap / share) * (1 - share) - n) end
if rem_t >= 0 and tcap > 0 then tv = math.min(tv, rem_t - (tcap / share) * (1 - share) - tokens) end
if rejected then
  local until_ = now + math.max(retry_ms, 0)
  if until_ > closed then closed = until_ end
  if slot < closed then slot = closed end
end
save()
return {tostring(rl > 0 and rl or cfg_rpm), tostring(tl > 0 and tl or cfg_tpm)}
"""
)

# ARGV: cfg_rpm, cfg_tpm, share. Returns ms until a new reservation would not wait.
_READY_IN = (
    _STATE
    + """
local wait = math.max(0, closed - now)
if rcap > 0 and rv < 0 then wait = math.max(wait, -rv / rrate) end
if tcap > 0 and tv < 0 then wait = math.max(wait, -tv / trate) end
return math.ceil(wait)
"""
)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Seconds in an OpenAI reset header: `6m0s`, `1s`, `120ms`, `1m30.5s`, `2h`, or `0.5`."""
    if value is None:
        return None
    text = value.strip().lower()
    if not text:
        return None
    try:
        return max(0.0, float(text))  # a bare number is seconds
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[unit]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def _header_number(headers: Mapping[str, str] | None, name: str) -> float:
    raw = headers.get(name) if headers is not None else None
    if not raw:
        return -1
    try:
        return max(0.0, float(raw))
    except ValueError:
        return -1


def endpoint_id(base_url: str | None, key_env: str) -> str:
    """The bucket name of an endpoint: a hash of its base URL and key variable, never the key."""
    url = (base_url or "https://api.openai.com/v1").rstrip("/")
    return hashlib.sha256(f"{url}\0{key_env}".encode()).hexdigest()[:16]


class EndpointLimiter:
    """The shared buckets of one provider endpoint (see the module docstring)."""

    def __init__(
        self,
        client: Callable[[], redis.Redis[bytes]],
        endpoint: str,
        *,
        rpm: int = 0,
        tpm: int = 0,
        share: float = 0.98,
        max_wait_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self.endpoint = endpoint
        self.rpm, self.tpm, self.share = rpm, tpm, share
        self.max_wait_s = max_wait_s
        self._keys = [f"{PREFIX}:{endpoint}", f"{PREFIX}:{endpoint}:inflight"]
        self._sleep = sleep
        self._scripts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.limits: tuple[int, int] = (rpm, tpm)  # last known (requests, tokens) limits

    def _script(self, name: str, source: str) -> Any:
        with self._lock:
            if name not in self._scripts:
                self._scripts[name] = self._client().register_script(source)
            return self._scripts[name]

    def _args(self) -> list[Any]:
        return [self.rpm, self.tpm, self.share]

    def acquire(self, tokens: int) -> str:
        """Reserve one request of `tokens` estimated tokens; return the grant to settle.

        Sleeps while the reservation is being paid off (at most RATE_LIMIT_MAX_WAIT_S in
        all); raises RateLimitDeferred, having reserved nothing, when it would wait longer.
        """
        grant = f"{uuid.uuid4().hex}"
        deadline = time.monotonic() + self.max_wait_s
        script = self._script("acquire", _ACQUIRE)
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            granted, wait_ms, *member = script(
                keys=self._keys,
                args=[
                    *self._args(),
                    max(0, int(tokens)),
                    left_ms,
                    grant,
                    PROBE_WAIT_MS,
                    STAGGER_MS,
                    GRANT_TTL_MS,
                    PROBE_TIMEOUT_MS,
                ],
            )
            wait_s = int(wait_ms) / 1000.0
            if int(granted) == 1:
                if wait_s > 0:
                    self._sleep(wait_s)
                return str(member[0].decode() if isinstance(member[0], bytes) else member[0])
            if wait_s > left_ms / 1000.0:
                raise RateLimitDeferred(
                    f"the shared rate limit of this endpoint has no room for {wait_s:.1f}s, "
                    f"beyond RATE_LIMIT_MAX_WAIT_S ({self.max_wait_s:g}s); batch given back",
                    retry_after_s=wait_s,
                )
            self._sleep(wait_s)

    def settle(
        self,
        grant: str,
        *,
        used_tokens: int | None,
        headers: Mapping[str, str] | None,
        rejected: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        """Settle a grant with what the provider counted, and learn from its headers."""
        member = grant  # "id|charged|estimated", as acquire stored it
        reset_r = parse_duration(headers.get("x-ratelimit-reset-requests") if headers else None)
        reset_t = parse_duration(headers.get("x-ratelimit-reset-tokens") if headers else None)
        args = [
            *self._args(),
            member,
            -1 if used_tokens is None else int(used_tokens),
            1 if rejected else 0,
            -1 if retry_after_s is None else int(retry_after_s * 1000),
            _header_number(headers, "x-ratelimit-limit-requests"),
            _header_number(headers, "x-ratelimit-remaining-requests"),
            -1 if reset_r is None else reset_r * 1000,
            _header_number(headers, "x-ratelimit-limit-tokens"),
            _header_number(headers, "x-ratelimit-remaining-tokens"),
            -1 if reset_t is None else reset_t * 1000,
        ]
        rpm, tpm = self._script("settle", _SETTLE)(keys=self._keys, args=args)
        limits = (int(float(rpm)), int(float(tpm)))
        if limits != self.limits:
            logger.info(
                "rate limits of endpoint %s: %s requests, %s tokens (were %s, %s)",
                self.endpoint,
                limits[0],
                limits[1],
                *self.limits,
            )
            self.limits = limits

    def ready_in_s(self) -> float:
        """Seconds until a new reservation would not have to wait (0: now)."""
        wait_ms = self._script("ready_in", _READY_IN)(keys=self._keys, args=self._args())
        return int(wait_ms) / 1000.0


class RateLimits:
    """Every endpoint's limiter in this process, created on first use."""

    def __init__(
        self,
        client: Callable[[], redis.Redis[bytes]],
        *,
        rpm: int = 0,
        tpm: int = 0,
        share: float = 0.98,
        max_wait_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._options: dict[str, Any] = {
            "rpm": rpm,
            "tpm": tpm,
            "share": share,
            "max_wait_s": max_wait_s,
            "sleep": sleep,
        }
        self._limiters: dict[str, EndpointLimiter] = {}
        self._lock = threading.Lock()

    def for_endpoint(self, base_url: str | None, key_env: str) -> EndpointLimiter:
        """The limiter of the endpoint at `base_url` used with the key in `key_env`."""
        endpoint = endpoint_id(base_url, key_env)
        with self._lock:
            limiter = self._limiters.get(endpoint)
            if limiter is None:
                limiter = EndpointLimiter(self._client, endpoint, **self._options)
                self._limiters[endpoint] = limiter
            return limiter


def build_limiter(settings: Settings, client: Callable[[], redis.Redis[bytes]]) -> RateLimits:
    """The process's limiters: always on (limits are learned from the provider's headers)."""
    return RateLimits(
        client,
        rpm=settings.rate_limit_rpm,
        tpm=settings.rate_limit_tpm,
        share=settings.rate_limit_share,
        max_wait_s=settings.rate_limit_wait_bound_s,
    )
