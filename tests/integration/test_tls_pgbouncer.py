"""TLS to the database and transaction pooling, through Debian's PgBouncer in front of the
embedded server (which has no OpenSSL): sslmode=require and verify-full, certificate
rotation during a run, a certificate from the wrong CA, and DB_PREPARE_THRESHOLD=off."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from sqlalchemy import event

from devstack.services import LocalPostgres
from tests.conftest import MODEL, fetch
from tests.pgbouncer import CertificateAuthority, PgBouncer, served_certificate, wait_until
from worker import pipeline
from worker.deps import Deps

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Behind PgBouncer: no server-side prepared statements (a transaction pooler cannot track
# them) and no `options` startup parameter (PgBouncer refuses it); see docs/operations.md.
BOUNCER_SETTINGS: dict[str, Any] = {"db_prepare_threshold": None, "db_statement_timeout_ms": 0}


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("embedder test CA")


@pytest.fixture
def ca_file(ca: CertificateAuthority, tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    path.write_bytes(ca.cert_pem)
    return path


@pytest.fixture
def make_bouncer(pg: LocalPostgres) -> Iterator[Callable[..., PgBouncer]]:
    started: list[PgBouncer] = []

    def factory(**kwargs: Any) -> PgBouncer:
        bouncer = PgBouncer(server_host=pg.host, server_port=pg.port, **kwargs)
        started.append(bouncer)
        return bouncer.start()

    yield factory
    for bouncer in started:
        bouncer.stop()


def _dbname(database_url: str) -> str:
    return urlsplit(database_url).path.lstrip("/")


def _insert_articles(database_url: str, count: int) -> list[int]:
    """Insert `count` articles in one statement (faster than make_article per row)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "INSERT INTO articles (feed_id, user_id, title, content, published_at) "
            "SELECT 1, 1, 'Article ' || g, 'Body of article ' || g || ' about TLS.', now() "
            "FROM generate_series(1, %s) g RETURNING id",
            (count,),
        ).fetchall()
    return sorted(r[0] for r in rows)


def _embedded_ids(deps: Deps) -> list[int]:
    rows = fetch(deps, "SELECT article_id FROM article_embeddings WHERE model = :m", m=MODEL)
    return sorted(r[0] for r in rows)


def _tls_in_use(deps: Deps) -> bool:
    with deps.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, psycopg.Connection)
        return bool(dbapi.pgconn.ssl_in_use)


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_pipeline_runs_over_tls_through_pgbouncer(
    sslmode, make_bouncer, ca, ca_file, database_url, make_deps, make_article, fake_openai
):
    bouncer = make_bouncer(tls=ca.issue())
    params = {"sslmode": sslmode}
    if sslmode == "verify-full":
        params["sslrootcert"] = str(ca_file)
    deps = make_deps(database_url=bouncer.url(_dbname(database_url), **params), **BOUNCER_SETTINGS)
    ids = [make_article() for _ in range(20)]

    pipeline.intake(deps, ids)
    result = pipeline.drain(deps, budget_s=30)

    assert (result.claimed, result.embedded, result.failed) == (20, 20, 0)
    assert _embedded_ids(deps) == sorted(ids)
    assert _tls_in_use(deps)
    # PgBouncer (client_tls_sslmode=require) turns away a client that will not speak TLS.
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(bouncer.url(_dbname(database_url), sslmode="disable"), connect_timeout=5)


def test_certificate_rotation_during_a_run_fails_nothing(
    make_bouncer, ca, ca_file, database_url, make_deps, make_article, fake_openai
):
    first = ca.issue()
    bouncer = make_bouncer(tls=first)
    url = bouncer.url(_dbname(database_url), sslmode="verify-full", sslrootcert=str(ca_file))
    deps = make_deps(database_url=url, **BOUNCER_SETTINGS)
    connects: list[str] = []
    event.listen(deps.engine, "connect", lambda *_: connects.append("connect"))
    ids = _insert_articles(database_url, 160)  # 10 batches of 16
    pipeline.intake(deps, ids)
    assert served_certificate(bouncer.host, bouncer.port).serial_number == first.serial
    fake_openai.latency_s = 0.1
    results: list[pipeline.DrainResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(pipeline.drain(deps, budget_s=30))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=run, name="drain-during-rotation")
    worker.start()
    wait_until(lambda: len(fake_openai.requests) >= 3)
    connects_before = len(connects)
    second = ca.issue()
    bouncer.install_certificate(second)  # the new files, as a cert-manager Secret update
    bouncer.reload()
    served = served_certificate(bouncer.host, bouncer.port).serial_number
    requests_at_rotation = len(fake_openai.requests)
    # A brand-new verified connection gets (and accepts) the new certificate.
    with psycopg.connect(url, connect_timeout=5) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)
        assert fresh.pgconn.ssl_in_use
    worker.join(30)

    print(f"served certificate serial before rotation {first.serial:x}, after {served:x}")
    assert served == second.serial != first.serial
    assert not worker.is_alive()
    assert errors == []
    assert [(r.claimed, r.embedded, r.failed, r.released) for r in results] == [(160, 160, 0, 0)]
    assert requests_at_rotation < len(fake_openai.requests) == 10  # the run spanned the reload
    # The pooled connection opened before the rotation carried on: no reconnects after it.
    assert connects_before >= 1
    assert len(connects) == connects_before
    assert _embedded_ids(deps) == sorted(ids)
    assert fetch(deps, "SELECT count(*) FROM embedding_jobs")[0][0] == 0

    # And a new pool (a worker started after the rotation) runs the pipeline over it.
    later = make_article()
    fresh_deps = make_deps(database_url=url, **BOUNCER_SETTINGS)
    pipeline.intake(fresh_deps, [later])
    assert pipeline.drain(fresh_deps, budget_s=10).embedded == 1


def test_certificate_from_another_ca_is_refused_with_a_clear_error(
    make_bouncer, ca_file, database_url, redis_url
):
    rogue = CertificateAuthority("someone else's CA")
    bouncer = make_bouncer(tls=rogue.issue())
    db = _dbname(database_url)
    env = {
        **os.environ,
        "DATABASE_URL": bouncer.url(db, sslmode="verify-full", sslrootcert=str(ca_file)),
        "REDIS_URL": redis_url,
        "DB_PREPARE_THRESHOLD": "off",
        "DB_STATEMENT_TIMEOUT_MS": "0",
    }
    embedder = str(Path(sys.executable).with_name("embedder"))

    done = subprocess.run([embedder, "status"], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("embedder: cannot reach PostgreSQL at "), line
    assert "(DATABASE_URL): certificate verify failed" in line, line
    assert line.endswith(
        "Check the server's certificate and DATABASE_URL's sslmode and sslrootcert."
    )
    # sslmode=require encrypts but does not authenticate: the same server is accepted.
    with psycopg.connect(bouncer.url(db, sslmode="require"), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_transaction_pooling_without_prepared_statements_over_many_batches(
    make_bouncer, ca, database_url, make_deps, fake_openai
):
    bouncer = make_bouncer(tls=ca.issue(), pool_mode="transaction", default_pool_size=2)
    db = _dbname(database_url)
    deps = make_deps(
        database_url=bouncer.url(db, sslmode="require"),
        db_pool_size=4,
        embed_batch_max=8,
        **BOUNCER_SETTINGS,
    )
    ids = _insert_articles(database_url, 160)
    pipeline.intake(deps, ids)
    results: list[pipeline.DrainResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(pipeline.drain(deps, budget_s=30))
        except BaseException as exc:
            errors.append(exc)

    # Four drains at once: four client connections multiplexed onto two server connections,
    # so consecutive statements of one client land on different server sessions.
    threads = [threading.Thread(target=run, name=f"drain-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(45)

    assert errors == []
    assert sum(r.embedded for r in results) == 160
    assert sum(r.failed + r.released for r in results) == 0
    assert sum(r.batches for r in results) >= 20
    assert _embedded_ids(deps) == sorted(ids)
    clients = [c for c in bouncer.admin("SHOW CLIENTS") if c["database"] == db]
    servers = [s for s in bouncer.admin("SHOW SERVERS") if s["database"] == db]
    assert len(clients) >= 3  # several pooled client connections …
    assert 1 <= len(servers) <= 2  # … on at most default_pool_size server connections
    assert "prepared statement" not in bouncer.log()
