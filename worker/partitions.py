"""Monthly partitions of `articles`: names, bounds, creation, and rescue of DEFAULT rows.

Shared by the first migration (current month + N ahead) and the maintenance beat task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, text

logger = logging.getLogger(__name__)

DEFAULT_PARTITION = "articles_default"


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

    Rows of that month already in DEFAULT would make a plain CREATE … PARTITION OF fail, so
    they are moved: DEFAULT is locked (inserts for it wait, never fail), the rows and their
    embeddings are stashed, deleted (the FK cascades), and re-inserted once the partition
    exists. Other sessions see either the old or the new layout, never a gap.
    """
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
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {part.name} PARTITION OF articles "
            f"FOR VALUES FROM ('{part.start_literal}') TO ('{part.end_literal}')"
        )
    )
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
