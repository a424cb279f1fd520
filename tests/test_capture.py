"""The step contract: captured pieces replay at every position, prefill equals stepping, and a model that writes
only ``forward`` samples, trains and logs samples through the default cache-free step."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from arcore.files.media import Images, image_grid
from arcore.sampling.engine import stepper
from arcore.training.callbacks import SampleLogger
from arcore.training.module import AutoregressiveModule
from pixelgen.cli import main as pixelgen_main
from pixelgen.igpt import ImageGPT
from pixelgen.pixelcnn import PixelCNN
from tests.contract import (
    brute_force_log_prob,
    causality_violations,
    randomise,
    sample_both_ways,
    step_logit_error,
)
from tests.tiny_configs import untrained_checkpoint
from wavegen.wavenet import AudioCond, WaveNet


def pixelcnn(side: int) -> tuple[PixelCNN, dict]:
    model = PixelCNN(image_shape=(3, side, side), levels=4, hidden=6, layers=2, kernel_size=3, head=6, num_labels=2)
    return randomise(model.double(), std=0.5), {"cond": torch.tensor([1, 0])}


def igpt(side: int) -> tuple[ImageGPT, dict]:
    model = ImageGPT(image_shape=(1, side, side), palette_size=8, width=16, layers=2, heads=2, num_labels=2)
    model.palette_fitted.fill_(True)
    return randomise(model.double(), std=0.3), {"cond": torch.tensor([1, 0])}


def wavenet(length: int) -> tuple[WaveNet, dict]:
    model = WaveNet(dilations=[1, 2, 4], kernel_size=2, residual_channels=6, gate_channels=8, skip_channels=6,
                    head_channels=6, quantization=16, num_labels=2, n_mels=3, hop_length=10, cond_channels=4)
    mel = torch.randn(2, 3, -(-length // 10), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return randomise(model.double(), std=0.4), {"cond": AudioCond(torch.tensor([1, 0]), mel), "length": length}


MODELS = {"pixelcnn": (pixelcnn, 4, 8), "igpt": (igpt, 6, 12), "wavenet": (wavenet, 200, 400)}
PIECES = {"pixelcnn": 2, "igpt": 4, "wavenet": 1}  # row + step; one per attention span; one step


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them through AOT autograd's
    functionalisation (what inductor sees), without inductor's minutes of code generation."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list) -> object:
        self.graphs += 1
        return torch._dynamo.lookup_backend("aot_eager")(graph, inputs)


@pytest.mark.parametrize("name", MODELS)
def test_compiled_pieces_are_one_graph_each_whatever_the_size_and_sample_as_eager(name, monkeypatch):
    monkeypatch.setenv("PIXELGEN_FUSED", "0")
    build, small, large = MODELS[name]
    for size in (small, large):
        model, kwargs = build(size)
        torch._dynamo.reset()
        counter = GraphCounter()
        eager = model.sample(2, generator=torch.Generator().manual_seed(0), **kwargs)
        captured = model.sample(2, generator=torch.Generator().manual_seed(0), compile=counter, **kwargs)
        assert torch.equal(captured, eager)
        assert counter.graphs == PIECES[name], size


def test_the_cache_free_step_captures_too():
    model, kwargs = pixelcnn(3)
    eager = model.sample(2, generator=torch.Generator().manual_seed(0), use_cache=False, **kwargs)
    counter = GraphCounter()
    captured = model.sample(2, generator=torch.Generator().manual_seed(0), use_cache=False, compile=counter, **kwargs)
    assert torch.equal(captured, eager) and counter.graphs == 1


def test_beam_search_through_captured_pieces_equals_eager():
    model, kwargs = pixelcnn(3)
    prime = torch.randint(0, 4, (2, 3, 1, 3), generator=torch.Generator().manual_seed(1))
    eager = model.beam_search(2, beams=3, prime=prime, **kwargs)
    captured = model.beam_search(2, beams=3, prime=prime, compile=GraphCounter(), **kwargs)
    assert torch.equal(captured.codes, eager.codes)
    assert torch.allclose(captured.log_prob, eager.log_prob, atol=1e-12)


def test_inductor_compiled_wavenet_samples_as_eager():
    model, kwargs = wavenet(60)
    torch._dynamo.reset()
    eager = model.sample(2, generator=torch.Generator().manual_seed(3), top_p=0.9, **kwargs)
    compiled = model.sample(2, generator=torch.Generator().manual_seed(3), top_p=0.9, compile=True, **kwargs)
    assert torch.equal(compiled, eager)


PRIMES = {"pixelcnn": [12, 24, 36], "igpt": [1, 7, 20], "wavenet": [1, 5, 33]}


@pytest.mark.parametrize("name", MODELS)
def test_prefill_leaves_the_state_that_stepping_through_the_prime_leaves(name, monkeypatch):
    monkeypatch.setenv("PIXELGEN_FUSED", "0")
    build, size, _ = MODELS[name]
    model, kwargs = build(size)
    event_shape = model.event_shape_for(kwargs.get("length"))
    codes = model.sample(2, generator=torch.Generator().manual_seed(2), **kwargs)
    seq = model.to_order(codes)
    for length in PRIMES[name]:
        filled = model.sampler(2, kwargs["cond"], event_shape)
        filled.prefill(seq, length)
        run, walked = stepper(model, 2, kwargs["cond"], event_shape)
        for t in range(length):
            run(t, seq)
        state, expected = filled.cache.state(), walked.cache.state()
        assert state.keys() == expected.keys()
        assert int(state["position"]) == length
        for key, tensor in expected.items():
            assert torch.allclose(state[key], tensor, atol=1e-12, rtol=0), (length, key)
        assert any(t.any() for k, t in state.items() if k != "position")


@pytest.mark.parametrize("name", MODELS)
def test_primed_samples_keep_the_prime_and_equal_cache_free_sampling(name, monkeypatch):
    monkeypatch.setenv("PIXELGEN_FUSED", "0")
    build, size, _ = MODELS[name]
    model, kwargs = build(size)
    full = model.sample(2, generator=torch.Generator().manual_seed(5), **kwargs)
    prime = full[..., :2, :] if name == "pixelcnn" else full[:, :3] if name == "igpt" else full[:, :40]
    cached, naive = sample_both_ways(model, 2, seed=6, prime=prime, **kwargs)
    assert torch.equal(cached, naive)
    assert torch.equal(cached[..., : prime.shape[-2], :] if name == "pixelcnn" else cached[:, : prime.shape[1]],
                       prime)


class ForwardOnly(AutoregressiveModule):
    """A model that writes only ``forward`` and ``render_samples``: a causal convolution over raster-order codes of
    ``4 x 4`` grey images (the input at t is code t - 1)."""

    def __init__(self, levels: int = 3) -> None:
        super().__init__(lr=1e-2, warmup_steps=1)
        self.num_classes, self.event_shape = levels, (4, 4)
        self.embed = nn.Embedding(levels, 8)
        self.conv = nn.Conv1d(8, 8, 3)
        self.out = nn.Linear(8, levels)

    def forward(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_codes(codes)
        x = F.pad(self.embed(self.to_order(codes)[:, :-1]).transpose(1, 2), (3, 0))  # input at t: code t - 1
        return self.out(torch.tanh(self.conv(x)).transpose(1, 2)).view(*codes.shape, self.num_classes)

    def render_samples(self, codes: torch.Tensor) -> Images:
        return Images(codes.unsqueeze(1).float() / (self.num_classes - 1))


def test_a_model_with_only_forward_passes_the_contract_and_samples():
    model = randomise(ForwardOnly().double(), std=0.7)
    codes = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    assert causality_violations(model, codes) == []
    assert torch.allclose(model.log_prob(codes), brute_force_log_prob(model, codes), atol=1e-10)
    assert step_logit_error(model, codes) < 1e-12
    cached, naive = sample_both_ways(model, 3, seed=1, prime=codes[:1, :2].expand(3, -1, -1))
    assert torch.equal(cached, naive)
    beams = model.beam_search(1, beams=3)
    assert torch.allclose(beams.log_prob[0], model.log_prob(beams.codes[0]), atol=1e-10)


def test_a_model_with_only_forward_logs_samples_during_fit(tmp_path):
    images = torch.randint(0, 3, (8, 4, 4))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(8, dtype=torch.long)),
                                         batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, val_check_interval=1,
                         callbacks=[SampleLogger(num_samples=4, num_completions=0)])
    model = ForwardOnly()
    trainer.fit(model, loader, loader)
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step0000001.png", "step0000002.png"]  # a grid at each of the two validations
    # the last is the model's own draws from the logger's seed, as the trained model draws them again
    codes = model.eval().sample(4, generator=torch.Generator().manual_seed(0))
    expected = image_grid(model.render_samples(codes).pixels)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "samples" / "step0000002.png")), expected)


def test_pixelgen_sample_with_compile_draws_the_same_grid(tmp_path):
    model, _ = pixelcnn(3)
    ckpt = untrained_checkpoint(model.float(), tmp_path / "tiny.ckpt")
    grids = []
    for flags in ([], ["--compile"]):
        out = tmp_path / f"grid{len(grids)}.png"
        assert pixelgen_main(["sample", "--ckpt", str(ckpt), "--out", str(out), "--num-samples", "4",
                              "--class-label", "1", *flags]) == 0
        grids.append(out.read_bytes())
    assert grids[0] == grids[1]
