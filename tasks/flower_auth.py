"""Flower never listens beyond this host without a login.

`celery -A tasks.app flower` loads tasks.app, whose `import_modules` receiver calls
`refuse_open_flower()`: Flower sends that signal while it builds its application, after it
has read every option (FLOWER_* variables, a --conf file, the command line) and before it
binds a socket. So no Procfile line, compose command or variable can skip the check, and a
refused Flower exits with one line before anything listens. Loopback (127.0.0.0/8, ::1,
localhost) and a unix socket need no login: `make run` keeps its Flower at 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import click

HOW_TO = (
    "set FLOWER_BASIC_AUTH=user:password (or Flower's OAuth: FLOWER_AUTH, "
    "FLOWER_AUTH_PROVIDER and FLOWER_OAUTH2_*), or listen on 127.0.0.1 (FLOWER_ADDRESS)"
)


def is_loopback(address: str) -> bool:
    """True for localhost and loopback IPs; "" (Flower's default: every interface) is not."""
    host = address.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it may name any interface
        return False


def _is_credential(entry: str) -> bool:
    user, colon, password = entry.partition(":")
    return bool(user.strip() and colon and password)


def open_flower_problem(
    address: str,
    port: int,
    *,
    unix_socket: str = "",
    basic_auth: Sequence[str] | None = None,
    auth: str = "",
) -> str | None:
    """Why Flower must not start with these options, in one line; None when it may.

    Authenticated means what Flower itself checks (basic auth or an OAuth `auth` pattern);
    every basic-auth entry must be `user:password` with a password, since Flower would accept
    `admin:` with an empty one.
    """
    if unix_socket or is_loopback(address):
        return None
    where = f"{address}:{port}" if address else f"every interface, port {port}"
    entries = [entry for entry in basic_auth or () if entry]
    if any(not _is_credential(entry) for entry in entries):
        return (
            f"Flower refuses to listen on {where}: every FLOWER_BASIC_AUTH entry must be "
            "user:password with a non-empty password (several: comma-separated)"
        )
    if entries or auth:
        return None
    return f"Flower refuses to listen on {where} without a login: {HOW_TO}"


def running_flower() -> bool:
    """True inside `celery … flower` (the click command being run), not a worker or beat."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.command.name == "flower"


def refuse_open_flower() -> None:
    """In `celery flower`: exit with one line if it would listen openly (SystemExit)."""
    if not running_flower():
        return
    from tornado.options import options

    problem = open_flower_problem(
        options.address or "",
        options.port,
        unix_socket=options.unix_socket or "",
        basic_auth=options.basic_auth,
        auth=options.auth or "",
    )
    if problem:
        raise SystemExit(f"embedder: {problem}")
