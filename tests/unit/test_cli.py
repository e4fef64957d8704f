"""The `embedder` command line as a user meets it: help that describes every option, usage
errors that exit 2 with one line, and unreachable services named with what to check."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from devstack.services import free_port
from worker import cli

PASSWORD = "pw-s3cret-42"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`embedder ARGS` in a child process, as a user runs it (a clean environment)."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "EMBEDDING_PROVIDER": "local", **env},
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_of_every_subcommand_is_described(name: str) -> None:
    undescribed = [
        action.dest
        for action in subcommands()[name]._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert undescribed == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search"], "embedder search: error: give TEXT to search for, or --like ARTICLE_ID"),
        (["search", "x", "--like", "3"], "give TEXT or --like ARTICLE_ID, not both"),
        (["search", "x", "--since", "yesterday"], "argument --since: expected an ISO date"),
        (["enqueue"], "embedder enqueue: error: no article ids given"),
        (["models", "add", "m"], "needs NAME and --dimensions N"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = run(*args, DATABASE_URL=f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_port_in_database_url_is_a_configuration_error() -> None:
    done = run("status", DATABASE_URL="postgres://u@h:notaport/db")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "embedder: invalid configuration: DATABASE_URL has an invalid port "
        "(expected a number from 1 to 65535)"
    )


def test_an_unreachable_database_is_named_with_what_to_check_and_no_password() -> None:
    port = free_port()
    done = run("status", DATABASE_URL=f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"embedder: cannot reach PostgreSQL at postgresql://u:***@127.0.0.1:{port}/db "
        "(DATABASE_URL): Connection refused. Is the database running"
    )
    assert PASSWORD not in done.stderr + done.stdout


def test_an_unreachable_broker_is_named_with_what_to_check() -> None:
    port = free_port()
    done = run("enqueue", "1", REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"embedder: cannot reach Redis at redis://:***@127.0.0.1:{port}/0")
    assert "(REDIS_URL)" in line and PASSWORD not in done.stderr


def test_the_local_stack_commands_point_at_the_checkout() -> None:
    done = run("demo")
    assert done.returncode == 2
    assert "make run` or `make demo`" in done.stderr
