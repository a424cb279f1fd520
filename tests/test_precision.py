"""bfloat16 mixed precision: every model's likelihood stays float32 under autocast, and a bf16-mixed fit of every
model runs end to end (CPU here; the same code path on a GPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from arcore.training.module import AutoregressiveModule
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
        assert model(codes, cond).dtype == torch.bfloat16  # the network itself does run in bf16
        log_prob = model.log_prob(codes, cond)
    assert log_prob.dtype == torch.float32  # log-softmax and the sum over hundreds of codes in float32
    torch.testing.assert_close(log_prob, reference, rtol=2e-3, atol=0.0)


@pytest.mark.parametrize("name", ["pixelcnn", "igpt", "wavenet"])
def test_bf16_mixed_fit_runs(name, tmp_path):
    if name == "wavenet":
        config, main = wavenet_config(tmp_path, make_audio_folder(tmp_path / "audio")), wavegen
    elif name == "igpt":
        data = make_folder_dataset(tmp_path / "images")
        config, main = igpt_config(tmp_path, data, palette_cache=tmp_path / "palettes"), pixelgen
    else:
        config, main = pixelcnn_config(tmp_path, make_folder_dataset(tmp_path / "images")), pixelgen
    assert main(["fit", "--config", str(config), "--trainer.precision", "bf16-mixed"]) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4
    weights = [value for value in checkpoint["state_dict"].values() if value.is_floating_point()]
    assert all(w.dtype == torch.float32 and bool(w.isfinite().all()) for w in weights)  # float32 master weights
