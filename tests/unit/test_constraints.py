"""constraints.txt pins what pyproject.toml asks for (`make lock` writes it; CONTRIBUTING.md).

CI (`make test`) and the image install with `-c constraints.txt`, so a requirement the file
does not pin, or pins outside its range, would be installed unpinned or not at all.
"""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

PROJECT = "embedder"


def pins() -> dict[NormalizedName, tuple[Version, Requirement]]:
    """Every `name==version [; marker]` line of constraints.txt, by normalized name."""
    found: dict[NormalizedName, tuple[Version, Requirement]] = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier  # one exact pin, nothing else
        assert specifier.operator == "==" and not requirement.extras, line
        name = canonicalize_name(requirement.name)
        assert name not in found, f"{name} pinned twice"
        found[name] = (Version(specifier.version), requirement)
    return found


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies, every extra's and the build system's."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    lines = [*project["dependencies"], *pyproject["build-system"]["requires"]]
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != PROJECT]


def test_every_requirement_of_pyproject_has_a_pin_that_satisfies_it() -> None:
    pinned = pins()
    build_system = {"setuptools", "wheel"}
    problems = []
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            # Build requirements are installed in pip's isolated build environment, not
            # pinned; if the file ever pins them, the pin must still fit (checked below).
            if name not in build_system:
                problems.append(f"{requirement}: not in constraints.txt")
            continue
        version, _ = pinned[name]
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: constraints.txt pins {version}")
    assert problems == [], "run `make lock`: " + "; ".join(problems)


def closure(name: str, extras: frozenset[str]) -> set[NormalizedName]:
    """Distributions `name[extras]` needs here, following installed metadata and markers."""
    environment = default_environment()
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    needed: set[NormalizedName] = set()
    todo = [(canonicalize_name(name), extras)]
    while todo:
        current, current_extras = todo.pop()
        if (current, current_extras) in seen:
            continue
        seen.add((current, current_extras))
        needed.add(current)
        for line in metadata.requires(current) or []:
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({**environment, "extra": extra})
                for extra in ("", *current_extras)
            )
            if wanted:
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return needed - {canonicalize_name(PROJECT)}


def test_this_environment_has_exactly_the_pinned_versions() -> None:
    """What `make setup` installed for `.[dev]` is the lock, no more and no less."""
    environment = default_environment()
    applicable = {
        name: version
        for name, (version, requirement) in pins().items()
        if requirement.marker is None or requirement.marker.evaluate(environment)
    }
    installed = {
        name: Version(metadata.version(name)) for name in closure(PROJECT, frozenset({"dev"}))
    }

    hint = "constraints.txt and this environment differ: `make lock`, then `make setup`"
    assert sorted(set(installed) - set(applicable)) == [], f"{hint}; not pinned"
    assert sorted(set(applicable) - set(installed)) == [], f"{hint}; pinned but not needed"
    assert {n: v for n, v in installed.items() if applicable[n] != v} == {}, hint


def test_ci_and_the_image_install_with_the_constraints() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")

    assert "LOCK   := constraints.txt" in makefile
    assert "$(STAMP): pyproject.toml $(LOCK)\n" in makefile  # a new lock reinstalls
    assert 'pip install --quiet -c $(LOCK) -e ".[dev]"' in makefile
    # The image: the same pins, runtime dependencies only (no extras).
    assert "RUN pip install -c constraints.txt -e . " in dockerfile
    assert "COPY pyproject.toml README.md alembic.ini constraints.txt ./" in dockerfile
