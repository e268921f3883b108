#!/usr/bin/env bash
# Reproduce the bundled digits models (CPU, ~10 min on 2 cores):
#   models/xoresnet-digits.pt      float XOResNet (xoresnet-digits: stages [2, 2], widths 16/32, T = 4)
#   models/xoresnet-digits-qat.pt  the same, fine-tuned through the exact Loihi integer forward
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
$BIN/xoresnet-train --dataset digits --arch xoresnet-digits --timesteps 4 --epochs 40 --lr 5e-3 --seed 0 \
    --out models/xoresnet-digits.pt --no-progress
$BIN/xoresnet-train --dataset digits --qat --init models/xoresnet-digits.pt --calib-samples 64 --epochs 5 \
    --lr 2e-4 --seed 0 --out models/xoresnet-digits-qat.pt --no-progress
