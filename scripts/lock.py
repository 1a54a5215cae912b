"""Write the hash-locked requirement sets from pyproject.toml (run by `make lock`).

    python scripts/lock.py             # keep today's pins where pyproject still allows them
    python scripts/lock.py --upgrade   # resolve every package afresh (newest allowed)

Three locks, each for Linux x86_64 and Python 3.11 (the image's and CI's):

    requirements/dev.txt   the project with its dev and bench extras: what `make install` installs
    requirements/cpu.txt   the run-time set with tensorflow-cpu: the CPU image
    requirements/gpu.txt   the run-time set with tensorflow[and-cuda]: the GPU image

Each lock is what `uv pip compile --generate-hashes` resolves from requirements/<name>.in, which this
script writes first from pyproject.toml: the run-time dependencies (TensorFlow swapped for the variant's
wheel in the images), the extras, the build tools pyproject's [build-system] names (the project itself
is installed with --no-build-isolation, so nothing unhashed is fetched), and pip. Installing needs only
pip: `pip install --require-hashes -r requirements/dev.txt` then `pip install --no-deps -e .`.
uv is needed only here, to resolve.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK_DIR = ROOT / "requirements"
PYTHON_VERSION = "3.11"
# glibc 2.28 or newer: the wheels Debian bookworm (2.36) and the python:3.11-slim images can load.
PLATFORM = "x86_64-manylinux_2_28"
DEV_EXTRAS = ("dev", "bench")
TENSORFLOW = "tensorflow"
# The image variant -> the distribution that replaces `tensorflow` (same version) in its lock.
IMAGE_TENSORFLOW = {"cpu": "tensorflow-cpu", "gpu": "tensorflow[and-cuda]"}
HEADER = "# Written by `make lock` (scripts/lock.py) from pyproject.toml; the input of requirements/{name}.txt.\n"


def requirement_name(requirement: str) -> str:
    return re.split(r"[^A-Za-z0-9_.-]", requirement, maxsplit=1)[0].lower()


def tensorflow_version(dependencies: list[str]) -> str:
    for requirement in dependencies:
        if requirement_name(requirement) == TENSORFLOW:
            match = re.fullmatch(r"tensorflow\s*==\s*([\w.]+)", requirement.strip())
            if match is None:
                raise ValueError(f"pyproject must pin tensorflow exactly (==), got {requirement!r}")
            return match.group(1)
    raise ValueError("pyproject names no tensorflow")


def lock_inputs(pyproject: dict) -> dict[str, list[str]]:
    """Lock name -> the requirements it resolves (the .in file's lines)."""
    project = pyproject["project"]
    dependencies = list(project["dependencies"])
    tools = [*pyproject["build-system"]["requires"], "pip"]
    extras = [req for extra in DEV_EXTRAS for req in project["optional-dependencies"][extra]]
    inputs = {"dev": dependencies + extras + tools}
    version = tensorflow_version(dependencies)
    others = [req for req in dependencies if requirement_name(req) != TENSORFLOW]
    for variant, distribution in IMAGE_TENSORFLOW.items():
        inputs[variant] = [f"{distribution}=={version}", *others, *tools]
    return inputs


def write_inputs(inputs: dict[str, list[str]]) -> dict[str, Path]:
    LOCK_DIR.mkdir(exist_ok=True)
    paths = {}
    for name, requirements in inputs.items():
        path = LOCK_DIR / f"{name}.in"
        path.write_text(HEADER.format(name=name) + "\n".join(requirements) + "\n")
        paths[name] = path
    return paths


def compile_lock(source: Path, upgrade: bool) -> None:
    command = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "compile",
        "--quiet",
        "--generate-hashes",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--custom-compile-command",
        "make lock",
        "--output-file",
        str(source.with_suffix(".txt").relative_to(ROOT)),
        str(source.relative_to(ROOT)),
    ]
    if upgrade:
        command.append("--upgrade")
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="ignore today's pins: newest versions allowed")
    args = parser.parse_args(argv)
    inputs = lock_inputs(tomllib.loads(PYPROJECT.read_text()))
    for source in write_inputs(inputs).values():
        compile_lock(source, args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
