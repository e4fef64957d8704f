"""Settings from the environment (12-factor), validated once at start.

`Settings.from_env()` and `secret_from_env()` (a model's own API key variable, named in its
`embedding_models` row) are the only readers of `os.environ`. Every problem is collected and
reported as one `ConfigError` whose message is safe to print: secrets never appear in it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, TypeVar
from urllib.parse import urlsplit

Provider = Literal["openai", "local"]
LogFormat = Literal["text", "json"]
PROVIDERS: tuple[Provider, ...] = ("openai", "local")

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:54329/embedder"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# What a model's `api_key_env` may hold: the NAME of an environment variable, never a key.
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# A model name is sent to the provider as is; it is also an index predicate's literal.
MODEL_NAME_MAX = 200

T = TypeVar("T")


class ConfigError(ValueError):
    """The environment does not describe a runnable configuration."""


@dataclass(frozen=True)
class Settings:
    """Everything the worker needs to know, fields named after their environment variables."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    result_backend_url: str | None = None

    embedding_provider: Provider = "local"
    embedding_model: str = "local-ngram-1536"
    embedding_dimensions: int = 1536
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    openai_timeout_s: float = 30.0

    # Pool: the seed's pgxpool defaults (max 25, min 5, 1 h lifetime, 5 min idle, 1 min
    # health check) mapped onto SQLAlchemy's QueuePool; see docs/operations.md.
    db_pool_size: int = 5
    db_max_overflow: int = 20
    db_pool_timeout_s: float = 30.0
    db_pool_recycle_s: int = 3600
    db_pool_idle_s: int = 300
    db_pool_pre_ping: bool = True
    db_statement_timeout_ms: int = 60_000
    db_prepare_threshold: int | None = 5  # None (env "off") for PgBouncer transaction mode
    db_application_name: str = "embedder"

    # Batching: OpenAI allows 2048 inputs and 300k tokens per request, 8191 tokens per input.
    embed_batch_max: int = 256
    embed_batch_max_tokens: int = 300_000
    embed_input_max_tokens: int = 8191
    embed_linger_ms: int = 200
    embed_drain_budget_s: float = 60.0
    # Requests of one claim in flight at once (bench: 1,031 → 1,300/s at 100 ms vs 2).
    embed_request_concurrency: int = 4

    # Retries: tenacity around each API call, then durable attempts in PostgreSQL.
    embed_retry_attempts: int = 6
    embed_retry_max_wait_s: float = 20.0
    job_max_attempts: int = 5
    # A claim is a lease: its worker process renews it every JOB_HEARTBEAT_S while it holds
    # the claim (slow provider calls included); one not renewed for JOB_LEASE_S (its worker
    # died, froze or lost the database) is requeued by the sweep or the model's next claim.
    job_lease_s: int = 15
    job_heartbeat_s: float = 5.0
    job_retry_delay_s: int = 30
    # A 401/403 parks the items this long (no retry storm while the key is wrong).
    embed_auth_backoff_s: float = 300.0
    # Beat reconcile: recent articles with no vector and no job (a message Redis lost).
    reconcile_window_hours: int = 72
    reconcile_batch: int = 10_000

    # Shared rate limit per provider endpoint across all workers, learned from the provider's
    # x-ratelimit-* headers; these per-minute values are used only where it sends none
    # (0 = no limit unless the provider answers 429).
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0
    # Share of the provider's limits the workers aim at (headroom for other clients' and
    # clocks' noise), and the longest a batch in hand waits for room before it goes back
    # to pending (no attempt counted).
    rate_limit_share: float = 0.98
    rate_limit_max_wait_s: float = 5.0

    # Maintenance
    partitions_ahead: int = 3
    hnsw_m: int = 24
    hnsw_ef_construction: int = 128
    hnsw_ef_search: int = 120  # recall@10 0.966 vs 0.948 at 100 (docs/benchmarks.md)
    # What new HNSW indexes store: halfvec (2-byte floats: half the size, same recall at
    # 100k x 1536, searches 10-25% faster; docs/benchmarks.md) or vector. An index of the
    # other type is replaced by the next rebuild; searches use whichever type is built.
    hnsw_index_type: str = "halfvec"
    # Rebuild a model's HNSW index when updates + deletes since its last build exceed this
    # share of the live rows (checked daily by beat; 0 disables the churn trigger).
    hnsw_rebuild_churn_ratio: float = 0.2
    # The weekly forced rebuild skips an index built within this many hours (a second beat
    # during a deploy, or the daily check just rebuilt it); 0 = off. `embedder maintain
    # hnsw` always rebuilds.
    hnsw_rebuild_min_interval_h: float = 24.0
    maintenance_work_mem: str = "1GB"  # above the index size, or the build spills
    maintenance_parallel_workers: int = 2  # max_parallel_maintenance_workers for HNSW builds
    # Detach and drop monthly partitions older than this many months (0 = keep everything).
    partition_retention_months: int = 0

    # Worker
    worker_concurrency: int = 2
    worker_max_memory_per_child_kb: int = 512_000
    task_time_limit_s: int = 600
    visibility_timeout_s: int = 3600
    # A worker whose queue had ready messages for this long while it had room for more and
    # received none (a consumer that stopped consuming) exits with status 1, for its
    # supervisor to restart it; 0 = off.
    worker_stall_timeout_s: float = 120.0
    pool_stats_interval_s: float = 60.0
    log_format: LogFormat = "text"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings; raise one ConfigError naming every bad variable."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.name.upper()
            default = f.default
            parse = _PARSERS.get(f.name) or _parser_for(default)
            values[f.name] = reader.get(name, parse, default)
        settings = cls(**values)  # type: ignore[arg-type]
        try:
            settings.validate()
        except ConfigError as exc:  # report these together with the unparseable ones
            reader.errors.append(str(exc).removeprefix("invalid configuration: "))
        if reader.errors:
            raise ConfigError("invalid configuration: " + "; ".join(reader.errors))
        return settings

    def validate(self) -> None:
        """Check cross-field rules; raise ConfigError with every problem found."""
        errors: list[str] = []
        _check_url(errors, "DATABASE_URL", self.database_url, ("postgresql", "postgres"))
        _check_url(errors, "REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        if not 1 <= self.embedding_dimensions <= 16_000:
            errors.append("EMBEDDING_DIMENSIONS must be between 1 and 16000")
        if self.db_pool_size < 1:
            errors.append("DB_POOL_SIZE must be at least 1")
        if self.db_max_overflow < 0:
            errors.append("DB_MAX_OVERFLOW must be 0 or more")
        if self.db_pool_timeout_s <= 0:
            errors.append("DB_POOL_TIMEOUT_S must be positive")
        if not 1 <= self.embed_batch_max <= 2048:
            errors.append("EMBED_BATCH_MAX must be between 1 and 2048 (OpenAI's input limit)")
        if not 1 <= self.embed_request_concurrency <= 16:
            errors.append("EMBED_REQUEST_CONCURRENCY must be between 1 and 16")
        if self.embed_input_max_tokens < 16:
            errors.append("EMBED_INPUT_MAX_TOKENS must be at least 16")
        if self.embed_batch_max_tokens < self.embed_input_max_tokens:
            errors.append("EMBED_BATCH_MAX_TOKENS must be at least EMBED_INPUT_MAX_TOKENS")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            errors.append("VISIBILITY_TIMEOUT_S must be greater than TASK_TIME_LIMIT_S")
        if self.embed_auth_backoff_s < 0:
            errors.append("EMBED_AUTH_BACKOFF_S must be 0 or more")
        if self.job_lease_s < 1:
            errors.append("JOB_LEASE_S must be at least 1")
        if not 0 < self.job_heartbeat_s <= self.job_lease_s / 3:
            # Three beats per lease: one or two late ones (a slow statement, a pool wait)
            # must not cost a live worker its claims.
            errors.append("JOB_HEARTBEAT_S must be positive and at most a third of JOB_LEASE_S")
        if self.worker_stall_timeout_s != 0 and self.worker_stall_timeout_s < 1:
            errors.append("WORKER_STALL_TIMEOUT_S must be 0 (off) or at least 1")
        if self.rate_limit_rpm < 0 or self.rate_limit_tpm < 0:
            errors.append("RATE_LIMIT_RPM and RATE_LIMIT_TPM must be 0 or more")
        if not 0.5 <= self.rate_limit_share <= 1.0:
            errors.append("RATE_LIMIT_SHARE must be between 0.5 and 1")
        if not 0 <= self.rate_limit_max_wait_s <= 300:
            errors.append("RATE_LIMIT_MAX_WAIT_S must be between 0 and 300")
        if self.hnsw_index_type not in ("halfvec", "vector"):
            errors.append("HNSW_INDEX_TYPE must be 'halfvec' or 'vector'")
        if self.hnsw_rebuild_min_interval_h < 0:
            errors.append("HNSW_REBUILD_MIN_INTERVAL_H must be 0 or more")
        try:
            check_model_name(self.embedding_model, "EMBEDDING_MODEL")
        except ConfigError as exc:
            errors.append(str(exc))
        if self.log_format not in ("text", "json"):
            errors.append("LOG_FORMAT must be 'text' or 'json'")
        if errors:
            raise ConfigError("invalid configuration: " + "; ".join(errors))

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` return these settings (for child processes)."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                if f.name == "db_prepare_threshold":
                    env[f.name.upper()] = "off"
                continue
            env[f.name.upper()] = (
                ("true" if value else "false") if isinstance(value, bool) else str(value)
            )
        return env

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with the psycopg 3 driver, whatever scheme the operator wrote."""
        scheme, _, rest = self.database_url.partition("://")
        if scheme in ("postgres", "postgresql"):
            scheme = "postgresql+psycopg"
        return f"{scheme}://{rest}"

    @property
    def rate_limit_wait_bound_s(self) -> float:
        """RATE_LIMIT_MAX_WAIT_S, capped at half the smaller of the drain budget and the lease:
        a batch waiting in hand for rate budget stays well within both."""
        return min(self.rate_limit_max_wait_s, self.embed_drain_budget_s / 2, self.job_lease_s / 2)

    @property
    def max_connections_per_process(self) -> int:
        return self.db_pool_size + self.db_max_overflow


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def get(self, name: str, parse: Callable[[str], object], default: object) -> object:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            # Never echo the raw value: it may be a secret.
            self.errors.append(f"{name}: {exc}")
            return default


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _parse_int(raw: str) -> int:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):  # "nan" and "inf" parse, but pass every range check
        raise ValueError("expected a finite number")
    return value


def _parse_provider(raw: str) -> Provider:
    lowered = raw.lower()
    if lowered == "openai":
        return "openai"
    if lowered == "local":
        return "local"
    raise ValueError(f"unknown provider (expected one of {', '.join(PROVIDERS)})")


def _parse_optional_int(raw: str) -> int | None:
    if raw.lower() in ("off", "none", "disable", "disabled"):
        return None
    return _parse_int(raw)


def _parse_log_format(raw: str) -> LogFormat:
    if raw == "json":
        return "json"
    if raw == "text":
        return "text"
    raise ValueError("expected 'text' or 'json'")


def _identity(raw: str) -> str:
    return raw


_PARSERS: dict[str, Callable[[str], object]] = {
    "embedding_provider": _parse_provider,
    "db_prepare_threshold": _parse_optional_int,
    "log_format": _parse_log_format,
    "result_backend_url": _identity,
    "openai_api_key": _identity,
    "openai_base_url": _identity,
}


def _parser_for(default: object) -> Callable[[str], object]:
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, int):
        return _parse_int
    if isinstance(default, float):
        return _parse_float
    return _identity


def _check_url(errors: list[str], name: str, url: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(url)
    except ValueError:
        errors.append(f"{name} is not a valid URL")
        return
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in schemes:
        errors.append(f"{name} must start with {' or '.join(s + '://' for s in schemes)}")
    elif scheme != "unix" and not parts.hostname and "host=" not in parts.query:
        errors.append(f"{name} has no host")
    else:
        try:
            parts.port  # noqa: B018 - urlsplit parses the port only when asked
        except ValueError:
            errors.append(f"{name} has an invalid port (expected a number from 1 to 65535)")


def check_env_name(name: str, option: str = "--api-key-env") -> str:
    """`name` if it is an environment variable name (^[A-Z_][A-Z0-9_]*$), else ConfigError.

    The message never repeats the value: what was given may be the key itself.
    """
    if ENV_NAME.fullmatch(name):
        return name
    hint = (
        "it looks like an API key itself; put the key in an environment variable "
        "and give that variable's name"
        if name.strip().lower().startswith("sk-")
        else "use upper-case letters, digits and _ (not starting with a digit)"
    )
    raise ConfigError(
        f"{option} must be the name of an environment variable holding the API key, "
        f"not the key; {hint}"
    )


def check_model_name(name: str, option: str = "the model name") -> str:
    """`name` if it may name a model, else ConfigError saying why.

    The rule: 1 to MODEL_NAME_MAX (200) printable characters (str.isprintable: no control,
    format or line-separator characters), not starting or ending with white space. `:` is
    allowed (Ollama's `nomic-embed-text:v1.5`), as are quotes and `%`: index DDL is built
    with quoted literals and run as written (worker.maintenance).
    """
    if not name:
        raise ConfigError(f"{option} must not be empty")
    problems = []
    if len(name) > MODEL_NAME_MAX:
        problems.append(f"is {len(name)} characters long (at most {MODEL_NAME_MAX})")
    if not name.isprintable():
        bad = next(c for c in name if not c.isprintable())
        problems.append(f"contains the non-printable character U+{ord(bad):04X}")
    if name != name.strip():
        problems.append("starts or ends with white space")
    if problems:
        raise ConfigError(f"{option} {name[:60]!r} " + " and ".join(problems))
    return name


def check_model_settings(
    provider: str,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    batch_max: int | None = None,
    batch_max_tokens: int | None = None,
) -> None:
    """Refuse a model row's provider settings that embedding_models' CHECKs would refuse,
    with every problem in one ConfigError named after the `embedder models add` options."""
    errors: list[str] = []
    if provider not in PROVIDERS:
        errors.append(f"--provider must be one of {', '.join(PROVIDERS)}")
    if api_key_env is not None:
        try:
            check_env_name(api_key_env)
        except ConfigError as exc:
            errors.append(str(exc))
    if base_url is not None and not re.match(r"https?://[^/?#]+", base_url):
        errors.append("--base-url must be an http:// or https:// URL with a host")
    if provider == "local" and (base_url is not None or api_key_env is not None):
        errors.append("--base-url and --api-key-env apply to provider openai only")
    if batch_max is not None and not 1 <= batch_max <= 2048:
        errors.append("--batch-max must be between 1 and 2048 (OpenAI's input limit)")
    if batch_max_tokens is not None and batch_max_tokens < 1:
        errors.append("--batch-max-tokens must be at least 1")
    if errors:
        raise ConfigError("invalid model settings: " + "; ".join(errors))


def secret_from_env(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of the environment variable `name` (None when unset or blank).

    Read when a model's embedder is built, so a model can use its own key variable; the
    value is returned to the caller only and never logged.
    """
    env = os.environ if env is None else env
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and status output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    # libpq also accepts the password as a query parameter.
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return parts._replace(netloc=netloc, query=query).geturl()
