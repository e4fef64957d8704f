"""The `embedder` command. Exit codes: 0 ok, 1 a check or operation failed, 2 bad usage/config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from worker import logs

logger = logging.getLogger("embedder")


class UsageError(Exception):
    """A command line that cannot work as given: one line, exit code 2 (as --help promises)."""


def _iso_date(value: str) -> datetime:
    """--since: an ISO date or date-time (2026-11-30, 2026-11-30T08:00+09:00); UTC if no zone."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date such as 2026-11-30 or 2026-11-30T08:00, not {value[:40]!r}"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2), as every other usage error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(value: str) -> int:
    """An id or count: plain decimal digits, at least 1."""
    from worker import messages

    number = messages.parse_id(value)
    if number is None:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value[:40]!r}")
    return number


def _deps(application_name: str = "embedder-cli") -> Any:
    from worker.config import Settings
    from worker.deps import build_deps

    return build_deps(Settings.from_env(), application_name=application_name)


def cmd_migrate(_args: argparse.Namespace) -> int:
    from worker.maintenance import migrate

    deps = _deps()
    migrate(deps)
    print(f"migrated to head; model {deps.settings.embedding_model} registered")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from worker import repository
    from worker.config import ConfigError, redact_url
    from worker.maintenance import register_model

    def settings_of(m: repository.ModelInfo) -> str:
        """The row's own provider settings, tab-separated; "-" is the process's setting.

        api_key_env is the variable's name: no key is stored, so none can be shown.
        """
        base_url = redact_url(m.base_url) if m.base_url else None
        own = (base_url, m.api_key_env, m.batch_max, m.batch_max_tokens)
        return "\t".join("-" if v is None else str(v) for v in own)

    deps = _deps()
    if args.action == "add":
        if not args.name or args.dimensions is None:
            raise ConfigError("models add needs NAME and --dimensions N")
        # An endpoint or a key variable only means something to an openai model.
        provider = args.provider or ("openai" if args.base_url or args.api_key_env else None)
        # Invalid settings (a key pasted into --api-key-env) are a ConfigError raised
        # before anything is written: one line, exit 2.
        info = register_model(
            deps,
            args.name,
            args.dimensions,
            provider,
            build_index=not args.no_index,
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            batch_max=args.batch_max,
            batch_max_tokens=args.batch_max_tokens,
        )
        print(f"model {info.name}: {info.dimensions} dims, provider {info.provider}")
        print(f"  base_url, api_key_env, batch_max, batch_max_tokens: {settings_of(info)}")
        print("  (- = the process's OPENAI_BASE_URL, OPENAI_API_KEY, EMBED_BATCH_MAX(_TOKENS))")
        return 0
    # Columns: name, dims, provider, indexed|backfill, then the row's own settings
    # (base_url, api_key_env, batch_max, batch_max_tokens; "-" = the process's).
    with deps.engine.connect() as conn:
        for m in repository.list_models(conn):
            index = "indexed" if m.is_indexed else "backfill"
            print(f"{m.name}\t{m.dimensions}\t{m.provider}\t{index}\t{settings_of(m)}")
    return 0


def _read_ids(values: Sequence[str], use_stdin: bool) -> list[int]:
    from worker.pipeline import validate_ids

    raw: list[str] = list(values)
    if use_stdin:
        raw.extend(tok for line in sys.stdin for tok in line.replace(",", " ").split())
    return validate_ids(raw)


def cmd_enqueue(args: argparse.Namespace) -> int:
    from worker.client import enqueue

    ids = _read_ids(args.ids, args.stdin)
    if not ids:
        raise UsageError("no article ids given: enqueue ID... or --stdin")
    task_ids = enqueue(ids, args.model, chunk_size=args.chunk)
    print(f"enqueued {len(ids)} ids in {len(task_ids)} messages")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker import repository
    from worker.client import enqueue

    deps = _deps()
    info = deps.model(args.model)
    after, total = 0, 0
    with tqdm(unit="ids", desc=f"backfill {info.name}", disable=args.quiet) as bar:
        while True:
            with deps.engine.connect() as conn:
                ids = repository.missing_vector_ids(conn, info.name, after, args.chunk)
            if not ids:
                break
            enqueue(ids, info.name, chunk_size=args.chunk)
            after = ids[-1]
            total += len(ids)
            bar.update(len(ids))
    print(f"enqueued {total} articles lacking a vector for {info.name}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from worker.status import collect_status, render_status

    deps = _deps()
    status = collect_status(deps)
    print(json.dumps(status, indent=2, default=str) if args.json else render_status(status))
    return 0


def cmd_retry_failed(args: argparse.Namespace) -> int:
    from worker import repository

    deps = _deps()
    with deps.engine.begin() as conn:
        count = repository.redrive_failed(
            conn, model=args.model, reason=args.reason, include_skipped=args.include_skipped
        )
        models = repository.models_with_ready_work(conn)
    for model in models:
        _kick(deps, model)
    print(f"re-drove {count} failed items")
    return 0


def _kick(deps: Any, model: str) -> None:
    """Publish an embeddings.drain message so a worker picks the pending items up now."""
    import redis

    from worker.client import TASK_DRAIN, task_message

    client = redis.Redis.from_url(deps.settings.redis_url)
    try:
        client.lpush("embeddings", json.dumps(task_message(TASK_DRAIN, [model], {})))
    finally:
        client.close()


def cmd_maintain(args: argparse.Namespace) -> int:
    from worker import maintenance

    deps = _deps("embedder-maintenance")
    if args.what == "partitions":
        result = maintenance.ensure_partitions(deps, args.months)
    else:
        result = maintenance.rebuild_hnsw(deps, force=not args.if_needed, model=args.model)
    print(json.dumps(result.as_dict(), default=str) if args.json else _render_maintenance(result))
    return 1 if result.is_locked_out or result.failed else 0


def _render_maintenance(result: Any) -> str:
    """A maintenance result for people: what was done, then how long it took."""
    lines = []
    if result.is_locked_out:
        lines.append(f"{result.job}: another maintenance run holds the lock; nothing done")
    for label, names in (
        ("created", result.created),
        ("rebuilt", result.rebuilt),
        ("dropped invalid", result.dropped_invalid),
        ("dropped (retention)", result.dropped),
    ):
        for name in names:
            seconds = result.durations.get(name)
            lines.append(f"{label} {name}" + (f" in {seconds:.1f}s" if seconds else ""))
    for model, ratio in sorted(result.churn.items()):
        lines.append(f"churn of {model} since its last build: {ratio:.1%}")
    for model, built_at in sorted(result.recently_built.items()):
        lines.append(f"skipped {model}: its index was built at {built_at} (within the interval)")
    for model, error in sorted(result.failed.items()):
        lines.append(f"FAILED {model}: {error}")
    if len(lines) == (1 if result.is_locked_out else 0):
        lines.append(f"{result.job}: nothing to do")
    lines.append(f"done in {result.seconds:.1f}s")
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    from worker.search import format_hits, search_like, search_text

    if args.like is None and not args.text:
        raise UsageError("give TEXT to search for, or --like ARTICLE_ID")
    if args.like is not None and args.text:
        raise UsageError("give TEXT or --like ARTICLE_ID, not both")
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    deps = _deps()
    if args.like is not None:
        hits = search_like(deps, args.like, model=args.model, k=args.k, since=args.since)
    else:
        hits = search_text(deps, " ".join(args.text), model=args.model, k=args.k, since=args.since)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "article_id": h.article_id,
                        "published_at": h.published_at.isoformat(),
                        "title": h.title,
                        "similarity": round(1.0 - h.distance, 6),
                        "cosine_distance": round(h.distance, 6),
                    }
                    for h in hits
                ],
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print("\n".join(format_hits(hits)))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from worker.diagnostics import failed, render, run_diagnostics

    checks = run_diagnostics(_deps("embedder-diagnose"))
    if args.json:
        report = {"ok": not failed(checks), "checks": [c.as_dict() for c in checks]}
        print(json.dumps(report, indent=2))
    else:
        print(render(checks))
    return 1 if failed(checks) else 0


def cmd_sweep(_args: argparse.Namespace) -> int:
    from worker import pipeline

    deps = _deps()
    requeued, failed, models = pipeline.sweep(deps)
    for model in models:
        _kick(deps, model)
    print(f"requeued={requeued} failed={failed} drains={len(models)}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from worker.config import Settings
    from worker.health import check_health

    health = check_health(
        Settings.from_env(),
        max_backlog_age_s=args.max_backlog_age,
        skip=args.skip or (),
        worker_names=args.worker or None,
        timeout_s=args.timeout,
        liveness=args.liveness,
    )
    print(json.dumps(health.as_dict(), indent=2) if args.json else health.render())
    return 0 if health.ok else 1


def cmd_metrics_server(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from worker.config import Settings
    from worker.db import make_engine
    from worker.metrics_server import make_metrics_server

    # Scrapes are rare and each needs one connection: never hold a worker-sized pool.
    settings = replace(Settings.from_env(), db_pool_size=1, db_max_overflow=1)
    engine = make_engine(settings, application_name="embedder-metrics")
    server = make_metrics_server(engine, args.address, args.port)
    print(f"serving Prometheus metrics on http://{args.address}:{server.server_port}/metrics")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        engine.dispose()
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from worker import deadletters, repository

    if args.action == "replay" and args.ids is not None and len(args.letters) != 1:
        raise UsageError("--ids replaces the ids of one dead letter: give exactly one ID")
    ids = _ids_option(args.ids) if args.action == "replay" else None
    if args.action == "purge" and (args.before is None) == (not args.all):
        raise UsageError("purge needs --before DATE or --all (one of them)")
    deps = _deps()
    if args.action == "list":
        with deps.engine.connect() as conn:
            letters = repository.list_dead_letters(conn, limit=args.limit, reason=args.reason)
            total = sum(repository.dead_letter_counts(conn).values())
        if args.json:
            print(json.dumps([deadletters.describe(d) for d in letters], indent=2, default=str))
            return 0
        print(f"{total} dead letters stored; newest {len(letters)}:" if total else "none stored")
        for d in letters:
            where = " ".join(x for x in (d.queue, d.task_name, d.task_id) if x) or "-"
            print(
                f"{d.id}\t{d.received_at:%Y-%m-%d %H:%M:%S}\t{d.reason}\t{where}\t"
                f"{d.payload_size} B\t{d.detail[:120]}"
            )
        return 0
    if args.action == "show":
        with deps.engine.connect() as conn:
            letter = repository.get_dead_letter(conn, args.letter)
        if letter is None:
            print(f"embedder dead-letters: there is no dead letter {args.letter}", file=sys.stderr)
            return 1
        if args.raw:
            sys.stdout.buffer.write(letter.payload or b"")
            return 0
        shown = deadletters.describe(letter)
        if args.json:
            print(json.dumps(shown, indent=2, ensure_ascii=False, default=str))
        else:
            for key, value in shown.items():
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                print(f"{key}: {text}")
        return 0
    if args.action == "replay":
        failed = 0
        for letter_id in args.letters:
            try:
                done = deadletters.replay(deps, letter_id, ids=ids, model=args.model)
            except deadletters.NotReplayable as exc:
                failed += 1
                print(f"embedder dead-letters: {letter_id} not replayed: {exc}", file=sys.stderr)
                continue
            print(
                f"replayed dead letter {done.letter_id}: {done.ids} ids for {done.model} "
                f"in {len(done.task_ids)} messages"
            )
        return 1 if failed else 0
    with deps.engine.begin() as conn:
        count = repository.purge_dead_letters(conn, before=None if args.all else args.before)
    print(f"purged {count} dead letters")
    return 0


def _ids_option(values: Sequence[str] | None) -> list[int] | None:
    """--ids: article ids, separated by spaces or commas, each plain decimal digits."""
    from worker import messages

    if values is None:
        return None
    tokens = [t for v in values for t in v.replace(",", " ").split()]
    ids, bad = messages.parse_ids(tokens)
    if bad or not ids:
        raise UsageError(
            messages.refused_ids_detail(bad, len(tokens)) if bad else "--ids names no id"
        )
    return ids


def cmd_run(_args: argparse.Namespace) -> int:
    # The local stack is a development tool of the source checkout (devstack/), not part of
    # the installed package: say where it is instead of failing on an import.
    print(
        "embedder: the local stack is not part of the installed package; "
        "from a source checkout run `make run` or `make demo`",
        file=sys.stderr,
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="embedder", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(fn=fn)
        return sp

    for name in ("run", "demo"):
        sp = add(name, cmd_run, "the local stack moved to the checkout: `make run`/`make demo`")
        sp.add_argument("--articles", type=int, default=300, help=argparse.SUPPRESS)
    add("migrate", cmd_migrate, "apply migrations and register EMBEDDING_MODEL")
    sp = add("models", cmd_models, "list or add embedding models (each with its own provider)")
    sp.add_argument("action", choices=["list", "add"], help="list the registry or add NAME")
    sp.add_argument("name", nargs="?", help="add: the model name sent to the provider")
    sp.add_argument(
        "--dimensions", type=int, metavar="N", help="add: vector size the model returns (required)"
    )
    sp.add_argument(
        "--provider",
        choices=["openai", "local"],
        help="add: openai (any OpenAI-compatible API) or local (offline n-grams); default "
        "openai with --base-url or --api-key-env, else EMBEDDING_PROVIDER",
    )
    sp.add_argument(
        "--base-url",
        metavar="URL",
        help="add, openai: the API's base URL, e.g. http://host:11434/v1; default OPENAI_BASE_URL",
    )
    sp.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="add, openai: NAME of the environment variable holding the API key (never the "
        "key itself; only the name is stored); default OPENAI_API_KEY",
    )
    sp.add_argument(
        "--batch-max",
        type=int,
        metavar="N",
        help="add: most inputs per request for this model (1-2048); "
        "default and ceiling EMBED_BATCH_MAX",
    )
    sp.add_argument(
        "--batch-max-tokens",
        type=int,
        metavar="N",
        help="add: most tokens per request for this model; "
        "default and ceiling EMBED_BATCH_MAX_TOKENS",
    )
    sp.add_argument(
        "--no-index", action="store_true", help="add: backfill first, build the index later"
    )
    sp = add("enqueue", cmd_enqueue, "publish embed_articles messages for these ids")
    sp.add_argument("ids", nargs="*", metavar="ID", help="article ids (plain decimal digits)")
    sp.add_argument("--stdin", action="store_true", help="also read ids from standard input")
    sp.add_argument("--model", help="embed with this registered model (default EMBEDDING_MODEL)")
    sp.add_argument(
        "--chunk", type=int, default=1000, metavar="N", help="ids per message (default 1000)"
    )
    sp = add("backfill", cmd_backfill, "enqueue every article lacking a vector for a model")
    sp.add_argument("--model", help="the registered model to fill (default EMBEDDING_MODEL)")
    sp.add_argument(
        "--chunk", type=int, default=1000, metavar="N", help="ids per message (default 1000)"
    )
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp = add("status", cmd_status, "backlog, failures, pool, partitions, index health")
    sp.add_argument("--json", action="store_true", help="one JSON document, for machines")
    sp = add("retry-failed", cmd_retry_failed, "re-drive failed items")
    sp.add_argument("--model", help="only this model's failures (default: every model)")
    sp.add_argument("--reason", help="only failures with this reason, e.g. not_found")
    sp.add_argument(
        "--include-skipped", action="store_true", help="also skipped items (e.g. empty_text)"
    )
    sp = add("maintain", cmd_maintain, "partitions ahead or HNSW rebuild, now")
    sp.add_argument(
        "what",
        choices=["partitions", "hnsw"],
        help="partitions: create the coming months' partitions; hnsw: build or rebuild indexes",
    )
    sp.add_argument(
        "--months",
        type=int,
        default=None,
        metavar="N",
        help="partitions: months ahead (default PARTITIONS_AHEAD)",
    )
    sp.add_argument("--model", help="hnsw: only this model's index (default: every model)")
    sp.add_argument(
        "--if-needed", action="store_true", help="hnsw: rebuild only when churn warrants it"
    )
    sp.add_argument("--json", action="store_true", help="one JSON document, for machines")
    sp = add(
        "search",
        cmd_search,
        "nearest articles to TEXT or to article --like ID (similarity = 1 - cosine distance)",
    )
    sp.add_argument("text", nargs="*", metavar="TEXT", help="what to search for")
    sp.add_argument(
        "--like", type=int, metavar="ARTICLE_ID", help="articles similar to this article instead"
    )
    sp.add_argument(
        "--model", help="search this registered model's vectors (default EMBEDDING_MODEL)"
    )
    sp.add_argument("-k", type=int, default=5, metavar="N", help="how many results (default 5)")
    sp.add_argument(
        "--since",
        type=_iso_date,
        metavar="DATE",
        help="only articles published since this ISO date (2026-11-30 or 2026-11-30T08:00)",
    )
    sp.add_argument("--json", action="store_true", help="JSON, with similarity and distance")
    sp = add("diagnose", cmd_diagnose, "schema drift, index and plan checks; exit 1 on a failure")
    sp.add_argument("--json", action="store_true", help="one JSON document, for machines")
    add("sweep", cmd_sweep, "requeue stale in-flight items and drain pending work now")
    sp = add(
        "health",
        cmd_health,
        "database at head, broker, a live consuming worker, backlog age; exit 0/1",
    )
    sp.add_argument("--json", action="store_true", help="one JSON document, for machines")
    sp.add_argument(
        "--max-backlog-age",
        type=float,
        default=900.0,
        metavar="S",
        help="fail when the oldest pending item is older (default 900 s)",
    )
    sp.add_argument(
        "--skip",
        action="append",
        choices=["database", "broker", "worker", "backlog"],
        help="leave out this check (repeatable)",
    )
    sp.add_argument(
        "--worker",
        action="append",
        metavar="NAME",
        help="ping this worker only; %%h is this host, as in `celery worker -n embeddings@%%h`",
    )
    sp.add_argument(
        "--liveness",
        action="store_true",
        help="only broker and worker: what an orchestrator should restart on "
        "(not database or backlog, which a restart does not cure)",
    )
    sp.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="per-check network timeout (default 2 s)",
    )
    sp = add(
        "dead-letters",
        cmd_dead_letters,
        "messages (or parts) the workers refused: list, show, replay, purge",
    )
    dsub = sp.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="list, show, replay or purge"
    )
    dp = dsub.add_parser("list", help="the newest dead letters: id, time, reason, where, size")
    dp.add_argument("--reason", help="only this reason, e.g. invalid_ids or not_json")
    dp.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="how many (default 50)"
    )
    dp.add_argument("--json", action="store_true", help="JSON, with payloads, for machines")
    dp = dsub.add_parser("show", help="one dead letter: fields, payload, decoded body")
    dp.add_argument("letter", type=_positive, metavar="ID", help="the dead letter's id")
    dp.add_argument("--raw", action="store_true", help="write the stored payload bytes only")
    dp.add_argument("--json", action="store_true", help="one JSON document, for machines")
    dp = dsub.add_parser(
        "replay",
        help="re-send the article ids of dead letters whose payload now parses (or --ids), "
        "then delete them",
    )
    dp.add_argument(
        "letters", type=_positive, nargs="+", metavar="ID", help="dead letter ids to replay"
    )
    dp.add_argument(
        "--ids",
        nargs="+",
        metavar="ARTICLE_ID",
        help="send these article ids instead of the stored ones (one dead letter only)",
    )
    dp.add_argument("--model", help="send for this registered model instead of the stored one")
    dp = dsub.add_parser("purge", help="delete dead letters: --before DATE, or --all")
    dp.add_argument(
        "--before",
        type=_iso_date,
        metavar="DATE",
        help="received before this ISO date or date-time (UTC if no zone)",
    )
    dp.add_argument("--all", action="store_true", help="every stored dead letter")
    sp = add("metrics-server", cmd_metrics_server, "Prometheus exporter for all worker processes")
    sp.add_argument("--port", type=int, default=9808, help="port to listen on (default 9808)")
    sp.add_argument(
        "--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from worker.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
        logs.configure(
            "WARNING" if args.command not in ("run", "demo") else settings.log_level,
            settings.log_format,
        )
        code: int = args.fn(args)
        return code
    except ConfigError as exc:
        print(f"embedder: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"embedder {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the one-line reason; tracebacks only with LOG_LEVEL=DEBUG
        logger.debug("command failed", exc_info=True)
        print(f"embedder: {_unreachable(exc) or 'error: ' + _one_line(exc)}", file=sys.stderr)
        return 1


def _unreachable(exc: BaseException) -> str | None:
    """For a database or broker that cannot be reached: which setting, which URL (without
    its password), and what to check. None for any other error."""
    import psycopg
    import redis
    from kombu.exceptions import OperationalError as KombuOperationalError
    from sqlalchemy import exc as sa_exc

    from worker.config import Settings, redact_url

    settings = Settings.from_env()
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or isinstance(
        cause, psycopg.OperationalError
    ):
        reason = _reason(cause)
        if "certificate" in reason or "SSL" in reason:
            hint = "Check the server's certificate and DATABASE_URL's sslmode and sslrootcert."
        elif "authentication" in reason or "password" in reason:
            hint = "Check the user and password in DATABASE_URL."
        else:
            hint = "Is the database running and the URL right? (`make run` starts a local one.)"
        return (
            f"cannot reach PostgreSQL at {redact_url(settings.database_url)} (DATABASE_URL): "
            f"{reason}. {hint}"
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | KombuOperationalError):
        return (
            f"cannot reach Redis at {redact_url(settings.redis_url)} (REDIS_URL): "
            f"{_reason(exc)}. Is Redis running and the URL right?"
        )
    return None


def _reason(exc: BaseException) -> str:
    """The cause in a driver's message, without its preamble ("connection to server at …
    failed: Connection refused" -> "Connection refused")."""
    from worker.config import redact_url

    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0].rsplit(": ", 1)[-1].strip().rstrip(".") if lines else type(exc).__name__
    for word in text.split():
        if "://" in word:
            text = text.replace(word, redact_url(word))
    return text[:200]


def _one_line(exc: BaseException) -> str:
    from worker.config import redact_url

    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for word in message.split():
        if "://" in word:
            message = message.replace(word, redact_url(word))
    return f"{type(exc).__name__}: {message}"[:300]


if __name__ == "__main__":
    sys.exit(main())
