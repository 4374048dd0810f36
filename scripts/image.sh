#!/usr/bin/env bash
# Builds deploy/Dockerfile's runtime image from the release binary CI built, with podman, and
# checks it as a user would (scripts/image-check.py). No Docker daemon or registry needed:
# deploy/layout.sh lays out target/image/build/out exactly as the Dockerfile's build stage lays
# out /out, and `--build-context build=target/image/build` stands in for that stage's filesystem
# (so its /out is target/image/build/out), so its rust image is never pulled.
#   scripts/image.sh            (after `cargo test --release`, or `cargo build --release --bin fleetsync`)
# Env: IMAGE (default fleetsync:test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE=${IMAGE:-fleetsync:test}
BINARY=target/release/fleetsync
STAGE=target/image/build

if [ ! -x "$BINARY" ]; then
    echo "image: $BINARY missing; build it with: cargo build --release --locked --bin fleetsync" >&2
    exit 1
fi

if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "image: installing podman and runc" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi

# crun, podman's default runtime, cannot set rlimits or use hybrid cgroups in CI sandboxes: runc,
# cgroupfs and no default ulimits work there (and anywhere else).
export CONTAINERS_CONF="$PWD/.ci/containers.conf"
podman=(podman --runtime runc --cgroup-manager=cgroupfs)

rm -rf "$STAGE"
deploy/layout.sh "$STAGE/out" "$BINARY"
timeout 600 "${podman[@]}" build --quiet --build-context build="$STAGE" --target runtime \
    -f deploy/Dockerfile -t "$IMAGE" . >/dev/null
echo "image: built $IMAGE from $BINARY"

scripts/setup-venv.sh
.venv/bin/python scripts/image-check.py "$IMAGE"
