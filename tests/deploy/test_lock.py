"""requirements.lock and requirements-test.lock agree with pyproject.toml (regenerate them with ``make lock``).

Every direct dependency (``[project] dependencies`` in the runtime lock; those plus the ``test`` and ``train``
extras in the test lock) is pinned with ``==`` to a version its specifier admits, every pin carries hashes, the two
locks agree on the packages they share, and the image and the Makefile install from them hash-checked.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME_LOCK = REPO / "requirements.lock"
TEST_LOCK = REPO / "requirements-test.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+?)\s*(?:;[^\\]*)?\\?$")
FIX = "out of sync with pyproject.toml: run `make lock`"


def _pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) for every ``name==version`` entry of a pip requirements file."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for line in lock.read_text(encoding="utf-8").splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            pins[current] = (Version(match.group(2)), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            current = None
    return pins


def _requirements(*groups: list[str]) -> list[Requirement]:
    return [Requirement(item) for group in groups for item in group]


RUNTIME = _requirements(PYPROJECT["project"]["dependencies"])
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
TEST = _requirements(PYPROJECT["project"]["dependencies"], EXTRAS["test"], EXTRAS["train"])


@pytest.mark.parametrize(
    ("lock", "requirements"), [(RUNTIME_LOCK, RUNTIME), (TEST_LOCK, TEST)], ids=["runtime", "test"]
)
def test_every_direct_dependency_is_pinned(lock: Path, requirements: list[Requirement]) -> None:
    pins = _pins(lock)
    missing = [str(req) for req in requirements if canonicalize_name(req.name) not in pins]
    assert not missing, f"{lock.name} {FIX}; not pinned: {missing}"
    refused = {
        str(req): str(pins[canonicalize_name(req.name)][0])
        for req in requirements
        if not req.specifier.contains(pins[canonicalize_name(req.name)][0], prereleases=True)
    }
    assert not refused, f"{lock.name} {FIX}; pinned outside the specifier: {refused}"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, TEST_LOCK], ids=["runtime", "test"])
def test_every_pin_has_hashes(lock: Path) -> None:
    pins = _pins(lock)
    assert len(pins) > 20
    unhashed = sorted(name for name, (_, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"{lock.name}: pins without --hash (pip --require-hashes refuses them): {unhashed}"


def test_locks_agree_on_shared_packages() -> None:
    runtime, test = _pins(RUNTIME_LOCK), _pins(TEST_LOCK)
    assert runtime.keys() <= test.keys(), f"runtime packages missing from the test lock: {runtime.keys() - test.keys()}"
    versions = {name: (str(runtime[name][0]), str(test[name][0])) for name in runtime}
    differ = {name: pair for name, pair in versions.items() if pair[0] != pair[1]}
    assert not differ, f"the locks pin different versions {differ}: run `make lock`"


def test_the_project_itself_is_not_in_the_locks() -> None:
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        assert "sightline" not in _pins(lock), f"{lock.name} pins the project itself"


def test_torch_is_the_cpu_build() -> None:
    """The CPU wheel this project's machines carry, not PyPI's CUDA build (several GB of nvidia-* wheels)."""
    pins = _pins(TEST_LOCK)
    assert pins["torch"][0].local == "cpu"
    assert not [name for name in pins if name.startswith("nvidia-")]


def test_image_and_makefile_install_from_the_locks() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r requirements.lock" in dockerfile
    assert "pip install --no-deps /wheels/sightline-" in dockerfile
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements.lock" in makefile
    assert "--require-hashes --no-deps $(FIND_LINKS) -r requirements-test.lock" in makefile
    assert re.search(r"^lock:", makefile, re.MULTILINE)


def test_torchvision_is_left_out() -> None:
    """PyPI's torchvision cannot load beside the CPU torch; tests/reference stands in for its import."""
    assert "torchvision" not in _pins(TEST_LOCK)
    assert "--no-emit-package torchvision" in (REPO / "Makefile").read_text(encoding="utf-8")
