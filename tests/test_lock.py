"""The committed lock (requirements.lock, `make lock`) and pyproject.toml must agree.

Fails when a dependency is declared but not locked, locked but required by nothing, pinned
outside its declared range, or locked without hashes; and when the environment running the
suite is not the one the lock describes (a stale `make setup`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "tbps"


@dataclass
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: int = 0
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> list[Pin]:
    """Parse uv / pip-tools output: ``name==version [; marker] \\`` then ``--hash`` lines and
    ``# via`` comments naming who requires it."""
    pins: list[Pin] = []
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw.startswith((" ", "#")):
            req = Requirement(line.rstrip("\\").strip())
            (spec,) = req.specifier
            if spec.operator != "==":
                raise AssertionError(f"lock line is not an exact pin: {line}")
            pins.append(Pin(canonicalize_name(req.name), Version(spec.version), req.marker))
            in_via = False
        elif line.startswith("--hash="):
            pins[-1].hashes += 1
        elif line.startswith("# via"):
            rest = line[len("# via"):].strip()
            in_via = not rest
            if rest:
                pins[-1].via.add(_via_name(rest))
        elif in_via and line.startswith("#   "):
            pins[-1].via.add(_via_name(line[4:].strip()))
    return pins


def _via_name(text: str) -> str:
    return canonicalize_name(re.split(r"[\s\[(]", text, maxsplit=1)[0])


def declared() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    for extra in ("test", "scale"):  # the extras `make lock` resolves
        reqs += [Requirement(r) for r in data["project"]["optional-dependencies"][extra]]
    return reqs


@pytest.fixture(scope="module")
def pins() -> dict[str, Pin]:
    parsed = parse_lock(LOCK.read_text())
    return {p.name: p for p in parsed if p.marker is None or p.marker.evaluate()}


def test_parser_reads_pins_hashes_and_via() -> None:
    text = ("a-b==1.0 \\\n    --hash=sha256:00\n    --hash=sha256:11\n"
            "    # via tbps (pyproject.toml)\n"
            "c==2.0 ; sys_platform == 'linux' \\\n    --hash=sha256:22\n    # via\n"
            "    #   a-b\n    #   d[x]\n")
    a, c = parse_lock(text)
    assert (a.name, str(a.version), a.hashes, a.via) == ("a-b", "1.0", 2, {"tbps"})
    assert (c.name, c.hashes, c.via) == ("c", 1, {"a-b", "d"})
    assert c.marker is not None


def test_every_declared_dependency_is_locked_within_its_range(pins: dict[str, Pin]) -> None:
    problems = []
    for req in declared():
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} is declared in pyproject.toml but not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"lock pins {pin.name}=={pin.version}, outside {req}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_every_locked_package_is_required_and_hashed(pins: dict[str, Pin]) -> None:
    """Nothing in the lock that no declared package (or its dependencies) asks for."""
    orphans = [p.name for p in pins.values() if not p.via or not p.via <= set(pins) | {PROJECT}]
    assert not orphans, f"locked but required by nothing declared (run `make lock`): {orphans}"
    unhashed = [p.name for p in pins.values() if p.hashes == 0]
    assert not unhashed, f"locked without hashes: {unhashed}"
    direct = {canonicalize_name(r.name) for r in declared()}
    for name, pin in pins.items():
        if PROJECT in pin.via:
            assert name in direct, f"{name}: the lock says tbps requires it, pyproject does not"


def test_the_installed_environment_is_the_locked_one(pins: dict[str, Pin]) -> None:
    """`make setup` installs exactly the lock: every locked package at its locked version."""
    wrong = []
    for name, pin in pins.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: locked {pin.version}, not installed")
            continue
        if installed != pin.version:
            wrong.append(f"{name}: locked {pin.version}, installed {installed}")
    assert not wrong, "the environment differs from requirements.lock (run `make setup`):\n" + \
        "\n".join(wrong)
