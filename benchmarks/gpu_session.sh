#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one prepared run (about 10 minutes on one H200), for a lent GPU
# machine with PyTorch but no package index:
#
#   benchmarks/fetch_gpu_wheels.sh                 # here, with an index: our other dependencies as wheels in .whl/
#   OUT=results bash benchmarks/gpu_session.sh     # there: one log per check under $OUT, a summary at the end
#   SMOKE=1 OUT=/tmp/gpu bash benchmarks/gpu_session.sh   # the same checks at toy sizes on a CPU (tests/benchmarks)
#   ONLY="det seg" OUT=results bash benchmarks/gpu_session.sh   # some checks (a device call is limited to 10 min)
#
# Each check has its own time limit, so one that hangs or runs out of memory costs only its own minutes; the
# exit status is the number of checks that failed. Checks: the four throughput benchmarks at the paper's sizes
# (ViT-B/16, bf16, SDPA; pre-training also with torch.compile), the frozen protocols' feature extraction against
# plain inference and k-NN at ImageNet's sizes, the input pipelines' rates, then the GPU training path end to end: a tiny
# DropPos pre-training under torchrun with one process (DDP, bf16, compile) and a fine-tune from its encoder.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_session}
SMOKE=${SMOKE:-0}
ONLY=${ONLY:-}  # names of the checks to run, separated by spaces; empty: all
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

WHEELS=${WHEELS-.whl}  # folder of wheels to install first (benchmarks/fetch_gpu_wheels.sh); empty: none
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || exit 100
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$SMOKE" = 1 ]; then
    # toy sizes that run on a CPU in about a minute: the same scripts and options as below
    TINY=(--size tiny --depth 1 --steps 1 --rounds 1 --device cpu --sync-check)
    PRETRAIN=("${TINY[@]}" --img-size 64 --batch 4 --mae)
    PRETRAIN_COMPILED=("${TINY[@]}" --img-size 64 --batch 4)
    FINETUNE=("${TINY[@]}" --img-size 64 --batch 4 --workers 1 --loader-batches 2 --loader-image-size 64)
    DET=("${TINY[@]}" --img-size 128 --batch 1 --scene-size 128)
    SEG=("${TINY[@]}" --img-size 64 --batch 2 --test-size 64 96)  # BatchNorm needs 2
    DATA_RATE=(--quick)
    FROZEN=(--size tiny --batch 4 --images 16 --unique 4 --workers 1 --rounds 1 --steps 1)
    KNN=(--quick)
    GPU_PATH=(precision=fp32 require_gpu=False)
    LIMIT_SCALE=4
else
    PRETRAIN=(--size base --batch 64 128 256 --mae --sync-check)
    PRETRAIN_COMPILED=(--size base --batch 256 --compile)
    FINETUNE=(--size base --batch 128 --workers 8 16 --sync-check)
    DET=(--size base --batch 2 --sync-check)
    SEG=(--size base --batch 2 --sync-check)
    DATA_RATE=(--rate-images 100)
    FROZEN=(--size base --batch 256 --images 10240 --unique 512 --workers 16)
    KNN=(--train 1281167 --queries 50000 --devices cuda)  # ImageNet's sizes
    GPU_PATH=(precision=bf16 compile=True require_gpu=True)
    LIMIT_SCALE=1
fi

failed=0
check() {  # check NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, count a failure
    local name=$1 seconds=$(($2 * LIMIT_SCALE))
    shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        return
    fi
    echo "== $name (limit ${seconds}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$seconds" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$OUT/$name.log"
    [ "$rc" = 0 ] || failed=$((failed + 1))
}

check env 30 "$PYTHON" -c "
import os, platform, torch
print('cpu cores', os.cpu_count())
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
if torch.cuda.is_available():
    print('device', torch.cuda.get_device_name(), round(torch.cuda.get_device_properties(0).total_memory / 2**30), 'GiB')
import timm, mmengine, mmseg, faster_coco_eval
print('timm', timm.__version__, 'mmengine', mmengine.__version__, 'mmseg', mmseg.__version__)
"
check pretrain 130 "$PYTHON" benchmarks/pretrain_throughput.py "${PRETRAIN[@]}"
check pretrain_compiled 110 "$PYTHON" benchmarks/pretrain_throughput.py "${PRETRAIN_COMPILED[@]}"
check finetune 80 "$PYTHON" benchmarks/finetune_throughput.py "${FINETUNE[@]}"
check det 80 "$PYTHON" benchmarks/det_throughput.py "${DET[@]}"
check seg 70 "$PYTHON" benchmarks/seg_throughput.py "${SEG[@]}"
check frozen 120 "$PYTHON" benchmarks/feature_extraction_speed.py "${FROZEN[@]}"
check knn 150 "$PYTHON" -m benchmarks.knn_speed "${KNN[@]}"

work=$(mktemp -d)
check data_rate 90 "$PYTHON" -m benchmarks.data_scale --part rate --rate-root "$work/rate" "${DATA_RATE[@]}"
check gpu_path 240 bash -c '
    set -e
    "$0" -m benchmarks.cli data synth --out "$1/synth" --images 80 --size 64 --seed 0
    "$0" -m torch.distributed.run --standalone --nproc_per_node 1 -m benchmarks.cli pretrain droppos_tiny_synth \
        data.root="$1/synth" model.img_size=64 schedule.epochs=2 work_dir="$1/pretrain" "${@:2}"
    "$0" -m torch.distributed.run --standalone --nproc_per_node 1 -m benchmarks.cli cls finetune finetune_tiny_synth \
        ckpt="$1/pretrain/encoder.safetensors" data.root="$1/synth" model.img_size=64 schedule.epochs=2 \
        work_dir="$1/finetune" "${@:2}"
    ' "$PYTHON" "$work" "${GPU_PATH[@]}"
rm -rf "$work"

echo "== $failed check(s) failed; logs in $OUT"
exit "$failed"
