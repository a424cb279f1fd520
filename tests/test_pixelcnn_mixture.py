"""PixelCNN with PixelCNN++'s discretized logistic mixture output: the shared contract (causality, exact likelihood,
cached = cache-free), PixelCNN++'s closed-form likelihood, a normalised model, beam search, prefill and capture."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from arcore.errors import UsageError
from arcore.files.checkpoint import read_checkpoint
from arcore.sampling.engine import stepper
from pixelgen.cli import main
from pixelgen.pixelcnn import PixelCNN
from tests.contract import brute_force_log_prob, causality_violations, randomise, sample_both_ways, step_logit_error
from tests.test_mixture import pixelcnnpp_log_prob
from tests.test_pixelgen_cli import make_folder_dataset

ROOT = Path(__file__).resolve().parents[1]


def tiny(image_shape=(3, 4, 5), levels=16, **kwargs) -> PixelCNN:
    kwargs = {"hidden": 6, "layers": 3, "kernel_size": 5, "head": 6, "mixtures": 3, **kwargs}
    return randomise(PixelCNN(image_shape=image_shape, levels=levels, output="logistic_mixture", **kwargs).double())


def random_codes(model: PixelCNN, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, model.num_classes, (n, *model.image_shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("image_shape,levels,num_labels", [((1, 4, 5), 256, 0), ((3, 4, 5), 16, 0),
                                                          ((3, 3, 4), 8, 2)])
def test_no_logit_depends_on_its_own_or_later_positions(image_shape, levels, num_labels):
    model = tiny(image_shape, levels, num_labels=num_labels)
    cond = torch.tensor([0, 1]) if num_labels else None
    assert causality_violations(model, random_codes(model), cond) == []


def test_the_stacks_see_no_channel_of_the_current_pixel_and_the_channels_see_each_other():
    """Green's and blue's logits move with red (through the coefficients); red's do not move with anything of its
    own pixel."""
    model = tiny((3, 3, 4))
    codes = random_codes(model, 1)
    changed = codes.clone()
    changed[:, 0, 1, 2] = (changed[:, 0, 1, 2] + 5) % model.num_classes
    with torch.no_grad():
        moved = (model(changed) - model(codes)).abs().amax(-1)[0, :, 1, 2]
    assert moved[0] == 0 and moved[1] > 1e-6 and moved[2] > 1e-6


@pytest.mark.parametrize("image_shape,levels,num_labels", [((1, 3, 4), 256, 0), ((3, 2, 3), 16, 2),
                                                          ((3, 2, 3), 256, 0)])
def test_log_prob_equals_brute_force_sum(image_shape, levels, num_labels):
    model = tiny(image_shape, levels, num_labels=num_labels)
    codes = random_codes(model, 3)
    cond = torch.tensor([0, 1, 1]) if num_labels else None
    with torch.no_grad():
        exact = model.log_prob(codes, cond)
    assert torch.allclose(exact, brute_force_log_prob(model, codes, cond), atol=1e-9, rtol=0)


@pytest.mark.parametrize("channels,levels", [(1, 256), (3, 256), (3, 32)])
def test_log_prob_equals_pixelcnnpp_closed_form_of_the_head_parameters(channels, levels):
    model = tiny((channels, 4, 5), levels, num_labels=2, mixtures=4)
    codes = random_codes(model, 3)
    codes[0] = 0  # end bins
    codes[1, :, :2] = levels - 1
    cond = torch.tensor([1, 0, 1])
    with torch.no_grad():
        params = model._head(codes, cond).permute(0, 2, 3, 1)  # [B, H, W, P]
        expected = pixelcnnpp_log_prob(params, codes.permute(0, 2, 3, 1), levels, 4).flatten(1).sum(1)
        assert torch.allclose(model.log_prob(codes, cond), expected, atol=1e-9, rtol=0)


def test_probabilities_of_all_images_sum_to_one():
    model = tiny((3, 1, 2), levels=4, hidden=4, head=4)  # one group: any width; 4**6 images
    every = torch.tensor(list(itertools.product(range(4), repeat=6))).view(-1, 1, 2, 3).permute(0, 3, 1, 2)
    with torch.no_grad():
        total = model.log_prob(every).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("image_shape,levels,layers,kernel_size,num_labels", [
    ((1, 5, 6), 256, 4, 5, 0), ((3, 4, 5), 16, 2, 3, 2), ((3, 4, 3), 8, 3, 7, 0)])
def test_cached_sampling_equals_cache_free_sampling(image_shape, levels, layers, kernel_size, num_labels):
    model = tiny(image_shape, levels, layers=layers, kernel_size=kernel_size, num_labels=num_labels)
    cond = torch.tensor([1, 0]) if num_labels else None
    cached, naive = sample_both_ways(model, 2, seed=levels, cond=cond)
    assert torch.equal(cached, naive)


def test_cached_equals_cache_free_with_priming_labels_and_top_k():
    model = tiny((3, 5, 4), num_labels=4)
    prime = random_codes(model, 2)[:, :, :2]
    cached, naive = sample_both_ways(model, 2, seed=5, cond=torch.tensor([3, 1]), prime=prime, top_k=3)
    assert torch.equal(cached, naive)
    assert torch.equal(cached[:, :, :2], prime)


def test_float32_step_logits_match_teacher_forced_logits():
    model = tiny((3, 6, 7), levels=256, num_labels=2, mixtures=10).float()
    assert step_logit_error(model, random_codes(model, 2), torch.tensor([1, 0])) < 1e-4


def test_beam_search_scores_are_the_exact_log_likelihoods():
    """Beam search reorders the cache after every sub-pixel, the stored pixel mixture included."""
    model = tiny((3, 3, 3), levels=8)
    prime = random_codes(model, 2)[:, :, :1]
    result = model.beam_search(2, beams=3, prime=prime)
    with torch.no_grad():
        exact = model.log_prob(result.codes.flatten(0, 1)).view(2, 3)
    assert torch.allclose(result.log_prob, exact, atol=1e-9, rtol=0)
    assert torch.equal(result.codes[:, :, :, :1], prime[:, None].expand(2, 3, -1, -1, -1))


def test_prefill_leaves_the_state_that_stepping_through_the_prime_leaves():
    model = tiny((3, 4, 3), levels=8, num_labels=2)
    cond = torch.tensor([1, 0])
    seq = model.to_order(random_codes(model))
    for rows in (1, 2, 3):
        length = rows * 3 * 3
        filled = model.sampler(2, cond, model.image_shape)
        filled.prefill(seq, length)
        run, walked = stepper(model, 2, cond, model.image_shape)
        for t in range(length):
            run(t, seq)
        state, expected = filled.cache.state(), walked.cache.state()
        assert state.keys() == expected.keys() and "pixel_params" in state
        for key, tensor in expected.items():
            assert torch.allclose(state[key], tensor, atol=1e-12, rtol=0), (rows, key)


@pytest.mark.parametrize("image_shape", [(3, 3, 4), (3, 5, 6), (1, 4, 4)])
def test_captured_pieces_sample_as_eager(image_shape):
    """Row, pixel and one piece per channel, each captured whole (``fullgraph``) once whatever the image size, and
    replayed at every position."""
    model = tiny(image_shape, levels=8, layers=2, num_labels=2)
    cond = torch.tensor([1, 0])
    graphs = []

    def backend(graph: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    eager = model.sample(2, cond=cond, generator=torch.Generator().manual_seed(0))
    captured = model.sample(2, cond=cond, generator=torch.Generator().manual_seed(0), compile=backend)
    assert torch.equal(captured, eager)
    assert len(graphs) == 2 + image_shape[0]  # no recompilation at later positions


def test_bad_output_options_are_one_line_errors():
    with pytest.raises(UsageError, match="output must be 'softmax' or 'logistic_mixture', got 'mixture'"):
        PixelCNN(image_shape=(3, 8, 8), output="mixture")
    with pytest.raises(UsageError, match="mixtures must be >= 1, got 0"):
        PixelCNN(image_shape=(3, 8, 8), output="logistic_mixture", mixtures=0)
    assert PixelCNN(image_shape=(3, 8, 8), hidden=8, head=8, output="logistic_mixture").head2.out_channels == 100


@pytest.mark.parametrize("config,channels", [("pixelcnn_cifar10_mixture.yaml", 3), ("pixelcnn_cifar10_recipe.yaml", 3),
                                             ("pixelcnn_mnist8.yaml", 1), ("pixelcnn_mnist8_mixture.yaml", 1)])
def test_shipped_configs_fit_test_and_sample_at_a_tiny_size(config, channels, tmp_path, monkeypatch, capsys):
    data = make_folder_dataset(tmp_path / "images")
    monkeypatch.chdir(tmp_path)  # the config's run folder (runs/<name>) lands here
    args = ["--config", str(ROOT / "lightning_configs" / config), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--data.dataset", "folder", "--data.root", str(data),
            "--data.channels", str(channels), "--data.batch_size", "4", "--data.val_size", "4",
            "--model.init_args.image_shape", f"[{channels}, 8, 8]", "--model.init_args.hidden", "6",
            "--model.init_args.layers", "2", "--model.init_args.head", "6", "--model.init_args.mixtures", "2"]
    assert main(["fit", *args, "--trainer.max_steps", "2"]) == 0
    assert main(["test", *args]) == 0
    assert "test/bpd" in capsys.readouterr().out
    ckpt = tmp_path / "runs" / config.removesuffix(".yaml") / "checkpoints" / "last.ckpt"
    trained = read_checkpoint(ckpt)["hyper_parameters"]
    own = yaml.safe_load((ROOT / "lightning_configs" / config).read_text())["model"]["init_args"]
    assert trained["output"] == own.get("output", "softmax") and trained["dropout"] == own.get("dropout", 0.0)
    assert main(["sample", "--ckpt", str(ckpt), "--num-samples", "4", "--out", "grid.png"]) == 0
    assert np.asarray(Image.open("grid.png")).shape == (2 + 2 * 10, 2 + 2 * 10, 3)  # 2 x 2 grid of 8x8 images
