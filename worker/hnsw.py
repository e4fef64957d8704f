"""The HNSW vocabulary: what a model's index is called, what it casts to, and what is built.

Search, status, diagnostics and the maintenance jobs all speak it; it knows nothing of
them. The rebuild jobs themselves live in worker.maintenance.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sqlalchemy import Connection, text

from worker.repository import ModelInfo

# pgvector's HNSW indexes `vector` up to 2000 dimensions and `halfvec` up to 4000.
HNSW_VECTOR_MAX_DIMS = 2000
HNSW_HALFVEC_MAX_DIMS = 4000

# The oldest pgvector whose VACUUM of an HNSW index is safe: releases before 0.8.4 could
# corrupt the index while vacuuming it (pgvector's CHANGELOG, 0.8.4:
# https://github.com/pgvector/pgvector/blob/master/CHANGELOG.md#084). Every article update
# and delete here ends in a vacuum of article_embeddings, so older releases are flagged.
PGVECTOR_MIN_SAFE = (0, 8, 4)


def index_name(model: str) -> str:
    """`article_embeddings_<slug>_hnsw_cosine_idx`, within PostgreSQL's 63-byte limit."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
    digest = hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"article_embeddings_{slug[:18]}_{digest}_hnsw_cosine_idx"  # ≤ 63 bytes


def replacement_name(model: str) -> str:
    """The temporary name of an index being built to replace `index_name(model)`."""
    return f"article_embeddings_{hashlib.sha1(model.encode()).hexdigest()[:8]}_hnsw_replacement"


def index_kind(dimensions: int, preferred: str = "halfvec") -> str:
    """'vector' or 'halfvec': the type a model's vectors are cast to in a new HNSW index.

    `preferred` is HNSW_INDEX_TYPE; above 2000 dimensions only halfvec can be indexed.
    """
    if dimensions > HNSW_HALFVEC_MAX_DIMS:
        raise ValueError(
            f"{dimensions} dimensions cannot have an HNSW index (pgvector: at most "
            f"{HNSW_HALFVEC_MAX_DIMS} as halfvec); request fewer dimensions from the model"
        )
    return "halfvec" if dimensions > HNSW_VECTOR_MAX_DIMS else preferred


def index_cast(info: ModelInfo, kind: str) -> str:
    """The type the model's index casts to, e.g. 'halfvec(1536)'."""
    if kind not in ("vector", "halfvec"):
        raise ValueError(f"unknown index kind {kind!r}")
    return f"{kind}({info.dimensions})"


def index_expression(info: ModelInfo, kind: str) -> tuple[str, str]:
    """(indexed expression, operator class); search must use the same expression."""
    return f"(embedding::{index_cast(info, kind)})", f"{kind}_cosine_ops"


_KIND_IN_DEFINITION = re.compile(r"::(halfvec|vector)\(")


def kind_of_definition(definition: str | None) -> str | None:
    """The kind an index definition (pg_get_indexdef) casts to, or None."""
    found = _KIND_IN_DEFINITION.search(definition or "")
    return found.group(1) if found else None


# The definition of the model's valid index, or of its finished replacement. A scalar
# subquery, so search can ask it in the same round trip as its session settings.
BUILT_DEFINITION_SQL = """
    SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = 'article_embeddings'::regclass AND i.indisvalid
      AND c.relname IN (:index_name, :replacement_name)
    ORDER BY c.relname = :index_name DESC
    LIMIT 1
"""


def built_definition_params(model: str) -> dict[str, str]:
    return {"index_name": index_name(model), "replacement_name": replacement_name(model)}


def built_kind(conn: Connection, info: ModelInfo) -> str | None:
    """The kind of the model's valid HNSW index (or of its finished replacement), or None."""
    definition = conn.execute(
        text(BUILT_DEFINITION_SQL), built_definition_params(info.name)
    ).scalar_one_or_none()
    return kind_of_definition(definition)


def index_state(conn: Connection, name: str) -> str:
    """'missing', 'invalid' (left by a failed concurrent build) or 'valid'."""
    row = conn.execute(
        text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :n AND c.relnamespace = current_schema()::regnamespace"
        ),
        {"n": name},
    ).one_or_none()
    if row is None:
        return "missing"
    return "valid" if row[0] else "invalid"


def index_size(conn: Connection, name: str) -> int | None:
    """The index's size in bytes, or None when it does not exist."""
    size = conn.execute(text("SELECT pg_relation_size(to_regclass(:n))"), {"n": name}).scalar()
    return None if size is None else int(size)


@dataclass(frozen=True)
class ServerVersions:
    """What the database runs: PostgreSQL's server_version and the installed pgvector."""

    postgres: str  # e.g. "18.6"
    pgvector: str | None  # extversion of the `vector` extension; None when not installed

    @property
    def pgvector_problem(self) -> str | None:
        """Why this pgvector is not safe for the HNSW indexes, or None when it is."""
        minimum = ".".join(map(str, PGVECTOR_MIN_SAFE))
        if self.pgvector is None:
            return "the pgvector extension (vector) is not installed: run `embedder migrate`"
        if version_tuple(self.pgvector) < PGVECTOR_MIN_SAFE:
            return (
                f"pgvector {self.pgvector} is older than {minimum}: before it, VACUUM could "
                "corrupt HNSW indexes. Install pgvector >= "
                f"{minimum} on the server, run ALTER EXTENSION vector UPDATE, then "
                "`embedder maintain hnsw` (rebuilds every index)"
            )
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """A version's numbers, e.g. (0, 8, 4) for "0.8.4"; a suffix ("-dev") is ignored."""
    numbers = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def server_versions(conn: Connection) -> ServerVersions:
    """The server's PostgreSQL version and the installed pgvector extension's version.

    The extension's version in the catalog (extversion) is what ALTER EXTENSION set: after
    a package upgrade without ALTER EXTENSION vector UPDATE it still names the old release.
    """
    row = conn.execute(
        text(
            "SELECT current_setting('server_version'), "
            "(SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        )
    ).one()
    return ServerVersions(postgres=str(row[0]), pgvector=row[1])
