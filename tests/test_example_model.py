"""The model contract's test: a model that is none of the three, written in one file (docs/examples/), trains,
logs, samples through the cached and cache-free paths, exports and reloads with no edit anywhere else; and the
engine samples a model that is not a LightningModule without importing Lightning."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from arcore.cli.export import export_main
from arcore.errors import UsageError
from arcore.training.callbacks import SampleLogger
from arcore.files.registry import load_checkpoint
from tests.contract import brute_force_log_prob, causality_violations, randomise, step_logit_error

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "tiny_char_model.py"
TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog sat on a mat.\n" * 8


@pytest.fixture(scope="module")
def example():
    """The example file, imported as the module ``tiny_char_model`` (as a user's own file would be)."""
    spec = importlib.util.spec_from_file_location("tiny_char_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def lines(example, length: int = 16) -> torch.Tensor:
    """Every window of ``length`` characters of :data:`TEXT`, 3 characters apart, as codes ``[N, length]``."""
    codes = example.encode(TEXT)
    return codes.unfold(0, length, 3).contiguous()


@pytest.fixture(scope="module")
def trained(example, tmp_path_factory):
    """The example trained 30 steps through Lightning with a sample logger, its losses and its checkpoint."""
    root = tmp_path_factory.mktemp("tiny_char")
    torch.manual_seed(0)
    model = example.TinyCharModel(length=16, channels=16, dilations=(1, 2, 4), lr=1e-2, warmup_steps=1)
    codes = lines(example)
    loader = DataLoader(TensorDataset(codes, torch.zeros(len(codes), dtype=torch.long)), batch_size=16,
                        shuffle=True)
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0,
                         limit_val_batches=1, val_check_interval=30, check_val_every_n_epoch=None,
                         callbacks=[Losses(), SampleLogger(num_samples=2, num_completions=2)])
    trainer.fit(model, loader, DataLoader(TensorDataset(codes[:4], torch.zeros(4, dtype=torch.long))))
    trainer.save_checkpoint(root / "last.ckpt")
    return model.eval(), losses, root


def test_it_keeps_the_contract(example):
    model = randomise(example.TinyCharModel(length=9, channels=6, dilations=(1, 2)).double(), std=0.4)
    codes = torch.randint(0, model.num_classes, (2, 9), generator=torch.Generator().manual_seed(0))
    assert causality_violations(model, codes) == []
    assert torch.allclose(model.log_prob(codes), brute_force_log_prob(model, codes), atol=1e-10)
    assert step_logit_error(model, codes) < 1e-12


def test_it_trains_through_lightning_and_logs_text(example, trained):
    _, losses, root = trained
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5  # from about ln(31) = 3.4 nats a character
    samples = (root / "samples" / "step0000030.txt").read_text().split("\n----\n")
    assert len(samples) == 2 and all(len(s.rstrip("\n")) <= 16 for s in samples)
    pairs = (root / "samples" / "step0000030_completions.txt").read_text().split("\n----\n")
    original, completion = pairs[0], pairs[1]  # the first validation line, then its completion
    assert original == example.decode(lines(example)[0])
    assert completion[:8] == original[:8]  # completed from its first half


def test_cached_and_cache_free_paths_draw_the_same_samples(trained):
    model = trained[0].double()
    for options in ({}, {"temperature": 0.7, "top_k": 5}, {"prime": model.sample(3, greedy=True)[:, :5]}):
        cached = model.sample(3, generator=torch.Generator().manual_seed(4), **options)
        free = model.sample(3, generator=torch.Generator().manual_seed(4), use_cache=False, **options)
        assert torch.equal(cached, free), options
    model.float()


def test_it_exports_to_a_weights_file_and_reloads(example, trained, capsys):
    model, _, root = trained
    out = root / "tiny.safetensors"
    export_main(example.TOOL, ["--ckpt", str(root / "last.ckpt"), "--out", str(out)])
    assert "TinyCharModel" in capsys.readouterr().out
    loaded = load_checkpoint(out, example.TOOL)
    assert type(loaded) is example.TinyCharModel and loaded.event_shape == (16,)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    seed = (lambda: torch.Generator().manual_seed(9))
    assert torch.equal(loaded.sample(2, generator=seed()), model.sample(2, generator=seed()))
    with pytest.raises(UsageError, match=r"holds a tinychar model \(TinyCharModel\); use `tinychar sample` for it"):
        load_checkpoint(out, "pixelgen")


def test_the_engine_samples_a_plain_module_without_lightning():
    code = textwrap.dedent("""
        import sys
        import torch
        from torch import nn
        from arcore.sampling.cache import ForwardSampler
        from arcore.sampling.engine import sample

        class Bigram(nn.Module):  # p(x_t | x_t-1): the contract of arcore.sampling.engine.Autoregressive, nothing more
            num_classes = 3

            def __init__(self):
                super().__init__()
                self.table = nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))

            def event_shape_for(self, length):
                return (length or 6,)

            def to_order(self, x):
                return x

            def from_order(self, seq, event_shape):
                return seq.reshape(seq.shape[0], *event_shape, *seq.shape[2:])

            def prime_to_order(self, prime, event_shape):
                return prime

            def forward(self, codes, cond=None):
                return self.table[torch.cat([codes.new_full((len(codes), 1), 3), codes[:, :-1]], 1)]

            def sampler(self, n, cond, event_shape):
                return ForwardSampler(self, n, cond, event_shape)

        codes = sample(Bigram(), 5, generator=torch.Generator().manual_seed(0))
        assert codes.shape == (5, 6) and int(codes.max()) < 3
        print(sorted(name for name in sys.modules if "lightning" in name))
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
