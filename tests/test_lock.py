"""The hash-locked dependency sets (requirements/*.txt, written by `make lock` = scripts/lock.py) and their users.

Static: the locks are up to date with pyproject.toml, satisfy every requirement they were resolved
from, pin one version of each package with its hashes, agree with each other on the shared run-time
packages, and are what the Makefile and the Dockerfile install (with --require-hashes). The install
itself from a clean clone is scripts/image/fresh_install.sh's, the image build `make image-test`'s.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
lock = load_script(ROOT / "scripts" / "lock.py")
LOCKS = ("dev", "cpu", "gpu")
BUILD_TOOLS = {"pip", "setuptools", "wheel"}
ENTRY = re.compile(r"(?ms)^([A-Za-z0-9][\w.-]*)==(\S+)((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})*)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(name: str) -> dict[str, str]:
    """Package -> version of requirements/<name>.txt (each entry's hashes checked by `hashes`)."""
    return {normalize(package): version for package, version, _ in ENTRY.findall(lock_text(name))}


def lock_text(name: str) -> str:
    return (ROOT / "requirements" / f"{name}.txt").read_text()


def input_lines(name: str) -> list[str]:
    lines = (ROOT / "requirements" / f"{name}.in").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_lock_inputs_are_up_to_date_with_pyproject(pyproject):
    """A dependency added to pyproject without `make lock` fails here, not on a user's fresh install."""
    expected = lock.lock_inputs(pyproject)
    assert set(expected) == set(LOCKS)
    for name in LOCKS:
        assert input_lines(name) == expected[name], f"requirements/{name}.in is stale: run `make lock`"


@pytest.mark.parametrize("name", LOCKS)
def test_every_requirement_is_locked_at_a_version_it_allows(name):
    locked = pins(name)
    for line in input_lines(name):
        requirement = Requirement(line)
        package = normalize(requirement.name)
        assert package in locked, f"{requirement} missing from requirements/{name}.txt"
        assert requirement.specifier.contains(locked[package], prereleases=True), (requirement, locked[package])


@pytest.mark.parametrize("name", LOCKS)
def test_every_locked_package_has_one_version_and_its_hashes(name):
    text = lock_text(name)
    entries = ENTRY.findall(text)
    pinned_lines = re.findall(r"(?m)^[A-Za-z0-9][\w.-]*(?:\[[^\]]*\])?\s*==", text)
    assert len(entries) == len(pinned_lines) > 20
    assert len({normalize(package) for package, _, _ in entries}) == len(entries)
    for package, version, hashes in entries:
        assert hashes.count("--hash=sha256:") >= 1, f"{package}=={version} has no hash"
    assert not re.search(r"(?m)^-e |^\S+ @ |^--(?:index-url|extra-index-url|find-links)", text)


def test_the_locks_carry_the_tensorflow_pin_and_the_build_tools(pyproject):
    version = lock.tensorflow_version(pyproject["project"]["dependencies"])
    assert pins("dev")["tensorflow"] == pins("gpu")["tensorflow"] == pins("cpu")["tensorflow-cpu"] == version
    assert "tensorflow" not in pins("cpu") and not any(p.startswith("nvidia-") for p in pins("cpu"))
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= set(pins("gpu"))
    assert {"tf-keras", "pytest", "uv"} <= set(pins("dev")) and not {"tf-keras", "pytest"} & set(pins("cpu"))
    for name in LOCKS:
        assert BUILD_TOOLS <= set(pins(name))


def test_images_run_the_versions_the_tests_run():
    """A package both in the dev lock and an image's lock has one version: the image runs what was tested."""
    dev = pins("dev")
    for variant in ("cpu", "gpu"):
        image = pins(variant)
        differing = {p: (dev[p], image[p]) for p in set(dev) & set(image) if dev[p] != image[p]}
        assert not differing, f"requirements/{variant}.txt differs from dev.txt: {differing}"


def test_this_environment_has_the_locked_versions():
    """The tests run on the locked set: a locked package installed here is at its locked version.

    Build tools aside: a venv made before the lock keeps the setuptools its Python bundled (the project
    was then built in an isolated environment); `make install` on a fresh venv installs the locked ones.
    """
    locked = {p: v for p, v in pins("dev").items() if p not in BUILD_TOOLS}
    installed = {normalize(d.metadata["Name"]): d.version for d in distributions()}
    assert {"tensorflow", "keras", "fastapi", "celery"} <= set(installed) & set(locked)
    mismatched = {p: (installed[p], locked[p]) for p in set(installed) & set(locked) if installed[p] != locked[p]}
    assert not mismatched, f"installed differs from requirements/dev.txt (run `make install`): {mismatched}"


def test_make_install_installs_the_dev_lock_with_hashes_and_the_project_without_deps():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"(?m)^LOCK := requirements/dev\.txt$", makefile)
    recipe = makefile[makefile.index("$(STAMP):") :].split("\n\n", 1)[0]
    assert recipe.splitlines()[0].split(":", 1)[1].split() == ["pyproject.toml", "$(LOCK)"]
    assert re.search(r"(?m)^\t\$\(PY\) -m pip install .*--require-hashes -r \$\(LOCK\)$", recipe)
    (project,) = re.findall(r"(?m)^\t\$\(PY\) -m pip install (.*)-e \.$", recipe)
    assert "--no-deps" in project and "--no-build-isolation" in project
    assert not re.search(r"-e '?\.\[", recipe), "the project's extras must come from the lock"
    assert re.search(r"(?m)^lock: ", makefile) and "scripts/lock.py" in makefile


def test_dockerfile_installs_only_from_the_locks():
    dockerfile = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    installs = re.findall(r"pip install ([^&\n]*)", dockerfile)
    assert installs, "no pip install in the Dockerfile"
    for arguments in installs:
        locked = re.search(r'--require-hashes -r "?requirements/\$VARIANT\.txt"?', arguments)
        assert locked or re.fullmatch(r"--no-deps --no-build-isolation \.\s*", arguments), arguments
    assert re.search(r"(?m)^COPY requirements/cpu\.txt requirements/gpu\.txt requirements/$", dockerfile)
    assert "requirements" not in (ROOT / ".dockerignore").read_text()
