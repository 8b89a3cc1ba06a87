#!/usr/bin/env bash
# The benchmark targets still open that take a GPU (each is 6-9 hours on a 2-core CPU):
#   12  a trained VGG-16 converted to depthwise-separable convolutions keeps within 2 points at
#       under 0.2x MACs after fine-tuning (factorize_cifar10.py --methods depthwise);
#   13  the distillation table's cross-family pair resnet56 -> mobilenet_v2 (distill_cifar10.py).
# On the lent machine (the device tool sends the working tree only, up to 64 MiB), prepare here:
#   python benchmarks/carry_data.py pack ../shared/data/cifar10 .devdata/cifar10.npz       # 56 MB
#   the wheels its image lacks, into .whl (pydantic, pydantic_core, annotated-types,
#   typing-inspection, torch-pruning; see /work/.library/device/README.md), then run there
#   `EFFDL_COMMIT=<commit> bash benchmarks/open_targets_gpu.sh 12 13` carrying .devdata and .whl.
# SMOKE=1 runs the same steps on the CPU here on a few hundred images (numbers meaningless).
# Logs and the bench_results JSON end up in $OUT (default runs/open-targets).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-runs/open-targets}")
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PY:-python3}
if [ -f .devdata/cifar10.npz ]; then
    [ -d /tmp/data/cifar10 ] || $PY benchmarks/carry_data.py unpack .devdata/cifar10.npz /tmp/data/cifar10 || exit 1
    export EFFDL_DATA=/tmp/data
fi
if [ "${SMOKE:-0}" = 1 ]; then
    DEVICE=cpu; VGG_EPOCHS=1; FT_EPOCHS=1; TEACHER_EPOCHS=1; EPOCHS=1
    LIMITS=(--train-limit 256 --test-limit 256); FLIMITS=(--limit-train 256 --limit-test 256 --repeats 5 --rounds 1)
else
    DEVICE=cuda; VGG_EPOCHS=${VGG_EPOCHS:-30}; FT_EPOCHS=10; TEACHER_EPOCHS=30; EPOCHS=15; LIMITS=(); FLIMITS=()
fi
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
for target in "$@"; do
    case "$target" in
    12)  # VGG-16 trained here (its recipe is free: the target is the drop from it), then converted
        $PY -m effdl train --model vgg16 --dataset cifar10 --epochs "$VGG_EPOCHS" --batch-size 256 --lr 0.1 \
            --device "$DEVICE" --out-dir "$OUT" --name vgg16 --progress false "${LIMITS[@]}" 2>&1 | tee "$OUT/vgg16.log" \
            || exit 1
        rm -f bench_results/factorize_cifar10.json  # never an older run's figures
        (cd benchmarks && $PY factorize_cifar10.py --checkpoint "$OUT/vgg16/best.safetensors" --methods depthwise \
            --first-layer features.0 --epochs "$FT_EPOCHS" --distill 0.7 --device "$DEVICE" "${FLIMITS[@]}") \
            2>&1 | tee "$OUT/depthwise.log" || exit 1
        cp bench_results/factorize_cifar10.json "$OUT/" ;;
    13)  rm -f bench_results/distill_cifar10.json
        # same recipe as the same-family row in BENCHMARKS.md (batch 128, lr 0.1 one-cycle, 15 epochs)
        (cd benchmarks && $PY distill_cifar10.py --pairs resnet56:mobilenet_v2 --teacher-epochs "$TEACHER_EPOCHS" \
            --epochs "$EPOCHS" --seeds 0 --device "$DEVICE" --out-dir "$OUT/bench-distill" "${LIMITS[@]}") \
            2>&1 | tee "$OUT/distill.log" || exit 1
        cp bench_results/distill_cifar10.json "$OUT/" ;;
    *) echo "unknown target $target: use 12 and/or 13"; exit 2 ;;
    esac
done
