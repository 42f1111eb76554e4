#!/usr/bin/env bash
# Reproduces the shipped default checkpoint: the music21 corpus (restricted sources left out) to token
# shards, then sm1-train with configs/sm1-default.yaml. On one H100 the build takes minutes on 16 cores
# and training about 5 minutes.
#   bash scripts/train_default.sh OUT_DIR MAX_STEPS [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/sm1-music21}
steps=${2:-5000}
workers=${3:-$(nproc)}
python3 -m sm1.data.cli build music21 --out data/music21 --workers "$workers"
python3 -m sm1.train --config configs/sm1-default.yaml --data data/music21 --out "$out" --max-steps "$steps" --no-progress
