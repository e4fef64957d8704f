"""compose.yaml's health checks: a restart only where a restart helps (docs/operations.md,
"Health checks"). Read from the file: there is no Docker engine to run it."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import yaml
from celery.utils.nodenames import default_nodename, host_format

from tests.conftest import REPO
from worker.config import ConfigError
from worker.health import expand_node_name

CONTAINER_HOST = "3f2a9c1b7d4e"  # what a container's hostname looks like


def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
    return dict(compose["services"])


def app_services() -> dict[str, dict[str, Any]]:
    """The long-running services built from ./Dockerfile (not the one-shot `migrate`)."""
    return {
        name: service
        for name, service in services().items()
        if "build" in service and service.get("restart") != "no"
    }


def command_words(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(command)
    if command[:2] == ["sh", "-c"]:
        return shlex.split(command[2])
    return list(command)


def worker_node_name(service: dict[str, Any]) -> str | None:
    """The `-n` of a `celery … worker` command, or None for anything else."""
    words = command_words(service)
    if "celery" not in words or "worker" not in words:
        return None
    return words[words.index("-n") + 1]


def test_each_worker_container_checks_liveness_of_its_own_worker_only() -> None:
    checked = {}
    for name, service in app_services().items():
        node = worker_node_name(service)
        if node is None:
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test == ["CMD", "embedder", "health", "--liveness", "--worker", node], name
        checked[name] = node

    assert checked == {"worker": "embeddings@%h", "maintenance": "maintenance@%h"}


def test_no_app_health_check_includes_the_backlog() -> None:
    """The full `embedder health` (backlog age) is for alerting: never a restart trigger."""
    for name, service in app_services().items():
        test = service.get("healthcheck", {}).get("test")
        if test is None:
            assert name == "beat"  # answers no ping; `restart` covers an exit
            continue
        words = command_words({"command": test[1:]})
        if "embedder" in words and "health" in words:
            assert "--liveness" in words, name
        else:
            # Flower and the exporter: their own HTTP endpoint answers (no login, no query
            # that fails with the database).
            assert test[0] == "CMD" and "urlopen('http://127.0.0.1:" in test[-1], name


def test_worker_names_expand_as_celery_expands_them() -> None:
    for name in ("embeddings@%h", "maintenance@%h", "w-%n@%d", "odd%%@%h", "plain@host"):
        for host in (CONTAINER_HOST, "pod-7.example.internal"):
            celery_name = host_format(default_nodename(name), host=host)
            assert expand_node_name(name, host) == celery_name


def test_an_unknown_abbreviation_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="unknown abbreviation %x"):
        expand_node_name("w@%x", CONTAINER_HOST)
