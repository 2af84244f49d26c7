#!/usr/bin/env bash
# Build docker/Dockerfile and run `droppos-bench demo --quick` in the image on the CPU, without a Docker engine or a
# registry: Debian's buildah (chroot isolation: no daemon, no user namespaces) builds on a Debian bookworm base that
# mmdebstrap makes from Debian's packages. `make test-docker` runs it; it needs root and
# `apt-get install buildah mmdebstrap`.
# Storage is overlay: vfs copies the whole 7 GB tree for every layer and build step and ran out of this machine's
# 47 GB; STORAGE_DRIVER=vfs still picks it where overlay cannot mount.
# Everything it keeps (base image, layer cache, the built image, the demo's output) lies in DROPPOS_BUILD_CACHE
# (default /var/tmp/droppos-bench-build, about 7 GB); `rm -rf` that folder for a cold build.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${DROPPOS_BUILD_CACHE:-/var/tmp/droppos-bench-build}
base=localhost/droppos-bench-base:bookworm
image=localhost/droppos-bench:local
buildah=(buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver "${STORAGE_DRIVER:-overlay}")
mkdir -p "$cache"

# The base: bookworm minbase with the same sources as debian:bookworm-slim, the Dockerfile's default BASE.
if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    start=$SECONDS
    mmdebstrap --quiet --variant=minbase bookworm "$cache/rootfs.tar" \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main"
    ctr=$("${buildah[@]}" from scratch)
    "${buildah[@]}" add "$ctr" "$cache/rootfs.tar" /
    "${buildah[@]}" commit --quiet --rm "$ctr" "$base"
    rm "$cache/rootfs.tar"
    echo "base image: $((SECONDS - start)) s"
fi

# Where this machine's pip takes torch from local disk (/opt) and reaches PyPI through a proxy that the host's CA
# bundle trusts, the build gets the same, read-only, all under /mnt: a folder the base already has, so no mount
# point is left in the image (buildah 1.28 commits those it creates).
build_args=()
if [[ -d /opt/pypi-more ]]; then
    local_pip=$cache/pip-local
    mkdir -p "$local_pip/wheels" "$local_pip/pypi" "$local_pip/pypi-more"
    cp /etc/ssl/certs/ca-certificates.crt "$local_pip/ca.crt"
    printf '%s\n' "[global]" "cert = /mnt/ca.crt" "find-links = /mnt/wheels" \
        "extra-index-url = file:///mnt/pypi/simple file:///mnt/pypi-more/simple" > "$local_pip/pip.conf"
    build_args=(--build-arg PIP_CONFIG_FILE=/mnt/pip.conf -v "$local_pip:/mnt:ro" -v /opt/wheels:/mnt/wheels:ro
                -v /opt/pypi:/mnt/pypi:ro -v /opt/pypi-more:/mnt/pypi-more:ro)
fi

start=$SECONDS
"${buildah[@]}" bud --isolation chroot --layers --pull=never --build-arg BASE="$base" "${build_args[@]}" \
    -f docker/Dockerfile -t "$image" .
build_s=$((SECONDS - start))
# the previous build's image and its source layers, now untagged (the cached layers below them stay)
"${buildah[@]}" rmi --prune >/dev/null

# The demo as `docker run` would start it: the image's entrypoint and user, output in a folder the user may write.
out=$cache/demo-out
rm -rf "$out" && mkdir -p "$out" && chown 1000:1000 "$out"
ctr=$("${buildah[@]}" from --pull=never "$image")
trap '"${buildah[@]}" rm "$ctr" >/dev/null' EXIT
entrypoint=$("${buildah[@]}" inspect --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$ctr")
read -ra entrypoint <<< "$entrypoint"
start=$SECONDS
"${buildah[@]}" run --isolation chroot -v "$out:/out" "$ctr" -- "${entrypoint[@]}" demo --quick --out /out
demo_s=$((SECONDS - start))

echo "build: ${build_s} s; image $image: $("${buildah[@]}" images --format '{{.Size}}' "$image");" \
    "demo --quick in the image: ${demo_s} s (output in $out)"
