#!/usr/bin/env bash
# The main job: install, train the default Gated PixelCNN on binarised MNIST for a short CPU budget, report test
# NLL, then write a grid of samples and completions of real test digits from their top 14 rows.
#   DATA_ROOT  where MNIST lives or is downloaded to (default ./data)
#   BUDGET     training wall time, DD:HH:MM:SS (default 15 minutes)
# Re-running resumes runs/pixelcnn_mnist/checkpoints/last.ckpt; delete runs/pixelcnn_mnist to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT="${DATA_ROOT:-./data}"
BUDGET="${BUDGET:-00:00:15:00}"
CONFIG=lightning_configs/pixelcnn_mnist.yaml
CKPT=runs/pixelcnn_mnist/checkpoints/last.ckpt
python3 -m venv .venv
.venv/bin/pip install -q -e .
.venv/bin/pixelgen fit --config "$CONFIG" --data.root "$DATA_ROOT" --trainer.max_time "$BUDGET"
.venv/bin/pixelgen test --config "$CONFIG" --data.root "$DATA_ROOT" --trainer.logger false
.venv/bin/pixelgen sample --ckpt "$CKPT" --num-samples 64 --seed 0 --out out/pixelcnn_mnist_samples.png
.venv/bin/pixelgen sample --ckpt "$CKPT" --num-samples 32 --seed 0 --prime-rows 14 --prime-from test \
  --data-root "$DATA_ROOT" --out out/pixelcnn_mnist_completions.png
