"""scripts/make_figures.py: the README's figures from the runs' checkpoints, reproducibly; missing runs skipped."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from PIL import Image

from pixelgen.cli import main as pixelgen
from tests.test_pixelgen_cli import make_folder_dataset, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def make_figures_main():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "scripts" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_figures_of_the_runs_present_and_a_note_for_the_others(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data" / "cifar10-subset", per_class=48)  # 32 test images
    assert pixelgen(["fit", "--config", str(tiny_config(tmp_path, data)), "--trainer.max_steps", "2"]) == 0
    run = tmp_path / "runs" / "pixelcnn_cifar10" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(tmp_path / "run" / "checkpoints" / "last.ckpt", run)
    main = make_figures_main()
    args = ["--data-root", str(tmp_path / "data"), "--runs", str(tmp_path / "runs")]
    assert main([*args, "--out", str(tmp_path / "docs")]) == 0
    out = capsys.readouterr().out
    for missing in ("pixelcnn_mnist", "igpt_mnist", "wavenet_speech", "wavenet_vocoder"):
        assert f"skipped {missing}: no checkpoint at" in out
    figures = ["pixelcnn_cifar10_samples.png", "pixelcnn_cifar10_completions.png",
               "pixelcnn_cifar10_completions_real.png"]
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == sorted(figures)
    assert Image.open(tmp_path / "docs" / figures[0]).size == (8 * 10 + 2, 8 * 10 + 2)  # 64 images of 8x8
    assert main([*args, "--out", str(tmp_path / "again")]) == 0  # fixed seeds: the same pictures
    for name in figures:
        assert (tmp_path / "docs" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
