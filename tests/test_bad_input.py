"""Bad input to `pixelgen` and `wavegen`, one table: every row must end in exactly one `<tool>: error:` line naming
the problem, exit status 2, no traceback, nothing written (no output file or folder, no checkpoint, no config), and
every file that was there before unchanged. Malicious checkpoints (a pickle that creates a marker file) go through
every command and the Python loader: refused before any of their code runs."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import pixelgen
from arcore.errors import UsageError
from arcore.files.registry import load_checkpoint
from pixelgen.cli import main as pixelgen_main
from tests.test_audio_data import make_audio_folder, tone
from tests.test_pixelgen_cli import make_folder_dataset
from tests.test_pixelgen_cli import tiny_config as pixelcnn_config
from tests.test_wavegen_cli import tiny_config as wavenet_config
from tests.tiny_configs import igpt_config, untrained_checkpoint
from wavegen.cli import main as wavegen_main
from wavegen.wavenet import WaveNet

MAINS = {"pixelgen": pixelgen_main, "wavegen": wavegen_main}
EVIL_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", "")
SAMPLE_PNG = "sample --ckpt {pixelcnn_ckpt} --out"
SAMPLE_WAV = "sample --ckpt {wavenet_ckpt} --speaker 0 --out"

# (row id, tool, argv with {placeholders} filled from the `paths` fixture, a distinctive part of the error)
ROWS = [
    # unknown paths
    ("missing ckpt", "pixelgen", "sample --ckpt {missing}/last.ckpt --out {out}.png", "does not exist"),
    ("missing data root", "pixelgen", "fit --config {pixelcnn} --data.root {missing}",
     "{missing}/train does not exist: a folder of images needs train/ and test/ under --data.root"),
    ("missing prime data", "pixelgen", ("sample --ckpt {pixelcnn_ckpt} --out {out}.png --prime-rows 3 "
                                      "--data-root {missing}"), "a folder of images needs train/ and test/ under --data-root"),
    ("missing ckpt", "wavegen", "sample --ckpt {missing}/last.ckpt --out {out}.wav", "does not exist"),
    ("missing data root", "wavegen", "fit --config {wavenet} --data.root {missing}", "is not a folder of audio"),
    ("missing prime", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --prime {missing}/a.wav",
     "--prime {missing}/a.wav does not exist"),
    ("missing mel-from", "wavegen", ("sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 "
                                    "--mel-from {missing}/a.wav"), "--mel-from {missing}/a.wav does not exist"),
    ("missing ckpt_path", "pixelgen", "test --config {pixelcnn} --ckpt_path {missing}/x.ckpt",
     "--ckpt_path {missing}/x.ckpt does not exist"),
    # unreadable images and audio
    ("garbage images", "pixelgen", "fit --config {pixelcnn} --data.root {garbage_images}", "no readable images"),
    ("garbage audio folder", "wavegen", "fit --config {wavenet} --data.root {garbage_audio}", "no usable audio"),
    ("garbage prime", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --prime {garbage_wav}",
     "{garbage_wav}: not readable audio (LibsndfileError)"),
    ("garbage mel-from", "wavegen", ("sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 "
                                    "--mel-from {garbage_wav}"), "{garbage_wav}: not readable audio (LibsndfileError)"),
    ("mel-from under one frame", "wavegen", "sample --ckpt {vocoder_ckpt} --out {keep_wav} --mel-from {short_wav}",
     "gives 60 samples at 8000 Hz, too few for a mel frame: it needs more than 80"),
    # data read as it is, sizes checked before they are spent
    ("test classes that train lacks", "pixelgen", "test --config {pixelcnn_trained} --data.root {odd_classes}",
     "{odd_classes}/test has class folders that {odd_classes}/train lacks (diagonal)"),
    ("image size typo", "pixelgen", "fit --config {pixelcnn} --data.image_size 20000",
     "--data.image_size 20000 is larger than 1024"),
    ("record a part of the test set", "pixelgen",
     "test --config {pixelcnn} --ckpt_path {model_st} --record_metrics true --trainer.limit_test_batches 0.01",
     "--record_metrics true records a score of the whole test set, but --trainer.limit_test_batches 0.01 tests part"),
    ("fit in a read-only folder", "pixelgen", "fit --config {pixelcnn} --trainer.default_root_dir {readonly}/run",
     "run from a folder you can write to, or name one with --trainer.default_root_dir"),
    ("validation fraction below one batch", "pixelgen", "fit --config {pixelcnn} --trainer.limit_val_batches 0.01",
     "limit_val_batches"),
    ("the base class as the model", "pixelgen",
     ("fit --model arcore.training.module.AutoregressiveModule --data.dataset folder --data.root {missing} "
      "--trainer.logger false --trainer.default_root_dir {out}"), "--model: AutoregressiveModule is the base of the models, not one"),
    # outputs that would replace (or join) the inputs
    ("resynthesis over its recording", "wavegen",
     "sample --ckpt {vocoder_ckpt} --mel-from {recording} --out {recording}",
     "--out {recording} is the --mel-from input {recording}: writing it would replace that input"),
    ("resyntheses over their folder", "wavegen", "sample --ckpt {vocoder_ckpt} --mel-from {recordings} --out {recordings}",
     "--out {recording} is the --mel-from input {recording}"),
    ("resyntheses into a folder above theirs", "wavegen",
     "sample --ckpt {vocoder_ckpt} --mel-from {recordings} --out {recordings}/..",
     "--out {recordings}/.. holds the --mel-from input {recording}: the outputs would replace or mix with the inputs"),
    ("export over its checkpoint", "pixelgen", "export --ckpt {model_st} --out {model_st}",
     "--out {model_st} is the --ckpt input {model_st}"),
    ("sample into the data it primes from", "pixelgen",
     "sample --ckpt {pixelcnn_ckpt} --prime-rows 3 --data-root {images} --out {images}/train/horizontal/new.png",
     "--out {images}/train/horizontal/new.png lies in the --data-root folder {images}"),
    # wrong shapes or channel counts
    ("1-channel data, 3-channel model", "pixelgen", "fit --config {pixelcnn} --data.channels 1",
     "set --model.init_args.image_shape [1, 8, 8]"),
    # labels and speakers out of range
    ("class label too large", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --class-label 2",
     "--class-label 2 is out of range: this model has 2 classes"),
    ("class label negative", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --class-label -1",
     "--class-label -1 is out of range"),
    ("speaker too large", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 2",
     "--speaker 2 is out of range: this model has 2 speakers"),
    # a prime longer than the sample
    ("prime rows = height", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --prime-rows 8",
     "--prime-rows must be between 1 and 7"),
    ("prime longer than clip", "wavegen", ("sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --prime {clip} "
                                          "--prime-seconds 0.2 --seconds 0.01"), "must be shorter than the clip"),
    # decoding options
    ("top-p 0", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --top-p 0", "--top-p must be in (0, 1]"),
    ("top-p nan", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --top-p nan",
     "--top-p must be in (0, 1]"),
    ("top-p above 1", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --top-p 1.5",
     "--top-p must be in (0, 1]"),
    ("temperature 0", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --temperature 0",
     "--temperature must be > 0, got 0.0 (use --greedy for"),
    ("temperature inf", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --temperature inf",
     "temperature must be finite, got inf"),
    ("temperature negative", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --temperature -1",
     "temperature must be > 0, got -1.0"),
    ("temperature denormal", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --temperature 1e-45",
     "--temperature must be at least 0.001, got 1e-45 (use --greedy for"),
    ("top-k 0", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --top-k 0", "--top-k must be >= 1"),
    # non-finite, absurd or out-of-range numbers
    ("batch size 0", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --batch-size 0",
     "--batch-size must be >= 1"),
    ("seconds nan", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --seconds nan", "--seconds must be a finite number > 0"),
    ("seconds inf", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --seconds inf", "--seconds must be a finite number > 0"),
    ("seconds -1", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --seconds -1", "--seconds must be a finite number > 0"),
    ("seconds below one sample", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --seconds 1e-6",
     "is shorter than one sample at 8000 Hz"),
    ("seconds beyond memory", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --seconds 1e15", "more than this machine's"),
    ("prime-seconds inf", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --prime {{clip}} --prime-seconds inf",
     "--prime-seconds must be a finite number > 0, got inf"),
    ("threads beyond the cores", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --threads 100000", "--threads must be >= 1"),
    ("seed too large", "pixelgen", f"{SAMPLE_PNG} {{keep_png}} --seed 18446744073709551616",
     "--seed must be in [0, 2**63)"),
    ("samples beyond memory", "pixelgen", f"{SAMPLE_PNG} {{keep_png}} --num-samples 100000000000",
     "more than this machine's"),
    ("batch_size 0", "pixelgen", "fit --config {pixelcnn} --data.batch_size 0", "--data.batch_size"),
    ("batch_size negative", "wavegen", "fit --config {wavenet} --data.batch_size -2", "--data.batch_size"),
    ("lr negative", "pixelgen", "fit --config {pixelcnn} --model.init_args.lr -1",
     "lr must be a finite number > 0"),
    ("lr 0", "wavegen", "fit --config {wavenet} --model.init_args.lr 0", "lr must be a finite number > 0"),
    ("lr nan", "pixelgen", "fit --config {pixelcnn} --model.init_args.lr nan",
     "--model.init_args.lr: expected a float, got nan"),
    ("lr inf", "wavegen", "fit --config {wavenet} --model.init_args.lr inf",
     "--model.init_args.lr: expected a float, got inf"),
    ("steps not a number", "wavegen", "fit --config {wavenet} --trainer.max_steps x",
     "--trainer.max_steps: expected an int, got x"),
    ("unknown option", "pixelgen", "test --config {pixelcnn} --model.init_args.nonsense 3",
     "--model.init_args: Option 'nonsense' is not accepted"),
    ("val_size 0", "pixelgen", "fit --config {pixelcnn} --data.val_size 0", "--data.val_size"),
    ("val_size negative", "pixelgen", "fit --config {pixelcnn} --data.val_size -5", "--data.val_size"),
    # output paths, checked before any work; nothing created when the command then fails
    ("out is a folder", "pixelgen", f"{SAMPLE_PNG} {{folder_png}}", "--out {folder_png} is a folder"),
    ("out under a file", "pixelgen", f"{SAMPLE_PNG} {{keep_png}}/x.png", "{keep_png} is a file, not a folder"),
    ("out read-only", "pixelgen", f"{SAMPLE_PNG} {{readonly}}/x.png", "cannot create files in {readonly}"),
    ("out is a folder", "wavegen", f"{SAMPLE_WAV} {{folder_wav}}", "--out {folder_wav} is a folder"),
    ("clip file over a folder", "wavegen", f"{SAMPLE_WAV} {{taken}}.wav --num-samples 2",
     "the clip file {taken}_1.wav would replace a folder"),
    ("out under a file", "wavegen", f"{SAMPLE_WAV} {{keep_wav}}/x.wav", "{keep_wav} is a file, not a folder"),
    ("out read-only", "wavegen", f"{SAMPLE_WAV} {{readonly}}/x.wav", "cannot create files in {readonly}"),
    ("real-images file over a folder", "pixelgen", f"{SAMPLE_PNG} {{taken}}.png --prime-rows 3",
     "--out {taken}_real.png is a folder"),
    ("bad ckpt, out in new folders", "pixelgen", "sample --ckpt {truncated} --out {out}/a/b/x.png",
     "is not a readable checkpoint"),
    # a checkpoint from another model or another palette
    ("wavegen ckpt", "pixelgen", "sample --ckpt {wavenet_ckpt} --out {out}.png",
     "holds a wavegen model (WaveNet); use `wavegen sample`"),
    ("pixelgen ckpt", "wavegen", "sample --ckpt {pixelcnn_ckpt} --out {out}.wav",
     "holds a pixelgen model (PixelCNN); use `pixelgen sample`"),
    ("PixelCNN ckpt, ImageGPT config", "pixelgen", "fit --config {igpt} --ckpt_path {pixelcnn_ckpt}",
     "holds a PixelCNN but the config builds an ImageGPT"),
    ("PixelCNN ckpt, other width", "pixelgen", ("fit --config {pixelcnn} --ckpt_path {pixelcnn_ckpt} "
                                               "--model.init_args.hidden 9"),
     "was trained with hidden=6, the config asks for hidden=9"),
    ("WaveNet ckpt resumed by pixelgen", "pixelgen", "fit --config {pixelcnn} --ckpt_path {wavenet_ckpt}",
     "holds a wavegen model (WaveNet); use `wavegen fit`"),
    ("WaveNet ckpt tested by pixelgen", "pixelgen", "test --config {pixelcnn} --ckpt_path {wavenet_ckpt}",
     "holds a wavegen model (WaveNet); use `wavegen test`"),
    ("PixelCNN ckpt predicted by wavegen", "wavegen", "predict --config {wavenet} --ckpt_path {pixelcnn_ckpt}",
     "holds a pixelgen model (PixelCNN); use `pixelgen predict`"),
    ("ImageGPT ckpt, other palette", "pixelgen", ("fit --config {igpt} --ckpt_path {igpt_ckpt} "
                                                 "--model.init_args.palette_size 8"), "palette_size=4"),
    # resuming on other data
    ("resume last, other binarisation", "pixelgen", "fit --config {pixelcnn_trained} --data.binarize threshold",
     "was trained with --data.binarize=None, the config asks for --data.binarize=threshold"),
    ("resume file, other bits", "pixelgen", "fit --config {pixelcnn} --ckpt_path {pixelcnn_ckpt} --data.bits 3",
     "was trained with --data.bits=4, the config asks for --data.bits=3"),
    ("resume file, other crops", "wavegen", ("fit --config {wavenet} --ckpt_path {wavenet_ckpt} "
                                            "--data.target_length 300"), "--data.target_length=200"),
    # scoring a model that was never trained
    ("test, no checkpoint yet", "pixelgen", "test --config {pixelcnn}",
     "ckpt_path: last found no checkpoint in {pixelcnn_dir}/run/checkpoints"),
    ("predict, no checkpoint yet", "pixelgen", ("predict --config {pixelcnn} "
                                               "--trainer.callbacks+=arcore.training.callbacks.LikelihoodWriter "
                                               "--trainer.callbacks.path {keep_csv}"), "found no checkpoint"),
    ("validate, no checkpoint yet", "wavegen", "validate --config {wavenet}", "found no checkpoint"),
    ("test, no ckpt_path", "pixelgen", "test --config {pixelcnn} --ckpt_path null", "scores a trained model"),
    ("test, ckpt_path best", "wavegen", "test --config {wavenet} --ckpt_path best", "best is known only inside"),
    # damaged, truncated, empty or folder checkpoints
    ("flipped bytes, sample", "pixelgen", "sample --ckpt {flipped} --out {keep_png}", "fails its CRC check"),
    ("flipped bytes, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {flipped}", "fails its CRC check"),
    ("flipped bytes, resume", "pixelgen", "fit --config {pixelcnn} --ckpt_path {flipped}", "fails its CRC check"),
    ("truncated, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {truncated}", "not a readable checkpoint"),
    ("empty, validate", "wavegen", "validate --config {wavenet} --ckpt_path {empty_ckpt}", "the file is empty"),
    ("folder, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {ckpt_folder}",
     "is a folder, not a checkpoint file"),
    ("folder, fit", "wavegen", "fit --config {wavenet} --ckpt_path {ckpt_folder}", "is a folder, not a checkpoint"),
    ("folder, sample", "pixelgen", "sample --ckpt {ckpt_folder} --out {keep_png}", "is a folder, not a checkpoint"),
    ("damaged last.ckpt, resume", "pixelgen", "fit --config {pixelcnn_damaged}", "fails its CRC check"),
    # malformed model classes
    ("model class: no such module", "pixelgen", "sample --ckpt {class_no_module} --out {keep_png}",
     "records the model class 'pixelgen.nowhere.PixelCNN', which pixelgen does not have"),
    ("model class: no such class", "pixelgen", "test --config {pixelcnn} --ckpt_path {class_no_class}",
     "'pixelgen.pixelcnn.Nothing', which pixelgen does not have"),
    ("model class: not a model", "pixelgen", "sample --ckpt {class_not_model} --out {keep_png}",
     "records 'pixelgen.data.ImageDataModule', which is not a pixelgen model class"),
    ("model class: not a string", "wavegen", "sample --ckpt {class_number} --out {keep_wav}",
     "records the model class 42, which is not a wavegen model"),
    ("model class: elsewhere", "pixelgen", "fit --config {pixelcnn} --ckpt_path {class_elsewhere}",
     "records the model class 'os.system', which is not a pixelgen model"),
    # invalid model settings
    ("even mask kernel", "pixelgen", "fit --config {pixelcnn} --model.init_args.kernel_size 4",
     "kernel_size must be odd and >= 3, got 4"),
    ("zero dilation", "wavegen", "fit --config {wavenet} --model.init_args.dilations [1,0]",
     "dilations must be positive integers, got [1, 0]"),
]
# fourth round: run names, trainer settings Lightning or numpy refuse late, remote checkpoints, sizes, configs
ROWS += [
    ("run name above runs/", "pixelgen", "fit --config {pixelcnn} --name ..",
     "--name .. is not a plain folder name: the run's folder is runs/NAME"),
    ("run name escaping runs/", "pixelgen", "fit --config {pixelcnn} --name ../../escaped",
     "--name ../../escaped is not a plain folder name"),
    ("run name absolute", "wavegen", "fit --config {wavenet} --name {out}", "is not a plain folder name"),
    ("run name with a backslash", "pixelgen", "test --config {pixelcnn} --name a\\b", "--name a\\b is not a plain"),
    ("seed beyond numpy's range", "pixelgen", "fit --config {pixelcnn} --seed_everything 18446744073709551616",
     "--seed_everything must be in [0, 2**32) (numpy's range), or true for a random seed, got 18446744073709551616"),
    ("seed negative", "wavegen", "fit --config {wavenet} --seed_everything -1",
     "--seed_everything must be in [0, 2**32)"),
    ("accumulate 0 batches", "pixelgen", "fit --config {pixelcnn} --trainer.accumulate_grad_batches 0",
     "--trainer.accumulate_grad_batches must be >= 1, got 0"),
    ("validate every 0 epochs", "pixelgen", "fit --config {pixelcnn} --trainer.check_val_every_n_epoch 0",
     "--trainer.check_val_every_n_epoch must be >= 1, got 0"),
    ("validate every 0 batches", "wavegen", "fit --config {wavenet} --trainer.val_check_interval 0",
     "--trainer.val_check_interval must be > 0"),
    ("validate after more batches than an epoch has", "pixelgen",
     "fit --config {pixelcnn} --trainer.val_check_interval 1000000 --trainer.check_val_every_n_epoch 1",
     "--trainer.val_check_interval (1000000) must be less than or equal to the number of the training batches (5)"),
    ("negative gradient clip", "pixelgen", "fit --config {pixelcnn} --trainer.gradient_clip_val -1",
     "--trainer.gradient_clip_val must be >= 0"),
    ("remote ckpt_path, unreachable", "pixelgen", "test --config {pixelcnn} --ckpt_path http://127.0.0.1:9/x.ckpt",
     "--ckpt_path http://127.0.0.1:9/x.ckpt is a remote address: checkpoints are read from local files only"),
    ("remote ckpt_path, resume", "wavegen", "fit --config {wavenet} --ckpt_path https://127.0.0.1:9/last.ckpt",
     "--ckpt_path https://127.0.0.1:9/last.ckpt is a remote address"),
    ("remote ckpt, sample", "pixelgen", "sample --ckpt http://127.0.0.1:9/x.ckpt --out {out}.png",
     "http://127.0.0.1:9/x.ckpt is a remote address"),
    ("remote ckpt, export", "wavegen", "export --ckpt s3://bucket/run/last.ckpt --out {out}.safetensors",
     "--ckpt s3://bucket/run/last.ckpt is a remote address"),
    ("crop length typo", "wavegen", "fit --config {wavenet} --data.target_length 1000000000",
     "--data.target_length 1000000000 with --data.batch_size 2: one batch's logits alone would take"),
    ("YAML alias bomb", "pixelgen", "fit --config {pixelcnn} --config {bomb}",
     "--config bomb.yaml expands, through its aliases (&name, *name), to more than 1,000,000 values"),
    ("YAML alias of itself", "wavegen", "validate --config {wavenet} --config {self_alias}",
     "--config self_alias.yaml refers to itself through an alias"),
    ("greedy with a temperature", "pixelgen", f"{SAMPLE_PNG} {{out}}.png --greedy --temperature 0.5",
     "--greedy takes the most likely code at each step, so --temperature 0.5 would have no effect"),
    ("greedy with top-k and top-p", "wavegen", f"{SAMPLE_WAV} {{keep_wav}} --greedy --top-k 5 --top-p 0.9",
     "--greedy takes the most likely code at each step, so --top-k 5 and --top-p 0.9 would have no effect"),
]
# a checkpoint whose pickle would create a marker file when loaded, through every command that reads checkpoints
EVIL = "is not a checkpoint this project can load safely: it asks for io.open"
ROWS += [(f"malicious {kind}{suffix or ' (no suffix)'}, sample", "pixelgen",
          f"sample --ckpt {{evil_{kind}{suffix.strip('.')}}} --out {{keep_png}}", EVIL)
         for kind in ("zip", "pickle") for suffix in EVIL_SUFFIXES]
ROWS += [(f"malicious, {command}", tool, f"{command} --config {{{config}}} --ckpt_path {{evil_zipckpt}}", EVIL)
         for tool, config in (("pixelgen", "pixelcnn"), ("wavegen", "wavenet"))
         for command in ("fit", "validate", "test", "predict")]
ROWS += [("malicious, wavegen sample", "wavegen", "sample --ckpt {evil_zippt} --out {keep_wav}", EVIL),
         ("malicious, prime-from", "pixelgen", "sample --ckpt {evil_zipckpt} --out {keep_png} --prime-rows 3", EVIL),
         ("malicious last.ckpt, resume", "pixelgen", "fit --config {pixelcnn_evil}", EVIL),
         ("malicious last.ckpt, test", "pixelgen", "test --config {pixelcnn_evil}", EVIL)]

# weights files (`export`): damaged, truncated, not safetensors, or naming a class outside the tool, through sample,
# test and export; a weights file where a training checkpoint is needed
ST_SHA = "do not match the SHA-256 recorded in it"
ROWS += [
    ("weights flipped bytes, sample", "pixelgen", "sample --ckpt {st_flipped} --out {keep_png}", ST_SHA),
    ("weights flipped bytes, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {st_flipped}", ST_SHA),
    ("weights truncated, sample", "pixelgen", "sample --ckpt {st_truncated} --out {keep_png}",
     "is cut short: its tensors need"),
    ("weights truncated, validate", "pixelgen", "validate --config {pixelcnn} --ckpt_path {st_truncated}",
     "is cut short"),
    ("weights header cut, wavegen sample", "wavegen", "sample --ckpt {st_header_cut} --out {keep_wav}",
     "is cut short: its header alone needs"),
    ("not safetensors, sample", "pixelgen", "sample --ckpt {st_garbage} --out {keep_png}",
     "is not a readable safetensors file: it does not start with a safetensors header"),
    ("not safetensors, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {st_garbage}",
     "is not a readable safetensors file"),
    ("empty safetensors, predict", "wavegen", "predict --config {wavenet} --ckpt_path {st_empty}",
     "is not a readable safetensors file (the file is empty)"),
    ("weights header not JSON, sample", "pixelgen", "sample --ckpt {st_bad_json} --out {keep_png}",
     "its safetensors header is not valid JSON"),
    ("weights tensor table, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {st_bad_dtype}",
     ST_SHA),  # the file's checksum covers the tensor table
    ("weights without checksum, sample", "pixelgen", "sample --ckpt {st_no_checksum} --out {keep_png}",
     "records no weights_sha256"),
    ("weights class elsewhere, sample", "pixelgen", "sample --ckpt {st_class_elsewhere} --out {keep_png}",
     "records the model class 'os.system', which is not a pixelgen model"),
    ("weights class elsewhere, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {st_class_elsewhere}",
     "records the model class 'os.system', which is not a pixelgen model"),
    ("weights class of the other tool, sample", "pixelgen", "sample --ckpt {st_class_wavegen} --out {keep_png}",
     "holds a wavegen model (WaveNet); use `wavegen sample`"),
    ("pixelgen weights, wavegen test", "wavegen", "test --config {wavenet} --ckpt_path {pixelcnn_st}",
     "holds a pixelgen model (PixelCNN); use `pixelgen test`"),
    ("weights file resumed", "pixelgen", "fit --config {pixelcnn} --ckpt_path {pixelcnn_st}",
     "is a weights file: it holds no optimiser or training state"),
    ("malicious .safetensors, test", "pixelgen", "test --config {pixelcnn} --ckpt_path {evil_picklesafetensors}",
     EVIL),
    ("record_metrics of a .ckpt", "pixelgen", ("test --config {pixelcnn} --ckpt_path {pixelcnn_ckpt} "
                                               "--record_metrics true"), "pass one as --ckpt_path"),
    ("record_metrics in fit", "pixelgen", "fit --config {pixelcnn} --record_metrics true",
     "--record_metrics applies to `test` only"),
    ("export, missing ckpt", "pixelgen", "export --ckpt {missing}/x.ckpt --out {out}.safetensors", "does not exist"),
    ("export, out not .safetensors", "pixelgen", "export --ckpt {pixelcnn_ckpt} --out {out}.ckpt",
     "--out must name a .safetensors file"),
    ("export, out is a folder", "wavegen", "export --ckpt {wavenet_ckpt} --out {st_folder}", "is a folder"),
    ("export, out under a file", "pixelgen", "export --ckpt {pixelcnn_ckpt} --out {keep_png}/x.safetensors",
     "is a file, not a folder"),
    ("export, malicious", "pixelgen", "export --ckpt {evil_zipckpt} --out {out}.safetensors", EVIL),
    ("export, damaged", "pixelgen", "export --ckpt {flipped} --out {out}/a/x.safetensors", "fails its CRC check"),
    ("export, a weights file", "pixelgen", "export --ckpt {pixelcnn_st} --out {out}.safetensors",
     "is already a weights file"),
    ("export, other tool", "wavegen", "export --ckpt {pixelcnn_ckpt} --out {out}.safetensors",
     "holds a pixelgen model (PixelCNN); use `pixelgen export`"),
]
DAMAGED_WEIGHTS = {"st_flipped": ST_SHA, "st_truncated": "is cut short", "st_header_cut": "is cut short",
                   "st_garbage": "is not a readable safetensors file", "st_bad_json": "is not valid JSON",
                   "st_bad_dtype": ST_SHA, "st_no_checksum": "no weights_sha256",
                   "st_class_elsewhere": "which is not a pixelgen model",
                   "st_class_wavegen": "holds a wavegen model (WaveNet); use wavegen.load",
                   "st_setting_edited": "its settings or tensors do not match the SHA-256 recorded in it",
                   "st_nan": "holds non-finite weights (1 NaN or inf values in",
                   "st_huge_settings": "its settings describe a larger model than the weights it holds",
                   "st_int32": "where its settings build float32",
                   "st_nested_setting": "its settings do not build a PixelCNN"}


class Payload:
    """Pickles as a call of ``open(marker, "w")``: loading it unsafely creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def save_evil(path: Path, marker: Path, kind: str) -> Path:
    """A checkpoint-looking file that runs ``Payload`` when unpickled: a torch zip archive or a bare pickle."""
    content = {"model_class": "pixelgen.pixelcnn.PixelCNN", "state_dict": {}, "payload": Payload(marker)}
    if kind == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    return path


def flip_weight_bytes(source: Path, target: Path, count: int = 400) -> Path:
    """A copy of ``source`` with up to ``count`` bytes inverted inside its largest tensor (its CRC no longer holds)."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26: member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length
    for i in range(start, start + min(count, member.file_size)):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def with_model_class(source: Path, target: Path, name: object) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["model_class"] = name
    torch.save(checkpoint, target)
    return target


def weights_variants(source: Path, folder: Path) -> dict[str, Path]:
    """Damaged and hostile copies of the weights file ``source`` (see :data:`DAMAGED_WEIGHTS`), and one whose
    settings name an instantiator and a class path that must be ignored (``st_instantiator``)."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    from arcore.files.weights import encode

    data = source.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    with safe_open(source, "pt") as f:
        metadata = f.metadata()
    tensors = load_tensors(data)
    flipped = bytearray(data)
    for i in range(header, min(header + 64, len(data))):
        flipped[i] ^= 0xFF
    bad_json = bytearray(data)
    bad_json[9] = ord("}")  # '{}...' : the JSON object ends at once, garbage follows
    hparams = json.loads(metadata["hyper_parameters"])
    contents = {
        "st_flipped": bytes(flipped), "st_truncated": data[: header + (len(data) - header) // 2],
        "st_header_cut": data[:40], "st_garbage": b"these bytes are not a safetensors file " * 8, "st_empty": b"",
        "st_bad_json": bytes(bad_json),
        "st_bad_dtype": data.replace(b'"dtype":"F32"', b'"dtype":"Q99"', 1),
        "st_no_checksum": save_tensors(tensors, metadata={k: v for k, v in metadata.items()
                                                          if k != "weights_sha256"}),
        "st_class_elsewhere": encode(tensors, {**metadata, "model_class": "os.system"}),
        "st_class_wavegen": encode(tensors, {**metadata, "model_class": "wavegen.wavenet.WaveNet"}),
        "st_instantiator": encode(tensors, {**metadata, "hyper_parameters": json.dumps(
            {**hparams, "_instantiator": "builtins.exec", "_class_path": "os.system"})}),
    }
    one_width = metadata["hyper_parameters"].replace('"hidden": 6', '"hidden": 7')
    assert one_width != metadata["hyper_parameters"]
    contents["st_setting_edited"] = data.replace(metadata["hyper_parameters"].replace('"', '\\"').encode(),
                                                 one_width.replace('"', '\\"').encode(), 1)  # checksums kept
    first = next(iter(tensors))
    contents["st_nan"] = encode({**tensors, first: tensors[first].clone().view(-1).index_fill(
        0, torch.tensor([0]), float("nan")).view_as(tensors[first])}, metadata)  # checksums recomputed
    contents["st_huge_settings"] = encode(tensors, {**metadata, "hyper_parameters": json.dumps(
        {**hparams, "layers": 100_000})})
    contents["st_int32"] = encode({**tensors, first: tensors[first].to(torch.int32)}, metadata)
    contents["st_nested_setting"] = encode(tensors, {**metadata, "hyper_parameters": json.dumps(
        {**hparams, "hidden": {"nested": {"json": [1, 2]}}})})
    assert contents["st_bad_dtype"] != data and contents["st_setting_edited"] != data
    paths = {}
    for key, content in contents.items():
        paths[key] = folder / f"{key}.safetensors"
        paths[key].write_bytes(content)
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data and real checkpoints, made once: a class-conditional PixelCNN, an ImageGPT with a 4-colour palette and
    a WaveNet for 2 speakers, each fitted for 2 steps on generated images or tones, and an untrained vocoder;
    damaged copies and checkpoints with malformed model classes."""
    root = tmp_path_factory.mktemp("built")
    images = make_folder_dataset(root / "images")
    audio = make_audio_folder(root / "audio")
    built = {"images": images, "audio": audio, "clip": audio / "0_alice_0.wav", "palettes": root / "palettes"}
    for name in ("pixelcnn", "igpt", "wavenet"):
        (root / name).mkdir()
    for name, main, config in (
            ("pixelcnn", pixelgen_main, pixelcnn_config(root / "pixelcnn", images)),
            ("igpt", pixelgen_main, igpt_config(root / "igpt", images, palette_cache=built["palettes"])),
            ("wavenet", wavegen_main, wavenet_config(root / "wavenet", audio, speakers=2))):
        assert main(["fit", "--config", str(config), "--trainer.max_steps", "2"]) == 0
        built[f"{name}_ckpt"] = config.parent / "run" / "checkpoints" / "last.ckpt"
    vocoder = WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                      n_mels=8, hop_length=40, cond_channels=4)
    built["vocoder_ckpt"] = untrained_checkpoint(vocoder, root / "vocoder.ckpt")
    pixelcnn = built["pixelcnn_ckpt"]
    built["flipped"] = flip_weight_bytes(pixelcnn, root / "flipped.ckpt")
    built["truncated"] = root / "truncated.ckpt"
    built["truncated"].write_bytes(pixelcnn.read_bytes()[: pixelcnn.stat().st_size // 2])
    built["empty_ckpt"] = root / "empty.ckpt"
    built["empty_ckpt"].touch()
    built["ckpt_folder"] = root / "folder.ckpt"
    built["ckpt_folder"].mkdir()
    for key, name in (("class_no_module", "pixelgen.nowhere.PixelCNN"), ("class_no_class", "pixelgen.pixelcnn.Nothing"),
                      ("class_not_model", "pixelgen.data.ImageDataModule"), ("class_number", 42),
                      ("class_elsewhere", "os.system")):
        built[key] = with_model_class(pixelcnn, root / f"{key}.ckpt", name)
    built["pixelcnn_st"] = root / "pixelcnn.safetensors"
    assert pixelgen_main(["export", "--ckpt", str(pixelcnn), "--out", str(built["pixelcnn_st"])]) == 0
    built.update(weights_variants(built["pixelcnn_st"], root))
    built["st_folder"] = root / "folder.safetensors"
    built["st_folder"].mkdir()
    return built


def tree(folder: Path) -> dict[Path, str | None]:
    """Every file (with a hash of its bytes) and folder (None) under ``folder``."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in folder.rglob("*")}


@pytest.fixture
def paths(built: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """This row's placeholders: fresh configs (their run folders under ``tmp_path``, one with a trained, one with a
    damaged and one with a malicious last.ckpt), garbage files, malicious checkpoints, good output files that must
    survive, a missing folder, a read-only one, the output's stem."""
    for folder in ("pixelcnn", "igpt", "wavenet", "garbage_images/train/a", "garbage_images/test/a",
                   "garbage_audio", "taken_real.png", "taken_1.wav", "folder.png", "folder.wav"):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(3):
        (tmp_path / "garbage_images" / "train" / "a" / f"{i}.png").write_bytes(bytes(range(i, 200)))
        (tmp_path / "garbage_audio" / f"{i}.wav").write_bytes(b"RIFF" + bytes(range(i, 100)))
    (tmp_path / "garbage_images" / "test" / "a" / "0.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bomb, self_alias = tmp_path / "bomb.yaml", tmp_path / "self_alias.yaml"
    bomb.write_text("\n".join(['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 7)]) + "\n")  # 9**7 strings
    self_alias.write_text("trainer: &trainer {max_steps: 3, callbacks: [*trainer]}\n")
    garbage_wav = tmp_path / "garbage.wav"
    garbage_wav.write_bytes(b"\x00\x01garbage" * 50)
    short_wav = tmp_path / "short.wav"
    import soundfile

    soundfile.write(short_wav, tone(440.0, 60 / 8000, 8000), 8000)
    keep = {}
    for suffix, content in (("png", b"\x89PNG an earlier picture"), ("wav", b"RIFF an earlier clip"),
                            ("csv", b"index,nll_nats,bits_per_dim\n0,1.0,1.0\n")):
        keep[f"keep_{suffix}"] = tmp_path / f"keep.{suffix}"
        keep[f"keep_{suffix}"].write_bytes(content)
    evil = {f"evil_{kind}{suffix.strip('.')}": save_evil(tmp_path / f"evil_{kind}{suffix}", tmp_path / "MARKER", kind)
            for kind in ("zip", "pickle") for suffix in EVIL_SUFFIXES}
    configs = {"pixelcnn": pixelcnn_config(tmp_path / "pixelcnn", built["images"]),
               "igpt": igpt_config(tmp_path / "igpt", built["images"], palette_cache=built["palettes"]),
               "wavenet": wavenet_config(tmp_path / "wavenet", built["audio"], speakers=2)}
    for name, last in (("trained", built["pixelcnn_ckpt"]), ("damaged", built["flipped"]),
                       ("evil", evil["evil_zipckpt"])):
        run = tmp_path / f"pixelcnn_{name}"
        (run / "run" / "checkpoints").mkdir(parents=True)
        shutil.copy(last, run / "run" / "checkpoints" / "last.ckpt")
        configs[f"pixelcnn_{name}"] = pixelcnn_config(run, built["images"])
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    shutil.copy(built["clip"], recordings / "clip.wav")
    (recordings / "deep").mkdir()
    shutil.copy(built["clip"], recordings / "deep" / "take.wav")
    shutil.copy(built["pixelcnn_st"], tmp_path / "model.safetensors")
    shutil.copytree(built["images"], tmp_path / "odd_classes")
    (tmp_path / "odd_classes" / "test" / "diagonal").mkdir()
    shutil.copy(tmp_path / "odd_classes" / "test" / "vertical" / "0.png", tmp_path / "odd_classes" / "test" /
                "diagonal" / "0.png")
    readonly = Path("/sys")  # root writes through file modes; sysfs refuses new files even to root
    if os.geteuid() != 0:
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
    return {**built, **keep, **evil, **configs, "missing": tmp_path / "missing", "out": tmp_path / "out", "taken": tmp_path / "taken",
            "garbage_wav": garbage_wav, "short_wav": short_wav, "garbage_images": tmp_path / "garbage_images",
            "bomb": bomb, "self_alias": self_alias,
            "garbage_audio": tmp_path / "garbage_audio", "folder_png": tmp_path / "folder.png",
            "folder_wav": tmp_path / "folder.wav", "readonly": readonly, "pixelcnn_dir": tmp_path / "pixelcnn",
            "recordings": recordings, "recording": recordings / "clip.wav", "model_st": tmp_path / "model.safetensors",
            "odd_classes": tmp_path / "odd_classes"}


@pytest.mark.parametrize(("tool", "argv", "expect"), [row[1:] for row in ROWS],
                         ids=[f"{row[1]}: {row[0]}" for row in ROWS])
def test_bad_input_is_one_error_line_and_writes_nothing(tool, argv, expect, paths, tmp_path, capfd):
    before = tree(tmp_path)
    capfd.readouterr()
    status = MAINS[tool]([arg.format(**paths) for arg in argv.split()])
    err = capfd.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert expect.format(**paths) in errors[0]
    after = tree(tmp_path)
    assert sorted(map(str, after.keys() - before.keys())) == [], "written despite the error"
    assert [str(p) for p in before if after.get(p, "gone") != before[p]] == [], "changed despite the error"
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("kind", ["zip", "pickle"])
def test_the_python_loader_refuses_malicious_checkpoints_without_running_them(kind, tmp_path):
    marker = tmp_path / "MARKER"
    for suffix in EVIL_SUFFIXES:
        path = save_evil(tmp_path / f"evil{suffix}", marker, kind)
        with pytest.raises(UsageError, match=f"{path} {EVIL}"):
            load_checkpoint(path, "pixelgen")
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(Payload(marker))) and marker.exists()  # the payload is real: unsafe load runs it


@pytest.mark.parametrize("key", sorted(DAMAGED_WEIGHTS))
def test_the_python_load_refuses_damaged_or_hostile_weights_files_in_one_line(key, built):
    with pytest.raises(UsageError, match=re.escape(DAMAGED_WEIGHTS[key])) as refused:
        pixelgen.load(built[key])
    assert "\n" not in str(refused.value)


def test_settings_in_a_weights_file_cannot_name_what_to_run(built):
    """An ``_instantiator`` or ``_class_path`` in the recorded settings is ignored: the model class is the one the
    metadata names, checked, and its settings are plain JSON values."""
    model = pixelgen.load(built["st_instantiator"])
    assert type(model) is pixelgen.PixelCNN
    expected = pixelgen.load(built["pixelcnn_st"]).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_weights_file_whose_header_size_starts_like_a_pickle_is_read_as_weights():
    """A safetensors header of 0x0b80 bytes starts with the byte 0x80, a pickle's first opcode: still weights."""
    from arcore.files.weights import is_weights_file

    header = b'{"a":' + b" " * (0x0B80 - 7) + b"1}"
    data = (0x0B80).to_bytes(8, "little") + header
    assert data[:1] == b"\x80" and is_weights_file(data, "renamed.ckpt")
    assert not is_weights_file(b"\x80\x04" + b"pickled" * 4, "model.ckpt")  # a real pickle stays a checkpoint
