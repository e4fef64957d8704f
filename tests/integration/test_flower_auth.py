"""Flower started exactly as the Procfile and compose.yaml start it: it refuses to listen
beyond loopback without a login, and needs none on 127.0.0.1 (tasks/flower_auth.py)."""

from __future__ import annotations

import base64
import os
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from devstack.services import free_port, stop_process
from tests.conftest import REPO
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

START_TIMEOUT_S = 40.0
CREDENTIALS = ("flower-admin", "flower-pw-7q")


def procfile_command() -> str:
    for line in (REPO / "Procfile").read_text(encoding="utf-8").splitlines():
        name, _, command = line.partition(":")
        if name == "flower":
            return command.strip()
    raise AssertionError("no flower line in the Procfile")


def compose_command() -> str:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    return shlex.join(compose["services"]["flower"]["command"])


StartFlower = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_flower(redis_url: str, tmp_path: Path) -> Iterator[StartFlower]:
    """Run a command line through the shell, as honcho runs a Procfile line; stop it after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: str, **env: str) -> subprocess.Popen[bytes]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env['PATH']}"
        full_env.update(REDIS_URL=redis_url, **env)
        with (tmp_path / f"flower-{len(started)}.log").open("wb") as log:
            process = subprocess.Popen(
                ["sh", "-c", f"exec {command}"],
                cwd=REPO,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        stop_process(process)


def output(tmp_path: Path, index: int) -> str:
    """What the `index`-th Flower of the test printed (stdout and stderr)."""
    return (tmp_path / f"flower-{index}.log").read_text(errors="replace")


def status(url: str, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of GET `url`; 0 while nothing answers."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_answering(process: subprocess.Popen[bytes], port: int) -> None:
    def up() -> bool:
        assert process.poll() is None, f"Flower exited with {process.returncode}"
        return status(f"http://127.0.0.1:{port}/healthcheck") == 200

    wait_until(up, START_TIMEOUT_S, what="Flower answering /healthcheck")


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (procfile_command(), {"FLOWER_ADDRESS": "0.0.0.0"}),
        (procfile_command(), {"FLOWER_ADDRESS": "0.0.0.0", "FLOWER_BASIC_AUTH": ""}),
        (compose_command(), {}),  # compose itself insists on FLOWER_BASIC_AUTH; Flower too
    ],
    ids=["procfile", "procfile-empty-auth", "compose"],
)
def test_no_login_beyond_loopback_exits_with_one_line_before_listening(
    start_flower: StartFlower, tmp_path: Path, command: str, env: dict[str, str]
) -> None:
    port = free_port()

    process = start_flower(command, FLOWER_PORT=str(port), **env)

    code = process.wait(START_TIMEOUT_S)
    lines = [line for line in output(tmp_path, 0).splitlines() if line.strip()]
    assert code != 0
    assert lines[-1].startswith(
        f"embedder: Flower refuses to listen on 0.0.0.0:{port} without a login: "
        "set FLOWER_BASIC_AUTH=user:password"
    ), lines
    assert "Traceback" not in "\n".join(lines)
    assert not listening(port)


def test_with_basic_auth_it_listens_and_asks_for_the_login(
    start_flower: StartFlower,
) -> None:
    port = free_port()

    process = start_flower(
        procfile_command(),
        FLOWER_PORT=str(port),
        FLOWER_ADDRESS="0.0.0.0",
        FLOWER_BASIC_AUTH=":".join(CREDENTIALS),
    )

    wait_answering(process, port)
    assert status(f"http://127.0.0.1:{port}/") == 401
    assert status(f"http://127.0.0.1:{port}/", ("flower-admin", "wrong")) == 401
    assert status(f"http://127.0.0.1:{port}/", CREDENTIALS) == 200


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost"])
def test_on_loopback_it_starts_without_a_login(start_flower: StartFlower, address: str) -> None:
    port = free_port()

    process = start_flower(procfile_command(), FLOWER_PORT=str(port), FLOWER_ADDRESS=address)

    wait_answering(process, port)
    assert status(f"http://127.0.0.1:{port}/") == 200
