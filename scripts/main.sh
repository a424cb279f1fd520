#!/usr/bin/env bash
# The main job: install, train the default Gated PixelCNN on binarised MNIST for a fixed 3,000 steps of 32 images
# (the same model on any machine; a slower or busier one only takes longer, and the progress bar shows the time
# left), report its test NLL in nats per image, then write a grid of 64 samples and 32 completions of real test
# digits from their top 14 rows to out/.
#   DATA_ROOT  where MNIST lives or is downloaded to (default ./data)
#   STEPS      training steps (default 3000, the config's)
# Re-running resumes runs/pixelcnn_mnist/checkpoints/last.ckpt; delete runs/pixelcnn_mnist to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT="${DATA_ROOT:-./data}"
CONFIG=lightning_configs/pixelcnn_mnist.yaml
CKPT=runs/pixelcnn_mnist/checkpoints/last.ckpt
STEPS_OPTION=()
if [ -n "${STEPS:-}" ]; then STEPS_OPTION=(--trainer.max_steps "$STEPS"); fi
python3 -m venv .venv
.venv/bin/pip install -q -e .
.venv/bin/pixelgen fit --config "$CONFIG" --data.root "$DATA_ROOT" "${STEPS_OPTION[@]}"
.venv/bin/pixelgen test --config "$CONFIG" --data.root "$DATA_ROOT" --trainer.logger false
.venv/bin/pixelgen sample --ckpt "$CKPT" --num-samples 64 --seed 0 --out out/pixelcnn_mnist_samples.png
.venv/bin/pixelgen sample --ckpt "$CKPT" --num-samples 32 --seed 0 --prime-rows 14 --prime-from test \
  --data-root "$DATA_ROOT" --out out/pixelcnn_mnist_completions.png
