#!/usr/bin/env bash
# How the files in pretrained/ are made: train each run of the README's shipped-models table with its shipped
# config and a fixed step budget (the same steps on any machine; one thread each, two runs side by side on the
# project's 2-core CPU), export its EMA weights (the WaveNets' rounded to float16 values), then measure each file
# on its test set and record the metrics in its metadata (`test --record_metrics true`). Then the file's entry in
# pretrained/catalogue.py gets its figures and `python pretrained/catalogue.py` rewrites the README's table;
# tests/test_pretrained.py checks the files against the catalogue, and measures them again (`-m slow`).
#   DATA_ROOT  the folder of MNIST, cifar10-subset/ and audio/speech-en/ (default ../shared/data)
#   STAGE      train, ship or all (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT="${DATA_ROOT:-../shared/data}"
STAGE="${STAGE:-all}"
export OMP_NUM_THREADS=1
P=.venv/bin/pixelgen
W=.venv/bin/wavegen
LONG=00:03:00:00  # a cap only: the budget is the step count
CIFAR=(--data.dataset folder --data.root "$DATA_ROOT/cifar10-subset")
SPEECH=(--data.root "$DATA_ROOT/audio/speech-en")
IGPT=(--data.root "$DATA_ROOT" --model.init_args.resolution 14)

if [ "$STAGE" != ship ]; then
  (
    $P fit --config lightning_configs/pixelcnn_cifar10_recipe.yaml "${CIFAR[@]}"  # its 1,900 steps
    $P fit --config lightning_configs/igpt_mnist.yaml "${IGPT[@]}" --trainer.max_steps 980 --trainer.max_time $LONG
  ) &
  $W fit --config lightning_configs/wavenet_vocoder.yaml "${SPEECH[@]}"  # the config's 5,000 steps, then resumed
  $W fit --config lightning_configs/wavenet_vocoder.yaml "${SPEECH[@]}" --trainer.max_steps 10000  # for a 2nd cosine
  $W fit --config lightning_configs/wavenet_speech.yaml "${SPEECH[@]}" --trainer.max_steps 867 --trainer.max_time $LONG
  $P fit --config lightning_configs/pixelcnn_mnist.yaml --data.root "$DATA_ROOT" --trainer.max_steps 4000 --data.batch_size 64
  wait
fi

if [ "$STAGE" != train ]; then
  mkdir -p pretrained
  # ship TOOL RUN FILE DATA...: runs/RUN (trained by lightning_configs/RUN.yaml) exported as pretrained/FILE.safetensors
  # and its test metrics recorded; WaveNets ship float16-valued weights (their fused CPU step's fast path)
  ship() {
    local tool=$1 run=$2 file=$3; shift 3
    local half=(); if [ "$tool" = wavegen ]; then half=(--half-weights); fi
    .venv/bin/$tool export --ckpt "runs/$run/checkpoints/last.ckpt" --out "pretrained/$file.safetensors" "${half[@]}"
    .venv/bin/$tool test --config "lightning_configs/$run.yaml" "$@" --ckpt_path "pretrained/$file.safetensors" \
      --record_metrics true --trainer.logger false
  }
  ship pixelgen pixelcnn_mnist pixelcnn_mnist --data.root "$DATA_ROOT"
  ship pixelgen pixelcnn_cifar10_recipe pixelcnn_cifar10 "${CIFAR[@]}"
  ship pixelgen igpt_mnist igpt_mnist "${IGPT[@]}"
  ship wavegen wavenet_speech wavenet_speech "${SPEECH[@]}"
  ship wavegen wavenet_vocoder wavenet_vocoder "${SPEECH[@]}"
fi
