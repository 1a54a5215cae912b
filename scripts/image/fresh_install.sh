#!/usr/bin/env bash
# Check the lock from scratch: a clean clone of a branch into a temp dir, a fresh venv there, the
# `make install` steps (pip --require-hashes from requirements/dev.txt, the project editable with
# --no-deps), pip check, the entry points import, and the installed set equals the lock.
#
#   scripts/image/fresh_install.sh [REPO] [BRANCH]        # defaults: this checkout, its branch
set -euo pipefail
REPO=${1:-$(git rev-parse --show-toplevel)}
BRANCH=${2:-$(git -C "$REPO" rev-parse --abbrev-ref HEAD)}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/fresh-install.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

git clone --quiet --branch "$BRANCH" "$REPO" "$WORK/src"
cd "$WORK/src"
start=$(date +%s)
# The install recipe of the Makefile, without its chromium step (an apt package, not part of the lock).
make --no-print-directory PYTHON="$PYTHON" .venv/.installed CHROMIUM=true
echo "install took $(( $(date +%s) - start )) s"
.venv/bin/python -c 'import finetune, app.main, worker.celery_app; print("imports ok")'
.venv/bin/python -m pip check
.venv/bin/python - <<'EOF'
import re
from importlib.metadata import distributions

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

locked = dict(re.findall(r"(?m)^([A-Za-z0-9][\w.-]*)==(\S+)", open("requirements/dev.txt").read()))
locked = {norm(k): v for k, v in locked.items()}
installed = {norm(d.metadata["Name"]): d.version for d in distributions()}
installed.pop("finetune-service")
assert installed == locked, {
    "not locked": sorted(set(installed) - set(locked)),
    "not installed": sorted(set(locked) - set(installed)),
    "other version": sorted(k for k in set(locked) & set(installed) if locked[k] != installed[k]),
}
print(f"installed set == lock: {len(locked)} packages")
EOF
