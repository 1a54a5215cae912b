#!/usr/bin/env bash
# Build a local stand-in for `python:3.11-slim` where Docker Hub cannot be reached, and tag it under
# that name so the Dockerfile's `FROM python:3.11-slim` resolves to it (`podman build --pull=never`).
#
#   sudo scripts/image/stand_in_base.sh            # needs debootstrap, podman; root (debootstrap chroots)
#
# It is Debian bookworm (minbase) with Debian's own Python 3.11 packages, not the official image's
# source build in /usr/local; docs/deploy.md ("Building without Docker Hub") lists every difference.
# Where Docker Hub is reachable, do not run this: `make image` pulls the real base.
set -euo pipefail

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TAG=${TAG:-python:3.11-slim}
WORK=${WORK:-$(mktemp -d /var/tmp/stand-in-base.XXXXXX)}
ROOTFS="$WORK/rootfs"

# The official image's run-time set: Python, venv + pip (ensurepip), ca-certificates, netbase, tzdata;
# python-is-python3 gives the `python` command the official image links in /usr/local/bin.
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata

debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log

python_version=$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')
debian_package=$(chroot "$ROOTFS" dpkg-query -W -f='${Version}' python3.11)
echo "stand-in base: Debian $SUITE, Python $python_version (python3.11 $debian_package)"

tar -C "$ROOTFS" --numeric-owner -c . | podman import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV PYTHON_VERSION=$python_version" \
    --change "LABEL finetune.stand-in=debootstrap-$SUITE" \
    --change "LABEL finetune.stand-in.python3.11=$debian_package" \
    --change 'CMD ["python3"]' \
    - "localhost/$TAG"
podman tag "localhost/$TAG" "docker.io/library/$TAG"
rm -rf "$WORK"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "$TAG"
