#!/usr/bin/env bash
# Run any droppos-bench subcommand in the image on all GPUs, as you (files you can edit), with the current folder
# and the folders named in DROPPOS_MOUNTS (space-separated: data, checkpoints, outputs) at their own paths:
#   DROPPOS_MOUNTS="/data /checkpoints" docker/run.sh bench run benchmarks/suites/paper-table6.yaml
# DROPPOS_IMAGE picks another image; DROPPOS_SHM the shared memory for data-loader workers (default 32g).
set -euo pipefail
image=${DROPPOS_IMAGE:-droppos-bench}
mounts=(-v "$PWD:$PWD")
for folder in ${DROPPOS_MOUNTS:-}; do
    folder=$(realpath "$folder")
    mounts+=(-v "$folder:$folder")
done
exec docker run --rm --gpus all --ipc=host --shm-size "${DROPPOS_SHM:-32g}" \
    --user "$(id -u):$(id -g)" -e HOME=/home/bench -e PYTHONUNBUFFERED=1 \
    "${mounts[@]}" -w "$PWD" "$image" "$@"
