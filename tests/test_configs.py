"""The shipped configs: each gives only what differs from ``arcore/cli/base.yaml``, names its run once, and
composes over the base into the trainer, logger, checkpoints and callbacks a run needs."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml
from jsonargparse import dict_to_namespace

from arcore.cli.run_folder import apply_run_name, checkpoint_folders
from arcore.cli.runs import BASE_CONFIG
from pixelgen.cli import main as pixelgen
from wavegen.cli import main as wavegen

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "lightning_configs").glob("*.yaml")
                 if p != BASE_CONFIG)
SHARED = ["pytorch_lightning.callbacks.LearningRateMonitor", "arcore.training.callbacks.NonFiniteGuard",
          "arcore.training.callbacks.LikelihoodWriter", "pytorch_lightning.callbacks.ModelCheckpoint"]


def composed(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """The config ``fit`` would run with (``--print_config``), as data."""
    main = wavegen if config.stem.startswith("wavenet") else pixelgen
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), *args, "--print_config"])
    assert done.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_every_config_the_documentation_names_is_checked():
    root = Path(__file__).resolve().parents[1]
    text = "".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    named = set(re.findall(r"lightning_configs/(\w+)\.yaml", text)) - {BASE_CONFIG.stem}
    assert BASE_CONFIG.is_file() and named and named <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_a_run_config_holds_only_what_differs_and_its_name_once(config):
    text = config.read_text()
    settings = yaml.safe_load(text)
    assert settings["name"] == config.stem
    trainer = settings["trainer"]
    assert not {"logger", "callbacks", "default_root_dir", "accelerator", "gradient_clip_val"} & trainer.keys()
    own = [c["class_path"] for c in trainer["callbacks+"]]
    assert not set(own) & set(SHARED)
    assert f"runs/{config.stem}" not in text.split("\nname:")[1]  # the folder comes from the name, not repeated


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_a_run_config_composes_over_the_base(config, capsys):
    tool = "wavegen" if config.stem.startswith("wavenet") else "pixelgen"
    own = [c["class_path"] for c in yaml.safe_load(config.read_text())["trainer"]["callbacks+"]]
    settings = composed(config, capsys)
    trainer = settings["trainer"]
    assert [c["class_path"] for c in trainer["callbacks"]] == SHARED + own  # the base's, then the run's, in order
    assert trainer["gradient_clip_val"] == 1.0 and settings["ckpt_path"] == "last"
    assert trainer["logger"]["class_path"].endswith("WandbLogger")
    assert trainer["max_epochs"] == yaml.safe_load(config.read_text())["trainer"]["max_epochs"]

    resolved = dict_to_namespace(settings)
    apply_run_name(resolved, tool)
    run = f"runs/{config.stem}"
    assert resolved.trainer.default_root_dir == run
    logger = resolved.trainer.logger.init_args
    assert (logger.save_dir, logger.name, logger.project) == (run, config.stem, tool)
    assert checkpoint_folders(resolved) == [Path(run, "checkpoints")]


def test_the_name_is_given_once_for_a_new_run_and_explicit_settings_win(capsys):
    config = next(p for p in CONFIGS if p.stem == "pixelcnn_mnist")
    resolved = dict_to_namespace(composed(config, capsys, "--name", "mine", "--trainer.logger.init_args.project",
                                          "elsewhere"))
    apply_run_name(resolved, "pixelgen")
    assert resolved.trainer.default_root_dir == "runs/mine"
    assert (resolved.trainer.logger.init_args.name, resolved.trainer.logger.init_args.project) == ("mine",
                                                                                                   "elsewhere")
    assert checkpoint_folders(resolved) == [Path("runs/mine/checkpoints")]


def test_a_run_command_without_the_base_config_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("arcore.cli.runs.BASE_CONFIG", tmp_path / "base.yaml")
    assert pixelgen(["fit", "--config", str(CONFIGS[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "base.yaml is missing" in err and "pip install -e ." in err


def test_a_config_naming_the_callbacks_by_their_old_paths_still_runs(tmp_path, capsys):
    """Configs written before arcore was laid out by job name ``arcore.callbacks.EMA``: the same classes."""
    shipped = next(p for p in CONFIGS if p.stem == "pixelcnn_mnist")
    old = tmp_path / "old.yaml"
    old.write_text(shipped.read_text().replace("arcore.training.callbacks.", "arcore.callbacks."))
    assert "arcore.callbacks.SampleLogger" in old.read_text() and "arcore.callbacks.EMA" in old.read_text()
    callbacks = composed(old, capsys)["trainer"]["callbacks"]
    from arcore.training.callbacks import EMA, SampleLogger

    named = {c["class_path"].rsplit(".", 1)[-1]: c["class_path"] for c in callbacks}
    for cls in (EMA, SampleLogger):
        module, _, name = named[cls.__name__].rpartition(".")
        assert getattr(importlib.import_module(module), name) is cls
