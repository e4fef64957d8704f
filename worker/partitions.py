"""Monthly partitions of `articles`: names, bounds, creation, and rescue of DEFAULT rows.

Used by the maintenance beat task and `embedder maintain partitions` (migration 0002 has its
own frozen copy of the initial layout).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, text

logger = logging.getLogger(__name__)

DEFAULT_PARTITION = "articles_default"
_MONTH_NAME = re.compile(r"^articles_(\d{4})_(\d{2})$")


@dataclass(frozen=True)
class MonthPartition:
    name: str
    start: date
    end: date

    @property
    def start_literal(self) -> str:
        return f"{self.start.isoformat()} 00:00:00+00"

    @property
    def end_literal(self) -> str:
        return f"{self.end.isoformat()} 00:00:00+00"


def month_partition(year: int, month: int) -> MonthPartition:
    """The partition holding [first of month, first of next month) in UTC."""
    start = date(year, month, 1)
    end = date(year + month // 12, month % 12 + 1, 1)
    return MonthPartition(name=f"articles_{year:04d}_{month:02d}", start=start, end=end)


def upcoming_months(today: date, months_ahead: int) -> list[MonthPartition]:
    """The current month and the next `months_ahead` months."""
    result = []
    year, month = today.year, today.month
    for _ in range(months_ahead + 1):
        result.append(month_partition(year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return result


def existing_partitions(conn: Connection) -> set[str]:
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = 'articles' AND p.relnamespace = current_schema()::regnamespace"
        )
    )
    return {r[0] for r in rows}


def ensure_default_partition(conn: Connection) -> None:
    conn.execute(
        text(f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF articles DEFAULT")
    )


def create_month_partition(conn: Connection, part: MonthPartition) -> int:
    """Create one month's partition in the caller's transaction; return rows moved from DEFAULT.

    Locks, in the order inserts take them (parent, then partition), so none can deadlock:
    `articles` in SHARE ROW EXCLUSIVE mode, which makes writes to articles wait (not fail)
    for the few statements below while reads, and the FK checks of embedding writes, go on;
    an insert must wait *before* it routes its row, or it would route it to DEFAULT and
    then fail DEFAULT's narrowed constraint. Then DEFAULT (ATTACH scans it). The partition
    is created standalone and ATTACHed rather than created with `PARTITION OF`, which would
    take ACCESS EXCLUSIVE on `articles` and block every read. Rows of the month already in
    DEFAULT are moved: they and their embeddings are stashed, deleted (the FK cascades) and
    re-inserted once the partition is attached. Other sessions see either the old or the
    new layout, never a gap.
    """
    conn.execute(text("LOCK TABLE articles IN SHARE ROW EXCLUSIVE MODE"))
    conn.execute(text(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE"))
    bounds = {"lo": part.start_literal, "hi": part.end_literal}
    in_range = (
        "published_at >= CAST(:lo AS timestamptz) AND published_at < CAST(:hi AS timestamptz)"
    )
    moved = conn.execute(
        text(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE {in_range}"), bounds
    ).scalar_one()
    if moved:
        conn.execute(
            text(
                "CREATE TEMP TABLE _moved_articles ON COMMIT DROP AS "
                f"SELECT * FROM {DEFAULT_PARTITION} WHERE {in_range}"
            ),
            bounds,
        )
        conn.execute(
            text(
                "CREATE TEMP TABLE _moved_embeddings ON COMMIT DROP AS "
                "SELECT e.* FROM article_embeddings e JOIN _moved_articles m "
                "ON e.article_id = m.id AND e.published_at = m.published_at"
            )
        )
        conn.execute(text(f"DELETE FROM {DEFAULT_PARTITION} WHERE {in_range}"), bounds)
    lo, hi = f"'{part.start_literal}'", f"'{part.end_literal}'"
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {part.name} "
            "(LIKE articles INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"
        )
    )
    # A matching CHECK lets ATTACH skip scanning the new table; dropped once attached.
    conn.execute(
        text(
            f"ALTER TABLE {part.name} ADD CONSTRAINT {part.name}_bounds "
            f"CHECK (published_at >= {lo} AND published_at < {hi})"
        )
    )
    conn.execute(
        text(f"ALTER TABLE articles ATTACH PARTITION {part.name} FOR VALUES FROM ({lo}) TO ({hi})")
    )
    conn.execute(text(f"ALTER TABLE {part.name} DROP CONSTRAINT {part.name}_bounds"))
    if moved:
        conn.execute(
            text("INSERT INTO articles OVERRIDING SYSTEM VALUE SELECT * FROM _moved_articles")
        )
        conn.execute(text("INSERT INTO article_embeddings SELECT * FROM _moved_embeddings"))
        logger.warning(
            "moved %s rows from %s into new partition %s", moved, DEFAULT_PARTITION, part.name
        )
    return int(moved)


def ensure_partitions(conn: Connection, months_ahead: int, today: date | None = None) -> list[str]:
    """Create missing partitions for this month and the next `months_ahead`; return their names."""
    today = today or datetime.now(UTC).date()
    ensure_default_partition(conn)
    present = existing_partitions(conn)
    created = []
    for part in upcoming_months(today, months_ahead):
        if part.name not in present:
            create_month_partition(conn, part)
            created.append(part.name)
    return created


def add_months(day: date, months: int) -> tuple[int, int]:
    """(year, month) of the month `months` after (or before, if negative) `day`'s month."""
    index = day.year * 12 + day.month - 1 + months
    return index // 12, index % 12 + 1


def partitions_older_than(present: set[str], keep_months: int, today: date) -> list[str]:
    """Monthly partitions wholly before the first day of the month `keep_months` ago."""
    year, month = add_months(today, -keep_months)
    cutoff = date(year, month, 1)
    old = []
    for name in present:
        match = _MONTH_NAME.match(name)
        if match and month_partition(int(match[1]), int(match[2])).end <= cutoff:
            old.append(name)
    return sorted(old)


def drop_old_partitions(conn: Connection, keep_months: int, today: date | None = None) -> list[str]:
    """Detach and drop monthly partitions older than `keep_months` months, with their vectors.

    Destructive by design and off unless PARTITION_RETENTION_MONTHS > 0; every dropped
    partition is logged at WARNING. The partition's embeddings and job rows go first (the
    FK from article_embeddings would refuse the DETACH), then DETACH (a plain one: DETACH
    CONCURRENTLY is not allowed while a DEFAULT partition exists) and DROP, all in the
    caller's transaction.
    """
    if keep_months <= 0:
        return []
    today = today or datetime.now(UTC).date()
    dropped = []
    for name in partitions_older_than(existing_partitions(conn), keep_months, today):
        match = _MONTH_NAME.match(name)
        assert match is not None
        part = month_partition(int(match[1]), int(match[2]))
        bounds = {"lo": part.start_literal, "hi": part.end_literal}
        vectors = conn.execute(
            text(
                "DELETE FROM article_embeddings WHERE published_at >= CAST(:lo AS timestamptz) "
                "AND published_at < CAST(:hi AS timestamptz)"
            ),
            bounds,
        ).rowcount
        conn.execute(
            text(f"DELETE FROM embedding_jobs WHERE article_id IN (SELECT id FROM {name})")
        )
        rows = conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
        conn.execute(text(f"ALTER TABLE articles DETACH PARTITION {name}"))
        conn.execute(text(f"DROP TABLE {name}"))
        logger.warning(
            "retention: dropped partition %s (%s articles, %s vectors) older than %s months",
            name,
            rows,
            vectors,
            keep_months,
        )
        dropped.append(name)
    return dropped
