PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The browser of the e2e test, found on PATH by this name here and by tests/e2e/test_dashboard.py
# (which reads CHROMIUM, set below for `make test`); Debian's package of the same name provides it.
CHROMIUM := chromium
export CHROMIUM

# The hash-locked dependency set (scripts/lock.py writes it; `make lock` refreshes it). Installing needs only
# pip: every package, pip and the build tools included, comes from the lock with its hash checked; the project
# itself goes in editable, without dependencies and without build isolation (nothing unlocked is fetched).
LOCK := requirements/dev.txt
# The image: VARIANT=cpu (default here) or gpu; BACKBONES: the ImageNet weights baked in (none: none);
# WEIGHTS_DIR: a folder of Keras weight files copied in instead of downloading them.
VARIANT ?= cpu
BACKBONES ?= vgg16
WEIGHTS_DIR ?=
IMAGE ?= finetune-service:$(VARIANT)

.PHONY: install lock lock-upgrade run test test-fast lint format bench image image-test stand-in-base clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	command -v $(CHROMIUM) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CHROMIUM) >/dev/null; }
	touch $(STAMP)

run: install
	$(PY) -m finetune.launcher

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) -m bench.run

# Re-resolve the locks after a pyproject.toml change, keeping every pin it still allows;
# lock-upgrade moves every package to the newest version pyproject allows.
lock: install
	$(PY) scripts/lock.py

lock-upgrade: install
	$(PY) scripts/lock.py --upgrade

image:
	scripts/image/build.sh "$(IMAGE)" "$(VARIANT)" "$(BACKBONES)" "$(WEIGHTS_DIR)"

# Build the image, then run Redis, the API and a worker from its filesystem (as root, with chroot: no
# container runtime needed) and drive a job and a prediction over HTTP. Not part of `make test` (README).
# Offline: make image-test BACKBONES=none, or BACKBONES=mobilenet:0.25 WEIGHTS_DIR=../shared/weights
image-test: install image
	$(PY) scripts/image/image_test.py "$(IMAGE)"

# Where Docker Hub is unreachable: a Debian bookworm stand-in tagged python:3.11-slim (docs/deploy.md).
stand-in-base:
	scripts/image/stand_in_base.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis artifacts .cache
