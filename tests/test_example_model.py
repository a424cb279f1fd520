"""The model contract's test: a model that is none of the three, written in one file (docs/examples/) and installed
as a distribution of its own that declares it in the entry-point group ``pixelgen.models``, is trained, tested,
sampled (beam search included), exported and loaded in a fresh process by pixelgen's commands, from its own config
and data module, with no edit anywhere else; it samples the same through the cached, cache-free and captured paths;
a file naming it loads only where the distribution is installed; and the engine samples a model that is not a
LightningModule without importing Lightning."""

from __future__ import annotations

import importlib
import io
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import tomllib
import torch

from arcore.errors import UsageError
from arcore.files.checkpoint import read_checkpoint
from arcore.files.registry import load_checkpoint
from pixelgen.cli import main as pixelgen
from tests.contract import brute_force_log_prob, causality_violations, randomise, step_logit_error

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog sat on a mat.\n" * 12
TINY = ["--model.length", "16", "--model.channels", "16", "--model.dilations", "[1, 2, 4]", "--model.lr", "0.01",
        "--model.warmup_steps", "1", "--data.length", "16", "--data.batch_size", "16", "--trainer.max_steps", "40",
        "--trainer.logger", "false", "--trainer.val_check_interval", "40", "--trainer.check_val_every_n_epoch",
        "null", "--trainer.limit_val_batches", "1"]


def install(site: Path) -> Path:
    """Install the example into ``site`` as pip would lay out its distribution: the module beside a ``.dist-info``
    whose ``entry_points.txt`` holds the entry points ``docs/examples/pyproject.toml`` declares; ``importlib.metadata``
    finds it on ``sys.path`` (``PYTHONPATH`` for another process)."""
    project = tomllib.loads((EXAMPLES / "pyproject.toml").read_text())["project"]
    shutil.copy(EXAMPLES / "tiny_char_model.py", site / "tiny_char_model.py")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items()) + "\n"
        for group, points in project["entry-points"].items()))
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example installed as a distribution, on ``sys.path`` for this module's tests."""
    folder = install(tmp_path_factory.mktemp("site"))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("tiny_char_model", None)


@pytest.fixture(scope="module")
def example(site):
    """The example's module, imported from its distribution."""
    return importlib.import_module("tiny_char_model")


@pytest.fixture(scope="module")
def run(site, tmp_path_factory):
    """``pixelgen fit`` of the example's config on a small text, then ``test``, ``export`` and ``sample``; what each
    printed, and the files."""
    root = tmp_path_factory.mktemp("tiny_run")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT.upper())  # upper case: the data module lower-cases it
    config = ["--config", str(EXAMPLES / "tiny_char.yaml"), "--data.path", str(corpus), *TINY,
              "--trainer.default_root_dir", str(root / "run")]
    printed = {}
    for name, argv in (("fit", ["fit", *config]),
                       ("test", ["test", *config, "--ckpt_path", str(root / "run" / "checkpoints" / "last.ckpt")]),
                       ("export", ["export", "--ckpt", str(root / "run" / "checkpoints" / "last.ckpt"), "--out",
                                   str(root / "tiny.safetensors")]),
                       ("sample", ["sample", "--ckpt", str(root / "tiny.safetensors"), "--num-samples", "3",
                                   "--seed", "5", "--out", str(root / "lines.txt")]),
                       ("beams", ["sample", "--ckpt", str(root / "tiny.safetensors"), "--num-samples", "2",
                                  "--beams", "3", "--out", str(root / "beams.txt")])):
        done = in_process(argv)
        assert done[0] == 0, f"pixelgen {' '.join(argv)}: {done[2][-2000:]}"
        printed[name] = done[1]
    return root, printed


def in_process(argv: list[str]) -> tuple[int, str, str]:
    """Run ``pixelgen argv`` in this process; its status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = pixelgen(argv)
    return status, out.getvalue(), err.getvalue()


def test_it_keeps_the_contract(example):
    model = randomise(example.TinyCharModel(length=9, channels=6, dilations=(1, 2)).double(), std=0.4)
    codes = torch.randint(0, model.num_classes, (2, 9), generator=torch.Generator().manual_seed(0))
    assert causality_violations(model, codes) == []
    assert torch.allclose(model.log_prob(codes), brute_force_log_prob(model, codes), atol=1e-10)
    assert step_logit_error(model, codes) < 1e-12


def test_pixelgen_fits_it_from_its_own_config_and_data_and_logs_text(example, run):
    root, printed = run
    checkpoint = read_checkpoint(root / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["model_class"] == "tiny_char_model.TinyCharModel" and checkpoint["global_step"] == 40
    assert checkpoint["datamodule_hyper_parameters"]["length"] == 16
    best = next(s for k, s in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]
    assert float(best) < 0.6 * math.log2(31)  # bits per character, from log2(31) = 4.95 untrained
    samples = next((root / "run" / "samples").glob("step*0040.txt")).read_text().split("\n----\n")
    assert len(samples) == 4 and all(set(s.rstrip("\n")) <= set(example.ALPHABET) for s in samples)
    pairs = (root / "run" / "samples" / "step0000040_completions.txt").read_text().split("\n----\n")
    first_val = example.decode(example.TinyCharData(str(root / "corpus.txt"), length=16).split("val")[0])
    assert pairs[0] == first_val and pairs[1][:8] == first_val[:8]  # the original, then its completion


def test_pixelgen_tests_and_exports_it(example, run):
    root, printed = run
    tested = float(re.search(r"test/bpd\s*│?\s*([\d.]+)", printed["test"]).group(1))
    assert tested < 0.6 * math.log2(31)
    assert "TinyCharModel" in printed["export"]
    loaded = load_checkpoint(root / "tiny.safetensors", "pixelgen")
    assert type(loaded) is example.TinyCharModel and loaded.event_shape == (16,)
    codes = example.TinyCharData(str(root / "corpus.txt"), length=16).split("test").long()
    bits = -loaded.eval().log_prob(codes).mean().item() / (16 * math.log(2))
    assert abs(bits - tested) < 0.05  # the exported weights score what the checkpoint scored


def test_pixelgen_samples_it_and_beam_searches_it(example, run):
    root, printed = run
    model = load_checkpoint(root / "tiny.safetensors", "pixelgen").eval()
    lines = (root / "lines.txt").read_text().split("\n----\n")
    drawn = model.sample(3, generator=torch.Generator().manual_seed(5))
    assert [line.rstrip("\n") for line in lines] == list(model.render_samples(drawn).texts)
    beams = (root / "beams.txt").read_text().split("\n----\n")
    best = model.beam_search(2, beams=3)
    assert [line.rstrip("\n") for line in beams] == list(model.render_samples(best.codes[:, 0]).texts)
    bits = float(re.search(r"average ([\d.]+) bits/dim", printed["beams"]).group(1))
    assert abs(bits + best.log_prob[:, 0].mean().item() / (16 * math.log(2))) < 1e-3
    assert bool((best.log_prob[:, 0] >= model.log_prob(drawn[:2]) - 1e-6).all())  # no draw beats the best beam
    status, _, err = in_process(["sample", "--ckpt", str(root / "tiny.safetensors"), "--out", str(root / "x.png")])
    assert status == 2 and err.strip() == (f"pixelgen: error: --out {root / 'x.png'}: this TinyCharModel renders "
                                           f"text, written as a .txt file")


def test_a_fresh_process_loads_it_only_where_its_distribution_is_installed(example, run, site):
    root, _ = run
    probe = ("import sys, torch, pixelgen\n"
             "try:\n"
             "    model = pixelgen.load(sys.argv[1])\n"
             "except Exception as exc:\n"
             "    print(type(exc).__name__, exc)\n"
             "else:\n"
             "    print(type(model).__module__, type(model).__name__, model.event_shape)\n"
             "print('tiny_char_model' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "-c", probe, str(root / "tiny.safetensors")], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["tiny_char_model TinyCharModel (16,)", "True"]
    # the module importable, its distribution not installed: the file's class name is looked up, never imported
    env = {**os.environ, "PYTHONPATH": f"{EXAMPLES}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "-c", probe, str(root / "tiny.safetensors")], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout.splitlines() == [
        f"UsageError {root / 'tiny.safetensors'} records the model class 'tiny_char_model.TinyCharModel', which is "
        f"not a pixelgen model", "False"], done.stderr[-2000:]
    with pytest.raises(UsageError, match=r"holds a pixelgen model \(TinyCharModel\); use `pixelgen sample` for it"):
        load_checkpoint(root / "tiny.safetensors", "wavegen")


def test_cached_cache_free_and_captured_paths_draw_the_same_samples(run):
    model = load_checkpoint(run[0] / "tiny.safetensors", "pixelgen").eval().double()
    for options in ({}, {"temperature": 0.7, "top_k": 5}, {"prime": model.sample(3, greedy=True)[:, :5]}):
        cached = model.sample(3, generator=torch.Generator().manual_seed(4), **options)
        free = model.sample(3, generator=torch.Generator().manual_seed(4), use_cache=False, **options)
        captured = model.sample(3, generator=torch.Generator().manual_seed(4), compile="eager", **options)
        assert torch.equal(cached, free) and torch.equal(cached, captured), options


def test_the_engine_samples_a_plain_module_without_lightning():
    code = textwrap.dedent("""
        import sys
        import torch
        from torch import nn
        from arcore.sampling.cache import ForwardSampler
        from arcore.sampling.engine import sample

        class Bigram(nn.Module):  # p(x_t | x_t-1): the contract of arcore.contract.Autoregressive, nothing more
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

        model = Bigram()
        codes = sample(model, 6000, generator=torch.Generator().manual_seed(0))
        probs = model.table.detach().softmax(-1)
        first = torch.bincount(codes[:, 0], minlength=3) / len(codes)
        after_0 = codes[codes[:, 2] == 0, 3]
        following = torch.bincount(after_0, minlength=3) / len(after_0)
        assert codes.shape == (6000, 6), codes.shape
        assert (first - probs[3]).abs().max() < 0.03, (first, probs[3])  # the start's distribution
        assert (following - probs[0]).abs().max() < 0.04, (following, probs[0])  # and a transition's
        print(sorted(name for name in sys.modules if "lightning" in name))
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
