"""Least privilege: the `embedder_worker` and `embedder_maintenance` group roles.

embedder_worker (NOLOGIN): USAGE on the schema; SELECT on articles, embedding_models,
hnsw_index_builds and alembic_version (health reads the head); SELECT, INSERT, UPDATE,
DELETE on article_embeddings and embedding_jobs. Plus UPDATE on the single column
articles.updated_at, only because PostgreSQL requires UPDATE on at least one column for
the `SELECT … FOR KEY SHARE` the write transaction takes on its articles
(repository.lock_existing_articles); it can change no other article column. No DDL: it
owns nothing and the schema grants it no CREATE.

embedder_maintenance (NOLOGIN): a member of embedder_worker, CREATE on the schema, and
the OWNER of the tables (every partition of articles included). PostgreSQL lets only a table's owner create a
partition of it, CREATE INDEX on it, REINDEX it, or detach and drop partitions; a grant
cannot confer that. Ownership by this dedicated NOLOGIN role was chosen over granting
membership in whatever role ran the migrations: that role is often a superuser or the
database owner, and membership would hand beat everything it owns.

Login roles are made members: `CREATE ROLE w LOGIN IN ROLE embedder_worker`, and for
maintenance also `ALTER ROLE m SET role = 'embedder_maintenance'` so that partitions and
indexes it creates are owned by the group role, not the login (docs/operations.md).

Roles are cluster-wide: created only if missing (the migrating role needs CREATEROLE, or a
DBA creates them first), and on downgrade this database's grants are revoked and
ownership returned to the migrating role; the roles are dropped only when no other
database uses them and no login role is a member.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WORKER = "embedder_worker"
MAINTENANCE = "embedder_maintenance"

# Tables created by earlier revisions (articles' partitions are found at run time).
READ = ("articles", "embedding_models", "hnsw_index_builds", "alembic_version")
WRITE = ("article_embeddings", "embedding_jobs")
OWNED = (*READ, *WRITE)

# Every table the maintenance role owns: ours, plus each partition of articles.
_OWNED_RELATIONS = f"""
    SELECT c.oid::regclass AS rel FROM pg_class c
    WHERE c.relnamespace = current_schema()::regnamespace
      AND c.relkind IN ('r', 'p')
      AND (c.relname IN ({", ".join(f"'{t}'" for t in OWNED)})
           OR c.oid IN (SELECT inhrelid FROM pg_inherits
                        WHERE inhparent = 'articles'::regclass))
"""


def upgrade() -> None:
    op.execute(
        f"""
        DO $$
        DECLARE
            r text;
            can_create boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles
                                   WHERE rolname = current_user);
        BEGIN
            FOREACH r IN ARRAY ARRAY['{WORKER}', '{MAINTENANCE}'] LOOP
                CONTINUE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = r);
                IF NOT can_create THEN
                    RAISE EXCEPTION 'role % does not exist and % may not create it', r, current_user
                        USING HINT = 'create it first: CREATE ROLE ' || r || ' NOLOGIN';
                END IF;
                BEGIN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', r);
                EXCEPTION WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- another database's migration created it just now
                END;
            END LOOP;
            -- ALTER ... OWNER TO needs membership in the new owner unless superuser.
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               AND NOT pg_has_role(current_user, '{MAINTENANCE}', 'MEMBER') THEN
                EXECUTE format('GRANT {MAINTENANCE} TO %I', current_user);
            END IF;
        END
        $$
        """
    )
    op.execute(f"GRANT {WORKER} TO {MAINTENANCE}")
    # New partitions are new tables: besides owning `articles`, beat needs CREATE here.
    op.execute(
        f"DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %1$I TO {WORKER}; "
        f"GRANT USAGE, CREATE ON SCHEMA %1$I TO {MAINTENANCE}', current_schema()); END $$"
    )
    op.execute(f"GRANT SELECT ON {', '.join(READ)} TO {WORKER}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(WRITE)} TO {WORKER}")
    # Row locks (FOR KEY SHARE) need UPDATE on some column: the least harmful one.
    op.execute(f"GRANT UPDATE (updated_at) ON articles TO {WORKER}")
    op.execute(
        f"""
        DO $$
        DECLARE rel regclass;
        BEGIN
            FOR rel IN {_OWNED_RELATIONS} LOOP
                EXECUTE format('ALTER TABLE %s OWNER TO {MAINTENANCE}', rel);
            END LOOP;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DO $$
        DECLARE rel regclass;
        BEGIN
            FOR rel IN {_OWNED_RELATIONS} LOOP
                EXECUTE format('ALTER TABLE %s OWNER TO %I', rel, current_user);
            END LOOP;
        END
        $$
        """
    )
    op.execute(f"REVOKE ALL ON {', '.join(OWNED)} FROM {WORKER}, {MAINTENANCE}")
    op.execute(
        f"DO $$ BEGIN EXECUTE format('REVOKE ALL ON SCHEMA %I FROM {WORKER}, {MAINTENANCE}', "
        "current_schema()); END $$"
    )
    # Drop a role only when nothing in any database depends on it (pg_shdepend covers
    # grants and ownership cluster-wide) and no login role was made a member of it.
    op.execute(
        f"""
        DO $$
        DECLARE
            r text;
            oid_ oid;
        BEGIN
            FOREACH r IN ARRAY ARRAY['{MAINTENANCE}', '{WORKER}'] LOOP
                SELECT oid INTO oid_ FROM pg_roles WHERE rolname = r;
                CONTINUE WHEN oid_ IS NULL;
                IF EXISTS (SELECT FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass
                           AND refobjid = oid_)
                   OR EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
                              WHERE m.roleid = oid_ AND u.rolname <> '{MAINTENANCE}') THEN
                    RAISE NOTICE 'keeping role %: still used elsewhere in the cluster', r;
                    CONTINUE;
                END IF;
                IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles
                        WHERE rolname = current_user) THEN
                    CONTINUE;
                END IF;
                EXECUTE format('DROP ROLE %I', r);
            END LOOP;
        END
        $$
        """
    )
