"""Image GPT: causality, exact likelihood, KV-cache sampling == cache-free sampling, cache layout, palette in the
checkpoint (a fresh process samples the same images), and the pixelgen CLI on a palette model."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from arcore.errors import UsageError
from arcore.sampling.engine import stepper
from pixelgen.cli import main
from pixelgen.data import ImageDataModule
from pixelgen.igpt import ImageGPT
from tests.contract import brute_force_log_prob, causality_violations, randomise, sample_both_ways, step_logit_error
from tests.test_palette import COLOURS, patch_images
from tests.tiny_configs import trainer_yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny(image_shape=(3, 4, 5), palette_size=6, **kwargs) -> ImageGPT:
    kwargs = {"width": 16, "layers": 2, "heads": 2, **kwargs}
    return randomise(ImageGPT(image_shape=image_shape, palette_size=palette_size, **kwargs).double(), std=0.3)


def random_codes(model: ImageGPT, n: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.num_classes, (n, *model.event_shape), generator=gen)


@pytest.mark.parametrize("num_labels", [0, 3])
def test_no_logit_depends_on_its_own_or_later_tokens(num_labels):
    model = tiny(num_labels=num_labels)
    cond = torch.tensor([2, 0]) if num_labels else None
    assert causality_violations(model, random_codes(model), cond) == []


def test_causality_check_catches_attention_to_the_future(monkeypatch):
    model = tiny()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, is_causal=False, **kw: sdpa(q, k, v, **kw))  # the mask dropped
    assert any(s < t for t, s in causality_violations(model, random_codes(model)))


def test_label_is_used():
    model = tiny(num_labels=3)
    codes = random_codes(model)
    with torch.no_grad():
        assert (model(codes, torch.tensor([0, 0])) - model(codes, torch.tensor([1, 1]))).abs().max() > 1e-3


@pytest.mark.parametrize("num_labels", [0, 2])
def test_log_prob_equals_brute_force_sum(num_labels):
    model = tiny(num_labels=num_labels)
    codes = random_codes(model, 3)
    cond = torch.tensor([0, 1, 1]) if num_labels else None
    with torch.no_grad():
        exact = model.log_prob(codes, cond)
    assert torch.allclose(exact, brute_force_log_prob(model, codes, cond), atol=1e-9)


def test_probabilities_of_all_token_images_sum_to_one():
    model = tiny(image_shape=(1, 2, 3), palette_size=2)
    every = torch.tensor(list(itertools.product((0, 1), repeat=6))).view(-1, 2, 3)
    with torch.no_grad():
        assert model.log_prob(every).exp().sum().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("n,layers,num_labels,prime_rows", [
    (1, 1, 0, 0), (3, 3, 0, 0), (1, 2, 3, 0), (2, 2, 3, 2), (3, 2, 0, 1)])
def test_cached_sampling_equals_cache_free_sampling(n, layers, num_labels, prime_rows):
    model = tiny(layers=layers, num_labels=num_labels)
    cond = torch.arange(n) % num_labels if num_labels else None
    prime = random_codes(model, n, seed=9)[:, :prime_rows] if prime_rows else None
    cached, naive = sample_both_ways(model, n, seed=n + layers, cond=cond, prime=prime)
    assert torch.equal(cached, naive)
    if prime is not None:
        assert torch.equal(cached[:, :prime_rows], prime)
    # the sampler really draws: another seed gives other codes
    assert not torch.equal(cached, model.sample(n, cond=cond, prime=prime, generator=torch.Generator().manual_seed(99)))


def test_cached_equals_cache_free_with_top_k_top_p_and_reduced_resolution():
    model = tiny(image_shape=(3, 8, 10), resolution=4)
    assert model.event_shape == (4, 4)
    cached, naive = sample_both_ways(model, 2, seed=4, top_k=4, top_p=0.9, temperature=0.8)
    assert torch.equal(cached, naive)


def test_weights_split_in_column_blocks_for_threads_give_the_same_samples():
    model = tiny(width=16, heads=2, palette_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, sampler = stepper(model, 2, None, model.event_shape)
        assert [d.blocks for d in sampler.dense[0]] == [2, 2, 2, 2] and sampler.head.blocks == 2
        cached, naive = sample_both_ways(model, 2, seed=11)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(cached, naive)


def test_beam_search_reorders_the_kv_cache_by_beam():
    model = tiny(image_shape=(1, 2, 3), palette_size=3)
    cached = model.beam_search(2, beams=3, prime=random_codes(model, 2)[:, :1])
    naive = model.beam_search(2, beams=3, prime=random_codes(model, 2)[:, :1], use_cache=False)
    assert torch.equal(cached.codes, naive.codes)
    with torch.no_grad():
        rescored = model.log_prob(cached.codes.flatten(0, 1)).view(2, 3)
    assert torch.allclose(cached.log_prob, rescored, atol=1e-9)


def test_float32_step_logits_match_teacher_forced_logits():
    model = tiny(image_shape=(3, 6, 7), palette_size=64, num_labels=2, width=32, heads=4).float()
    assert step_logit_error(model, random_codes(model), torch.tensor([1, 0])) < 1e-4


def uses_fused_step(sampler) -> bool:
    from pixelgen.igpt_step import FusedStep

    return isinstance(sampler.step, FusedStep)


def test_fused_cpu_step_writes_the_same_cache_and_logits_as_the_pytorch_step(monkeypatch):
    from pixelgen.igpt_step import kernel

    assert kernel() is not None, "the fused step did not build (is a C++ compiler installed?)"
    model = tiny(image_shape=(3, 6, 7), palette_size=64, num_labels=2, width=32, heads=4).float()
    cond = torch.tensor([1, 0, 1])
    seq = random_codes(model, 3).flatten(1)
    fused_step, fused = stepper(model, 3, cond, model.event_shape)
    monkeypatch.setenv("PIXELGEN_FUSED", "0")
    plain_step, plain = stepper(model, 3, cond, model.event_shape)
    assert uses_fused_step(fused) and not uses_fused_step(plain)
    error = max((fused_step(t, seq) - plain_step(t, seq)).abs().max().item() for t in range(seq.shape[1]))
    assert error < 1e-5
    fused_kv, plain_kv = fused.kv, plain.kv
    assert torch.allclose(fused_kv, plain_kv, atol=1e-6) and fused_kv.abs().min() > 0  # every position written


@pytest.mark.parametrize("n,prime_rows", [(1, 0), (1, 2), (4, 1)])
def test_fused_sampling_in_float32_equals_cache_free_sampling(n, prime_rows):
    model = tiny(image_shape=(3, 5, 6), palette_size=12, layers=3, width=32, heads=4, num_labels=3).float()
    cond = torch.arange(n) % 3
    prime = random_codes(model, n, seed=5)[:, :prime_rows] if prime_rows else None
    assert uses_fused_step(stepper(model, n, cond, model.event_shape)[1])
    cached, naive = sample_both_ways(model, n, seed=3, cond=cond, prime=prime, top_p=0.95)
    assert torch.equal(cached, naive)
    assert not torch.equal(cached, model.sample(n, cond=cond, prime=prime, generator=torch.Generator().manual_seed(4)))


def test_fused_beam_search_reorders_its_cache_like_the_pytorch_step(monkeypatch):
    model = tiny(image_shape=(1, 3, 4), palette_size=5, width=32, heads=4).float()
    prime = random_codes(model, 2)[:, :1]
    fused = model.beam_search(2, beams=4, prime=prime)  # 8 sequences: the fused step
    monkeypatch.setenv("PIXELGEN_FUSED", "0")
    plain = model.beam_search(2, beams=4, prime=prime)
    assert torch.equal(fused.codes, plain.codes)
    assert torch.allclose(fused.log_prob, plain.log_prob, atol=1e-4)


def test_fused_step_serves_small_float32_cpu_batches_only():
    from pixelgen.igpt_step import MAX_BATCH, FusedStep

    model = tiny().float()
    assert FusedStep.applies(model, 1) and FusedStep.applies(model, MAX_BATCH)
    assert not FusedStep.applies(model, MAX_BATCH + 1) and not FusedStep.applies(model.double(), 1)


def test_without_a_compiler_sampling_falls_back_to_the_pytorch_step(monkeypatch, tmp_path):
    from pixelgen import igpt_step
    from tests.test_native import no_compiler

    no_compiler(monkeypatch, tmp_path)
    model = tiny(palette_size=5).float()
    with pytest.warns(UserWarning, match="could not be built.*uses the PyTorch step"):
        assert igpt_step.kernel() is None
    assert not uses_fused_step(stepper(model, 1, None, model.event_shape)[1])
    cached, naive = sample_both_ways(model, 1, seed=2)
    assert torch.equal(cached, naive)


def test_cache_buffers_have_the_designed_shapes_and_stay_in_place():
    model = tiny(layers=3, width=24, heads=4)
    n, tokens = 2, 20
    step, sampler = stepper(model, n, None, model.event_shape)
    cache = sampler.cache
    buffers = cache.buffers()
    assert buffers["kv"].shape == (3, n, 2, 4, tokens, 6)  # layers, batch, key/value, heads, positions, head dim
    assert buffers["visible"].shape == (1, 1, 1, tokens) and buffers["first"].shape == (n, 24)
    assert sampler.kv is buffers["kv"] and sampler.visible is buffers["visible"] and sampler.first is buffers["first"]
    before = {name: (tuple(t.shape), t.data_ptr()) for name, t in buffers.items()}
    seq = random_codes(model, n).flatten(1)
    with torch.no_grad():
        for t in range(tokens):
            step(t, seq)
            kv = sampler.kv
            assert kv[:, :, :, :, : t + 1].abs().amax(dim=(0, 1, 2, 3, 5)).min() > 0  # written up to t
            assert not kv[:, :, :, :, t + 1:].any()  # and nothing beyond
            assert torch.equal(torch.isfinite(sampler.visible).flatten(), torch.arange(tokens) <= t)
    assert {name: (tuple(t.shape), t.data_ptr()) for name, t in cache.buffers().items()} == before
    assert cache.nbytes() == (3 * n * 2 * tokens * 24 + tokens + n * 24 + 1) * 8  # float64, position int64


def test_encode_images_resizes_and_primes_from_the_top_rows(tmp_path):
    images = patch_images(COLOURS, n=8, size=8, noise=0.0)
    model = ImageGPT(image_shape=(3, 8, 8), palette_size=8, resolution=4, width=16, layers=1, heads=2,
                     palette_cache=str(tmp_path))
    with pytest.raises(UsageError, match="no palette yet"):
        model.encode_images(images)
    model.fit_palette(images)
    tokens = model.encode_images(images)
    assert tokens.shape == (8, 4, 4)
    # 4x4 patches of one colour downsample (2x2 area) to exact colours: the round trip is lossless
    rendered = model.render_samples(tokens).pixels * 255
    assert torch.allclose(rendered, images[:, :, ::2, ::2].float(), atol=1e-3)
    assert torch.equal(model.prime_from_data(images, 4), tokens[:, :2])
    with pytest.raises(UsageError, match=r"\[B, 3, 8, 8\]"):
        model.encode_images(images[:, :1])


def make_folder_data(root: Path, per_class: int = 8) -> Path:
    """Two classes of 8x8 RGB patch images (different colour sets) in ImageFolder layout."""
    for seed, (split, count) in enumerate((("train", per_class), ("test", 4))):
        for label, colours in enumerate((COLOURS[:4], COLOURS[4:])):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i, image in enumerate(patch_images(colours, n=count, size=8, noise=2.0, seed=2 * seed + label)):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


def test_checkpoint_samples_the_same_images_in_a_fresh_process_without_data(tmp_path):
    data = ImageDataModule("folder", root=str(make_folder_data(tmp_path / "images")), batch_size=4, val_size=4)
    model = ImageGPT(image_shape=(3, 8, 8), palette_size=8, width=16, layers=2, heads=2, num_labels=2,
                     palette_cache=str(tmp_path / "palettes"))
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert bool(model.palette_fitted) and model.palette.std() > 10  # fitted in setup('fit') from the pixels
    ckpt = tmp_path / "igpt.ckpt"
    trainer.save_checkpoint(ckpt)
    model.eval()
    cond = torch.tensor([0, 1, 1])
    expected = model.render_samples(model.sample(3, cond=cond, generator=torch.Generator().manual_seed(7))).pixels

    for folder in (tmp_path / "images", tmp_path / "palettes"):  # the fresh process has no data, no palette cache
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    out = tmp_path / "sampled.pt"
    script = ("import sys, torch; from arcore.files.registry import load_checkpoint; "
              "model = load_checkpoint(sys.argv[1], 'pixelgen').eval(); "
              "codes = model.sample(3, cond=torch.tensor([0, 1, 1]), generator=torch.Generator().manual_seed(7)); "
              "torch.save(model.render_samples(codes).pixels, sys.argv[2])")
    subprocess.run([sys.executable, "-c", script, str(ckpt), str(out)], cwd=ROOT, check=True,
                   env={"PIXELGEN_CACHE": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin"})
    assert torch.equal(torch.load(out), expected)


def test_pixelgen_cli_fits_tests_and_completes_images(tmp_path, capsys):
    data = make_folder_data(tmp_path / "images")
    config = tmp_path / "igpt.yaml"
    # as in the shipped configs: its average must carry the fitted palette
    ema = """
    - class_path: arcore.training.callbacks.EMA"""
    config.write_text(trainer_yaml(tmp_path / "run", max_steps=2, callbacks=ema) + f"""
model:
  class_path: pixelgen.igpt.ImageGPT
  init_args: {{image_shape: [3, 8, 8], palette_size: 8, resolution: 4, width: 16, layers: 1, heads: 2,
               palette_cache: {tmp_path}/palettes}}
data: {{dataset: folder, root: {data}, batch_size: 4, val_size: 4}}
""")
    assert main(["fit", "--config", str(config)]) == 0
    assert main(["test", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "test/bits_per_subpixel" in printed and "test/palette_rmse" in printed
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    done = tmp_path / "done.png"
    assert main(["sample", "--ckpt", str(last), "--num-samples", "4", "--out", str(done), "--prime-rows", "4",
                 "--prime-from", "test"]) == 0
    real = np.asarray(Image.open(tmp_path / "done_real.png"))
    completed = np.asarray(Image.open(done))
    assert completed.shape == real.shape == (2 + 2 * 6, 2 + 2 * 6, 3)  # 2 x 2 grid of 4x4 images
    assert np.array_equal(real[2:4, 2:6], completed[2:4, 2:6])  # 4 of 8 rows primed = 2 of 4 model rows
    assert main(["fit", "--config", str(config), "--ckpt_path", "null", "--data.bits", "4"]) == 2
    assert "--data.bits 8" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["igpt_mnist.yaml", "igpt_cifar10.yaml"])
def test_shipped_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "lightning_configs" / config), "--print_config"])
    assert done.value.code in (0, None)
    assert "pixelgen.igpt.ImageGPT" in capsys.readouterr().out
