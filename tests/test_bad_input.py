"""Bad input to `pixelgen` and `wavegen`, one table: every row must end in one `<tool>: error:` line naming the
problem, a non-zero exit status, no traceback, and nothing written (no output file, no checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelgen.cli import main as pixelgen_main
from tests.test_audio_data import make_audio_folder
from tests.test_pixelgen_cli import make_folder_dataset
from tests.test_pixelgen_cli import tiny_config as pixelcnn_config
from tests.test_wavegen_cli import tiny_config as wavenet_config
from tests.tiny_configs import igpt_config
from wavegen.cli import main as wavegen_main

MAINS = {"pixelgen": pixelgen_main, "wavegen": wavegen_main}

# (row id, tool, argv with {placeholders} filled from the `paths` fixture, a distinctive part of the error)
ROWS = [
    # unknown paths
    ("missing ckpt", "pixelgen", "sample --ckpt {missing}/last.ckpt --out {out}.png", "does not exist"),
    ("missing data root", "pixelgen", "fit --config {pixelcnn} --data.root {missing}",
     "{missing}/train does not exist: the folder dataset needs train/ and test/ under --data.root"),
    ("missing prime data", "pixelgen", ("sample --ckpt {pixelcnn_ckpt} --out {out}.png --prime-rows 3 "
                                      "--data-root {missing}"), "the folder dataset needs train/ and test/"),
    ("missing ckpt", "wavegen", "sample --ckpt {missing}/last.ckpt --out {out}.wav", "does not exist"),
    ("missing data root", "wavegen", "fit --config {wavenet} --data.root {missing}", "is not a folder of audio"),
    ("missing prime", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --prime {missing}/a.wav",
     "--prime {missing}/a.wav does not exist"),
    ("missing mel-from", "wavegen", ("sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 "
                                    "--mel-from {missing}/a.wav"), "--mel-from {missing}/a.wav does not exist"),
    # unreadable images and audio
    ("garbage images", "pixelgen", "fit --config {pixelcnn} --data.root {garbage_images}", "no readable images"),
    ("garbage audio folder", "wavegen", "fit --config {wavenet} --data.root {garbage_audio}", "no usable audio"),
    ("garbage prime", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --prime {garbage_wav}",
     "{garbage_wav}: not readable audio (LibsndfileError)"),
    ("garbage mel-from", "wavegen", ("sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 "
                                    "--mel-from {garbage_wav}"), "{garbage_wav}: not readable audio (LibsndfileError)"),
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
    ("top-p 0", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --top-p 0", "top_p must be in (0, 1]"),
    ("top-p above 1", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --top-p 1.5",
     "top_p must be in (0, 1]"),
    ("temperature 0", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --temperature 0",
     "temperature must be > 0, got 0.0 (use --greedy"),
    ("temperature negative", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --temperature -1",
     "temperature must be > 0, got -1.0"),
    ("top-k 0", "pixelgen", "sample --ckpt {pixelcnn_ckpt} --out {out}.png --top-k 0", "top_k must be >= 1"),
    ("batch size 0", "wavegen", "sample --ckpt {wavenet_ckpt} --out {out}.wav --speaker 0 --batch-size 0",
     "--batch-size must be >= 1"),
    # a checkpoint from another model or another palette
    ("wavegen ckpt", "pixelgen", "sample --ckpt {wavenet_ckpt} --out {out}.png",
     "holds a wavegen model (WaveNet); use `wavegen sample`"),
    ("pixelgen ckpt", "wavegen", "sample --ckpt {pixelcnn_ckpt} --out {out}.wav",
     "holds a pixelgen model (PixelCNN); use `pixelgen sample`"),
    ("PixelCNN ckpt, ImageGPT config", "pixelgen", "fit --config {igpt} --ckpt_path {pixelcnn_ckpt}",
     "holds a PixelCNN but the config builds an ImageGPT"),
    ("PixelCNN ckpt, other width", "pixelgen", ("fit --config {pixelcnn} --ckpt_path {pixelcnn_ckpt} "
                                               "--model.init_args.hidden 9"), "hidden=6, the config hidden=9"),
    ("WaveNet ckpt resumed by pixelgen", "pixelgen", "fit --config {pixelcnn} --ckpt_path {wavenet_ckpt}",
     "holds a WaveNet but the config builds a PixelCNN"),
    ("ImageGPT ckpt, other palette", "pixelgen", ("fit --config {igpt} --ckpt_path {igpt_ckpt} "
                                                 "--model.init_args.palette_size 8"), "palette_size=4"),
    # invalid model settings
    ("even mask kernel", "pixelgen", "fit --config {pixelcnn} --model.init_args.kernel_size 4",
     "kernel_size must be odd and >= 3, got 4"),
    ("zero dilation", "wavegen", "fit --config {wavenet} --model.init_args.dilations [1,0]",
     "dilations must be positive integers, got [1, 0]"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data and real checkpoints, made once: a class-conditional PixelCNN, an ImageGPT with a 4-colour palette and
    a WaveNet for 2 speakers, each fitted for 2 steps on generated images or tones."""
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
    return built


@pytest.fixture
def paths(built: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """This row's placeholders: fresh configs (their run folders under ``tmp_path``), garbage files, a missing
    folder, the output's stem."""
    for folder in ("pixelcnn", "igpt", "wavenet", "garbage_images/train/a", "garbage_images/test/a",
                   "garbage_audio"):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(3):
        (tmp_path / "garbage_images" / "train" / "a" / f"{i}.png").write_bytes(bytes(range(i, 200)))
        (tmp_path / "garbage_audio" / f"{i}.wav").write_bytes(b"RIFF" + bytes(range(i, 100)))
    (tmp_path / "garbage_images" / "test" / "a" / "0.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    garbage_wav = tmp_path / "garbage.wav"
    garbage_wav.write_bytes(b"\x00\x01garbage" * 50)
    return {**built, "missing": tmp_path / "missing", "out": tmp_path / "out", "garbage_wav": garbage_wav,
            "garbage_images": tmp_path / "garbage_images", "garbage_audio": tmp_path / "garbage_audio",
            "pixelcnn": pixelcnn_config(tmp_path / "pixelcnn", built["images"]),
            "igpt": igpt_config(tmp_path / "igpt", built["images"], palette_cache=built["palettes"]),
            "wavenet": wavenet_config(tmp_path / "wavenet", built["audio"], speakers=2)}


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("tool", "argv", "expect"), [row[1:] for row in ROWS],
                         ids=[f"{row[1]}: {row[0]}" for row in ROWS])
def test_bad_input_is_one_error_line_and_writes_nothing(tool, argv, expect, paths, tmp_path, capfd):
    before = files_under(tmp_path)
    capfd.readouterr()
    status = MAINS[tool]([arg.format(**paths) for arg in argv.split()])
    err = capfd.readouterr().err
    assert status != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert expect.format(**paths) in errors[0]
    # LightningCLI copies the config into the run folder when fit starts, before the model checks the data
    written = {p for p in files_under(tmp_path) - before if p.name != "config.yaml"}
    assert not written, f"written despite the error: {sorted(map(str, written))}"
    assert not list(tmp_path.rglob("checkpoints"))
