"""`embedder diagnose`: is the schema what the code expects, and do the key queries use it?

After seed 002's verification list: migrations applied vs. head (drift), foreign-key
columns without an index, expected indexes present and valid, unused and duplicate
indexes, partial-index efficiency, HNSW index size and churn since build, partitions for
the coming months, and EXPLAIN of the key queries with a pass/fail on the plan node.

Every check is read-only. A check has a status: "pass", "fail" (the command exits 1) or
"info" (worth knowing, never a failure: an unused index on a young database is normal).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import Connection, text

from worker import hnsw, partitions, repository, schema
from worker.deps import Deps
from worker.maintenance import hnsw_churn
from worker.search import search_sql

Status = Literal["pass", "fail", "info"]


@dataclass
class Check:
    name: str
    status: Status
    summary: str
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_diagnostics(deps: Deps) -> list[Check]:
    """Run every check against the configured database; never writes."""
    checks: list[Check] = []
    steps: list[Callable[[Deps, Connection], list[Check]]] = [
        check_versions,
        check_migrations,
        check_fk_indexes,
        check_expected_indexes,
        check_duplicate_indexes,
        check_unused_indexes,
        check_partial_indexes,
        check_hnsw,
        check_partitions,
        check_plans,
    ]
    with deps.engine.connect() as conn:
        for step in steps:
            try:
                checks += step(deps, conn)
            except Exception as exc:  # one broken check must not hide the others
                conn.rollback()
                checks.append(Check(step.__name__.removeprefix("check_"), "fail", f"error: {exc}"))
            else:
                conn.rollback()
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def render(checks: list[Check]) -> str:
    marks = {"pass": "ok  ", "fail": "FAIL", "info": "info"}
    lines = []
    for c in checks:
        lines.append(f"[{marks[c.status]}] {c.name}: {c.summary}")
        lines += [f"         {d}" for d in c.details]
    bad = sum(c.status == "fail" for c in checks)
    lines.append(f"{len(checks)} checks, {bad} failed")
    return "\n".join(lines)


# --- versions -------------------------------------------------------------------------------


def check_versions(_deps: Deps, conn: Connection) -> list[Check]:
    """The PostgreSQL and pgvector versions; a pgvector too old for safe HNSW vacuums fails.

    Fails rather than warns: the corruption is silent (searches just miss rows) and the
    fix, an extension upgrade and a rebuild, is planned work that diagnose exists to prompt.
    """
    versions = hnsw.server_versions(conn)
    summary = f"PostgreSQL {versions.postgres}, pgvector {versions.pgvector or 'not installed'}"
    problem = versions.pgvector_problem
    if problem is not None:
        return [Check("versions", "fail", summary, [problem])]
    return [Check("versions", "pass", summary)]


# --- migrations -----------------------------------------------------------------------------


def check_migrations(_deps: Deps, conn: Connection) -> list[Check]:
    """The revision recorded in alembic_version against the head of migrations/."""
    heads = schema.head_revisions()
    applied = schema.applied_revisions(conn)
    if applied == heads:
        return [Check("migrations", "pass", f"at head {', '.join(sorted(heads))}")]
    return [
        Check(
            "migrations",
            "fail",
            f"database at {', '.join(sorted(applied)) or 'no revision'}, "
            f"code head {', '.join(sorted(heads))}: run `embedder migrate`",
        )
    ]


# --- indexes --------------------------------------------------------------------------------

_FK_WITHOUT_INDEX = """
SELECT c.conrelid::regclass::text, c.conname,
       (SELECT string_agg(a.attname, ', ' ORDER BY k.n)
          FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum)
FROM pg_constraint c
WHERE c.contype = 'f'
  AND c.connamespace = current_schema()::regnamespace
  AND c.conparentid = 0
  AND NOT EXISTS (
      SELECT 1 FROM pg_index i
      WHERE i.indrelid = c.conrelid
        AND i.indisvalid
        AND i.indpred IS NULL
        -- the FK columns, in any order, are the index's leading columns
        AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
        AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey
  )
ORDER BY 1, 2
"""


def check_fk_indexes(_deps: Deps, conn: Connection) -> list[Check]:
    """Every foreign key has an index whose leading columns are its columns.

    Without one, deleting or re-keying a referenced row scans the referencing table (the
    cascade from articles to article_embeddings would read every vector row).
    """
    rows = conn.execute(text(_FK_WITHOUT_INDEX)).all()
    if not rows:
        return [Check("fk_indexes", "pass", "every foreign key has a leading-column index")]
    return [
        Check(
            "fk_indexes",
            "fail",
            f"{len(rows)} foreign key(s) without an index",
            [f"{table}.{name} ({cols})" for table, name, cols in rows],
        )
    ]


def expected_indexes(conn: Connection) -> dict[str, str]:
    """Index name -> table, from worker.models plus one HNSW index per indexed model."""
    from worker.models import metadata

    expected: dict[str, str] = {}
    for table in metadata.tables.values():
        if table.primary_key.name:
            expected[str(table.primary_key.name)] = table.name
        for index in table.indexes:
            expected[str(index.name)] = table.name
    for info in repository.list_models(conn):
        if info.is_indexed:
            expected[hnsw.index_name(info.name)] = "article_embeddings"
    return expected


def check_expected_indexes(_deps: Deps, conn: Connection) -> list[Check]:
    """The indexes the code relies on exist and are valid; no invalid index lingers."""
    rows = conn.execute(
        text(
            "SELECT c.relname, i.indisvalid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace"
        )
    ).all()
    present = {name: valid for name, valid in rows}
    expected = expected_indexes(conn)
    missing = sorted(n for n in expected if n not in present)
    invalid = sorted(n for n, valid in present.items() if not valid)
    checks = []
    if missing:
        checks.append(
            Check(
                "expected_indexes",
                "fail",
                f"{len(missing)} expected index(es) missing",
                [f"{expected[n]}: {n}" for n in missing],
            )
        )
    else:
        checks.append(Check("expected_indexes", "pass", f"all {len(expected)} present"))
    if invalid:
        checks.append(
            Check(
                "invalid_indexes",
                "fail",
                f"{len(invalid)} invalid index(es) (an interrupted concurrent build): "
                "`embedder maintain hnsw` drops and rebuilds HNSW ones",
                invalid,
            )
        )
    else:
        checks.append(Check("invalid_indexes", "pass", "no index is marked invalid"))
    return checks


def check_duplicate_indexes(_deps: Deps, conn: Connection) -> list[Check]:
    """Two indexes of one table with the same columns, expressions, predicate and opclasses."""
    rows = conn.execute(
        text(
            """
            SELECT i.indrelid::regclass::text, array_agg(c.relname::text ORDER BY c.relname)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE c.relnamespace = current_schema()::regnamespace
            GROUP BY i.indrelid, i.indkey::text, i.indclass::text,
                     coalesce(pg_get_expr(i.indexprs, i.indrelid), ''),
                     coalesce(pg_get_expr(i.indpred, i.indrelid), ''), c.relam
            HAVING count(*) > 1
            ORDER BY 1
            """
        )
    ).all()
    if not rows:
        return [Check("duplicate_indexes", "pass", "no duplicate indexes")]
    return [
        Check(
            "duplicate_indexes",
            "fail",
            f"{len(rows)} set(s) of duplicate indexes: each costs every write",
            [f"{table}: {', '.join(names)}" for table, names in rows],
        )
    ]


def check_unused_indexes(_deps: Deps, conn: Connection) -> list[Check]:
    """Indexes never scanned since statistics were reset (informational)."""
    rows = conn.execute(
        text(
            """
            SELECT s.relname, s.indexrelname, pg_relation_size(s.indexrelid)
            FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
            WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
              AND s.schemaname = current_schema()
              AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = s.relid)
            ORDER BY 3 DESC, 2
            """
        )
    ).all()
    return [
        Check(
            "unused_indexes",
            "info",
            f"{len(rows)} index(es) with idx_scan = 0 (normal on a young database)",
            [f"{t}.{n}: {size} bytes" for t, n, size in rows[:20]],
        )
    ]


def check_partial_indexes(_deps: Deps, conn: Connection) -> list[Check]:
    """How much of its table each partial index covers (seed 002: ~80% smaller)."""
    rows = conn.execute(
        text(
            """
            SELECT t.relname, c.relname, pg_get_expr(i.indpred, i.indrelid),
                   c.reltuples, greatest(t.reltuples, 0), pg_relation_size(c.oid)
            FROM pg_index i
            JOIN pg_class c ON c.oid = i.indexrelid
            JOIN pg_class t ON t.oid = i.indrelid
            WHERE i.indpred IS NOT NULL AND c.relnamespace = current_schema()::regnamespace
            ORDER BY 1, 2
            """
        )
    ).all()
    details = []
    for table, index, pred, idx_rows, table_rows, size in rows:
        share = (
            f"{idx_rows / table_rows:.0%} of rows"
            if table_rows > 0 and idx_rows >= 0
            else "unanalyzed"
        )
        details.append(f"{table}.{index} WHERE {pred}: {share}, {size} bytes")
    return [Check("partial_indexes", "info", f"{len(rows)} partial index(es)", details)]


def check_hnsw(deps: Deps, conn: Connection) -> list[Check]:
    """Each model's HNSW index: size, build parameters, churn since its last build."""
    details = []
    for info in repository.list_models(conn):
        name = hnsw.index_name(info.name)
        row = conn.execute(
            text(
                "SELECT pg_relation_size(c.oid), c.reloptions FROM pg_class c WHERE c.relname = :n"
            ),
            {"n": name},
        ).one_or_none()
        if row is None:
            details.append(
                f"{info.name}: no index ({'backfill mode' if not info.is_indexed else 'missing'})"
            )
            continue
        churn = hnsw_churn(conn, info)
        due = (
            churn is not None
            and deps.settings.hnsw_rebuild_churn_ratio > 0
            and churn.ratio >= deps.settings.hnsw_rebuild_churn_ratio
        )
        churn_text = (
            f"churn {churn.ratio:.2f} since {churn.built_at:%Y-%m-%d %H:%M}"
            + (" (rebuild due)" if due else "")
            if churn is not None
            else "no recorded build"
        )
        details.append(
            f"{info.name}: {row[0] / 2**20:.1f} MiB, {', '.join(row[1] or [])}, {churn_text}"
        )
    return [Check("hnsw", "info", f"{len(details)} model(s)", details)]


def check_partitions(deps: Deps, conn: Connection) -> list[Check]:
    """Partitions exist for this month and the next PARTITIONS_AHEAD months."""
    present = partitions.existing_partitions(conn)
    wanted = partitions.upcoming_months(datetime.now(UTC).date(), deps.settings.partitions_ahead)
    missing = [p.name for p in wanted if p.name not in present]
    in_default = (
        conn.execute(text(f"SELECT count(*) FROM {partitions.DEFAULT_PARTITION}")).scalar_one()
        if partitions.DEFAULT_PARTITION in present
        else 0
    )
    checks = []
    if missing:
        checks.append(
            Check(
                "partitions",
                "fail",
                f"missing {', '.join(missing)}: run `embedder maintain partitions`",
            )
        )
    else:
        checks.append(Check("partitions", "pass", f"{wanted[0].name} to {wanted[-1].name} present"))
    if in_default:
        checks.append(
            Check(
                "default_partition",
                "info",
                f"{in_default} row(s) in {partitions.DEFAULT_PARTITION}",
            )
        )
    return checks


# --- plans ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanCheck:
    name: str
    sql: str
    params: dict[str, Any]
    expect: str  # regex a plan line must match


def key_queries(conn: Connection, deps: Deps) -> list[PlanCheck]:
    """The queries the worker and readers run most, with representative parameters."""
    models = [m for m in repository.list_models(conn) if m.is_indexed]
    model = models[0].name if models else deps.settings.embedding_model
    queries = [
        PlanCheck(
            "plan: batch article load",
            repository.LOAD_ARTICLES,
            {"m": model, "ids": [1, 2, 3]},
            r"Index (Only )?Scan using \S*pkey on articles_",
        ),
        PlanCheck(
            "plan: recent-articles browse",
            repository.BROWSE_RECENT_UNREAD,
            {"u": 1},
            r"Index (Only )?Scan using \S*user\S*read\S*published\S* on articles_",
        ),
    ]
    for info in models:
        queries.append(
            PlanCheck(
                f"plan: vector search {info.name}",
                search_sql(
                    info,
                    has_since=False,
                    kind=hnsw.built_kind(conn, info)
                    or hnsw.index_kind(info.dimensions, deps.settings.hnsw_index_type),
                ),
                {
                    "q": np.full(info.dimensions, info.dimensions**-0.5, np.float32),
                    "model": info.name,
                    "k": 5,
                    "fetch": 5,
                },
                rf"Index Scan using {re.escape(hnsw.index_name(info.name))} ",
            )
        )
    return queries


def check_plans(deps: Deps, conn: Connection) -> list[Check]:
    """EXPLAIN each key query and look for the index scan it should use.

    Plans are taken with sequential scans, bitmap scans and explicit sorts discouraged
    (enable_* = off, in a rolled-back transaction): the question is whether an index *can*
    serve the query (expression and predicate match, index present and valid), which must
    hold on a small or empty database too, where the planner would rightly prefer a
    sequential scan. A plan that still reads the table another way fails.
    """
    checks = [_check_upsert_plan(deps, conn)]
    for q in key_queries(conn, deps):
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(text(f"SET LOCAL {setting} = off"))
        plan = [r[0] for r in conn.execute(text("EXPLAIN " + q.sql), q.params)]
        conn.rollback()
        hit = next((line.strip() for line in plan if re.search(q.expect, line)), None)
        if hit is not None:
            checks.append(Check(q.name, "pass", hit.lstrip("-> ").split("  (cost")[0]))
        else:
            nodes = [line.strip().split("  (cost")[0] for line in plan if "Scan" in line][:4]
            checks.append(Check(q.name, "fail", f"no plan line matches /{q.expect}/", nodes))
    return checks


# INSERT … ON CONFLICT (article_id, model) is decided by its arbiter index, whatever scan
# the planner would pick for a lookup by article_id.
_UPSERT_ARBITER = r"Conflict Arbiter Indexes: article_embeddings_pkey$"


def _check_upsert_plan(deps: Deps, conn: Connection) -> Check:
    """EXPLAIN the pipeline's own vector upsert (never executed) and check its arbiter."""
    name = "plan: upsert conflict target"
    row = repository.EmbeddingRow(
        article_id=1,
        published_at=datetime.now(UTC),
        embedding=np.zeros(3, np.float32),
        content_hash=b"",
        token_count=0,
    )
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(
            "EXPLAIN " + repository.UPSERT_EMBEDDINGS,
            repository.upsert_params(deps.settings.embedding_model, [row]),
        )
        plan = [r[0] for r in cur.fetchall()]
    conn.rollback()
    hit = next((line.strip() for line in plan if re.search(_UPSERT_ARBITER, line.strip())), None)
    if hit is not None:
        return Check(name, "pass", hit)
    lines = [line.strip() for line in plan if "Conflict" in line]
    return Check(name, "fail", f"no plan line matches /{_UPSERT_ARBITER}/", lines)
