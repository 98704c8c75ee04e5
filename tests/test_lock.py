"""The committed locks (`make lock`) and pyproject.toml must agree: requirements.lock (the
dependencies and the scale extra: what the Docker image installs) and requirements-test.lock
(those and the test extra, at the same versions: what `make setup` installs).

Fails when a dependency is declared but not locked, locked but required by nothing, pinned
outside its declared range, or locked without hashes; when the two locks pin a package at
different versions or the runtime lock carries the test tools; and when the environment running
the suite is not the one the test lock describes (a stale `make setup`).
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
RUNTIME, TEST = "requirements.lock", "requirements-test.lock"
EXTRAS = {RUNTIME: ("scale",), TEST: ("test", "scale")}  # the extras `make lock` resolves
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
            if rest and not rest.startswith("-c "):
                pins[-1].via.add(_via_name(rest))
        elif in_via and line.startswith("#   ") and not line[4:].startswith("-c "):
            pins[-1].via.add(_via_name(line[4:].strip()))  # "-c FILE": a constraint, no want
    return pins


def _via_name(text: str) -> str:
    return canonicalize_name(re.split(r"[\s\[(]", text, maxsplit=1)[0])


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in data["project"]["optional-dependencies"][extra]]
    return reqs


def read_pins(lock: str) -> dict[str, Pin]:
    parsed = parse_lock((ROOT / lock).read_text())
    return {p.name: p for p in parsed if p.marker is None or p.marker.evaluate()}


@pytest.fixture(scope="module", params=[RUNTIME, TEST])
def lock(request) -> tuple[str, dict[str, Pin]]:
    return request.param, read_pins(request.param)


def test_parser_reads_pins_hashes_and_via() -> None:
    text = ("a-b==1.0 \\\n    --hash=sha256:00\n    --hash=sha256:11\n"
            "    # via tbps (pyproject.toml)\n"
            "c==2.0 ; sys_platform == 'linux' \\\n    --hash=sha256:22\n    # via\n"
            "    #   a-b\n    #   d[x]\n")
    a, c = parse_lock(text)
    assert (a.name, str(a.version), a.hashes, a.via) == ("a-b", "1.0", 2, {"tbps"})
    assert (c.name, c.hashes, c.via) == ("c", 1, {"a-b", "d"})
    assert c.marker is not None


def test_every_declared_dependency_is_locked_within_its_range(lock) -> None:
    name, pins = lock
    problems = []
    for req in declared(EXTRAS[name]):
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} is declared in pyproject.toml but not in {name}")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"lock pins {pin.name}=={pin.version}, outside {req}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_every_locked_package_is_required_and_hashed(lock) -> None:
    """Nothing in the lock that no declared package (or its dependencies) asks for."""
    name, pins = lock
    orphans = [p.name for p in pins.values() if not p.via or not p.via <= set(pins) | {PROJECT}]
    assert not orphans, f"locked but required by nothing declared (run `make lock`): {orphans}"
    unhashed = [p.name for p in pins.values() if p.hashes == 0]
    assert not unhashed, f"locked without hashes: {unhashed}"
    direct = {canonicalize_name(r.name) for r in declared(EXTRAS[name])}
    for package, pin in pins.items():
        if PROJECT in pin.via:
            assert package in direct, f"{package}: {name} says tbps requires it, pyproject not"


def test_the_runtime_lock_is_the_test_locks_runtime_part() -> None:
    """Same versions in both; the test tools only in the test lock (not in the image)."""
    runtime, test = read_pins(RUNTIME), read_pins(TEST)
    differ = [f"{n}: {p.version} vs {test[n].version if n in test else 'absent'}"
              for n, p in runtime.items() if n not in test or test[n].version != p.version]
    assert not differ, "the two locks disagree (run `make lock`):\n" + "\n".join(differ)
    tools = {canonicalize_name(r.name) for r in declared(("test",))} - {
        canonicalize_name(r.name) for r in declared(("scale",))}
    assert {"pytest", "selenium", "schemathesis"} <= tools
    assert not tools & set(runtime) - {"packaging"}, tools & set(runtime)


def test_the_installed_environment_is_the_locked_one() -> None:
    """`make setup` installs exactly the test lock: every locked package at its version."""
    pins = read_pins(TEST)
    wrong = []
    for name, pin in pins.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: locked {pin.version}, not installed")
            continue
        if installed != pin.version:
            wrong.append(f"{name}: locked {pin.version}, installed {installed}")
    assert not wrong, f"the environment differs from {TEST} (run `make setup`):\n" + \
        "\n".join(wrong)
