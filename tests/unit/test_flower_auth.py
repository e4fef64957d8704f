"""When Flower may listen without a login (tasks/flower_auth.py); the real processes are in
tests/integration/test_flower_auth.py."""

from __future__ import annotations

import pytest

from tasks.flower_auth import is_loopback, open_flower_problem


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("", False),  # Flower's default: every interface
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("flower.example.com", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_loopback_or_a_unix_socket_needs_no_login() -> None:
    assert open_flower_problem("127.0.0.1", 5555) is None
    assert open_flower_problem("::1", 5555) is None
    assert open_flower_problem("0.0.0.0", 5555, unix_socket="/run/flower.sock") is None


def test_any_other_address_needs_basic_auth_or_oauth() -> None:
    problem = open_flower_problem("0.0.0.0", 5555)
    assert problem == (
        "Flower refuses to listen on 0.0.0.0:5555 without a login: set "
        "FLOWER_BASIC_AUTH=user:password (or Flower's OAuth: FLOWER_AUTH, FLOWER_AUTH_PROVIDER "
        "and FLOWER_OAUTH2_*), or listen on 127.0.0.1 (FLOWER_ADDRESS)"
    )
    assert "every interface, port 5555" in (open_flower_problem("", 5555) or "")
    assert open_flower_problem("", 5555, basic_auth=[""]) is not None  # FLOWER_BASIC_AUTH=
    assert open_flower_problem("0.0.0.0", 5555, basic_auth=["admin:long-secret"]) is None
    assert open_flower_problem("0.0.0.0", 5555, basic_auth=["a:x", "b:y"]) is None
    assert open_flower_problem("0.0.0.0", 5555, auth=r".*@example\.com") is None


@pytest.mark.parametrize("entry", ["admin", "admin:", ":secret"])
def test_a_basic_auth_entry_without_user_or_password_is_refused(entry: str) -> None:
    problem = open_flower_problem("0.0.0.0", 5555, basic_auth=["ok:pw", entry])
    assert problem is not None and "must be user:password" in problem
    assert "\n" not in problem
