#!/usr/bin/env bash
# Build the service image (run by `make image`).
#
#   scripts/image/build.sh IMAGE VARIANT BACKBONES [WEIGHTS_DIR]
#
# With docker where its daemon answers, else podman (`--isolation chroot`: builds as root without a container
# runtime's namespaces, as in CI sandboxes where `podman run` itself cannot start; `--format docker`
# keeps the HEALTHCHECK, which the OCI format drops). CONTAINER_ENGINE=...
# picks one. WEIGHTS_DIR: a folder of Keras weight files (*.h5) copied into the build context's weights/
# for the build, so those backbones are not downloaded (hosts without access to Keras' download site).
# BUILD_CA_BUNDLE (default: $PIP_CERT when set): a CA bundle for hosts behind a TLS-inspecting proxy;
# RUN steps see it as the system bundle and pip is told to use it, through bind mounts (podman) that
# are not part of the image.
set -euo pipefail
IMAGE=$1 VARIANT=$2 BACKBONES=$3 WEIGHTS_DIR=${4:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENGINE=${CONTAINER_ENGINE:-$(docker info >/dev/null 2>&1 && echo docker || echo podman)}

copied=() mounts=()
cleanup() { for file in "${copied[@]}"; do rm -f "$file"; done; }
trap cleanup EXIT
if [ -n "$WEIGHTS_DIR" ]; then
    for file in "$WEIGHTS_DIR"/*.h5; do
        [ -e "$file" ] || { echo "no *.h5 weight files in $WEIGHTS_DIR" >&2; exit 2; }
        target="$ROOT/weights/$(basename "$file")"
        [ -e "$target" ] && continue
        cp "$file" "$target"
        copied+=("$target")
    done
fi

CA_BUNDLE=${BUILD_CA_BUNDLE:-${PIP_CERT:-}}
if [ -n "$CA_BUNDLE" ] && [ "$ENGINE" = podman ]; then
    pip_conf=$(mktemp)
    copied+=("$pip_conf")
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$pip_conf"
    chmod 644 "$pip_conf"
    mounts=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" --volume "$pip_conf:/etc/pip.conf:ro")
fi

args=(build --file "$ROOT/Dockerfile" --tag "$IMAGE" --build-arg "VARIANT=$VARIANT" --build-arg "BACKBONES=$BACKBONES")
[ "$ENGINE" = podman ] && args+=(--isolation chroot --layers --format docker "${mounts[@]}")
echo "+ $ENGINE ${args[*]} $ROOT"
"$ENGINE" "${args[@]}" "$ROOT"
