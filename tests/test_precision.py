"""bfloat16 mixed precision: every model's likelihood stays float32 under autocast, and a bf16-mixed fit of every
model runs end to end (CPU here; the same code path on a GPU)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl
import torch

from arcore.files.checkpoint import read_checkpoint
from arcore.training.module import AutoregressiveModule
from arcore.training.precision import FORCE, choose_precision, native_bf16
from pixelgen.cli import main as pixelgen
from tests.test_audio_data import make_audio_folder
from tests.test_igpt import tiny as tiny_igpt
from tests.test_pixelcnn import tiny as tiny_pixelcnn
from tests.test_pixelgen_cli import make_folder_dataset
from tests.test_pixelgen_cli import tiny_config as pixelcnn_config
from tests.test_wavegen_cli import tiny_config as wavenet_config
from tests.test_wavenet import conditioned as conditioned_wavenet
from tests.tiny_configs import igpt_config
from wavegen.cli import main as wavegen


def model_and_batch(name: str) -> tuple[AutoregressiveModule, torch.Tensor, Any]:
    """A float32 model of the kind ``name`` with random weights, 4 random samples' codes and their conditioning
    (class labels; a speaker and log-mel frames for WaveNet)."""
    length = None
    if name == "wavenet":
        length = 300
        model, cond = conditioned_wavenet(length, 4)
        cond.mel = cond.mel.float()
    elif name == "igpt":
        model, cond = tiny_igpt((3, 8, 8), palette_size=16, num_labels=2), torch.arange(4) % 2
    else:
        model, cond = tiny_pixelcnn((3, 8, 8), levels=16, num_labels=2), torch.arange(4) % 2
    codes = torch.randint(0, model.num_classes, (4, *model.event_shape_for(length)),
                          generator=torch.Generator().manual_seed(0))
    return model.float(), codes, cond


@pytest.mark.parametrize("name", ["pixelcnn", "igpt", "wavenet"])
def test_log_prob_under_bf16_autocast_is_float32_and_close(name):
    model, codes, cond = model_and_batch(name)
    reference = model.log_prob(codes, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(codes, cond).dtype == torch.float32  # the last layer computes in float32 (float32_output)
        log_prob = model.log_prob(codes, cond)
    assert log_prob.dtype == torch.float32  # log-softmax and the sum over hundreds of codes in float32
    assert not torch.equal(log_prob, reference)  # the network itself did run in bf16
    torch.testing.assert_close(log_prob, reference, rtol=2e-3, atol=0.0)


@pytest.mark.parametrize("name", ["pixelcnn", "wavenet"])
def test_scoring_inside_bf16_autocast_is_exactly_float32(name):
    """Validation (as fit runs it, inside the bf16 step context) gives the float32 figure to the last bit."""
    model, codes, cond = model_and_batch(name)
    reference = model.log_prob(codes, cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with model.scoring():
            scored = model.log_prob(codes, cond)
        if name == "pixelcnn":  # the validation step itself (labels are the conditioning of this model)
            loss = model.validation_step((codes, cond), 0)
            assert torch.equal(loss, -reference.mean() / model.dims(codes))
    assert torch.equal(scored, reference)


@pytest.mark.parametrize(("forced", "expected"), [("1", "bf16-mixed"), ("0", "32-true")])
def test_precision_follows_the_hardware_unless_given(forced, expected, monkeypatch):
    monkeypatch.setenv(FORCE, forced)
    precision, why = choose_precision(None, "cpu")
    assert precision == expected and FORCE in why
    assert choose_precision("16-mixed", "cpu") == ("16-mixed", "--trainer.precision")  # an explicit choice wins


def test_this_machine_check_matches_its_cpu_flags(monkeypatch):
    """Without the override the answer is the CPU's own: AVX-512 BF16 or AMX in its flags."""
    monkeypatch.delenv(FORCE, raising=False)
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this platform")
    assert native_bf16("cpu")[0] == ("avx512_bf16" in flags or "amx_bf16" in flags)


def trained_weights(tmp_path, forced: str, monkeypatch, capsys) -> tuple[dict[str, torch.Tensor], str]:
    """The weights after a tiny PixelCNN fit whose precision the (forced) hardware check chose, and its output."""
    monkeypatch.setenv(FORCE, forced)
    run = tmp_path / forced
    run.mkdir()
    config = pixelcnn_config(run, make_folder_dataset(run / "images"))
    assert pixelgen(["fit", "--config", str(config), "--threads", "1"]) == 0
    checkpoint = torch.load(run / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    return checkpoint["state_dict"], capsys.readouterr().out


def test_fit_trains_in_the_precision_it_announces(tmp_path, monkeypatch, capsys):
    bf16, said_bf16 = trained_weights(tmp_path, "1", monkeypatch, capsys)
    fp32, said_fp32 = trained_weights(tmp_path, "0", monkeypatch, capsys)
    assert "training precision bf16-mixed" in said_bf16 and "training precision 32-true" in said_fp32
    assert all(value.dtype == torch.float32 for value in bf16.values() if value.is_floating_point())  # masters
    differs = [name for name in fp32 if fp32[name].is_floating_point() and not torch.equal(fp32[name], bf16[name])]
    assert differs  # the bf16 run really computed in bf16 ...
    for name in differs:  # ... and learnt the same thing to bf16's precision
        torch.testing.assert_close(bf16[name], fp32[name], rtol=0.05, atol=0.02)


class ActivePrecision(pl.Callback):
    """Records the precision the model's forward pass runs in during training steps, as autocast has it (a callback
    a config names: ``--trainer.callbacks+=tests.test_precision.ActivePrecision``)."""

    seen: ClassVar[set[torch.dtype]] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.register_forward_pre_hook(self._record)

    def _record(self, module: torch.nn.Module, inputs: Any) -> None:
        if module.training:
            on = torch.is_autocast_enabled("cpu")
            ActivePrecision.seen.add(torch.get_autocast_dtype("cpu") if on else torch.float32)


@pytest.mark.parametrize("name", ["pixelcnn", "igpt", "wavenet"])
def test_bf16_mixed_fit_trains_in_bf16(name, tmp_path):
    if name == "wavenet":
        config, main = wavenet_config(tmp_path, make_audio_folder(tmp_path / "audio")), wavegen
    elif name == "igpt":
        data = make_folder_dataset(tmp_path / "images")
        config, main = igpt_config(tmp_path, data, palette_cache=tmp_path / "palettes"), pixelgen
    else:
        config, main = pixelcnn_config(tmp_path, make_folder_dataset(tmp_path / "images")), pixelgen
    ActivePrecision.seen.clear()
    assert main(["fit", "--config", str(config), "--trainer.precision", "bf16-mixed",
                 "--trainer.callbacks+=tests.test_precision.ActivePrecision"]) == 0
    assert ActivePrecision.seen == {torch.bfloat16}  # the training steps computed in bf16 ...
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 4
    weights = [value for value in checkpoint["state_dict"].values() if value.is_floating_point()]
    assert all(w.dtype == torch.float32 and bool(w.isfinite().all()) for w in weights)  # ... on float32 masters
    ActivePrecision.seen.clear()
    assert main(["fit", "--config", str(config), "--trainer.precision", "32-true", "--trainer.max_steps", "6",
                 "--trainer.callbacks+=tests.test_precision.ActivePrecision"]) == 0
    assert ActivePrecision.seen == {torch.float32}  # and a float32 run in float32 alone
