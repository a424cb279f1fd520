"""Sampling in chunks (`arcore.cli.chunks`, `--batch-size`): order, one generator across chunks, halving on
out-of-memory, and Ctrl-C keeping the finished samples, for `pixelgen sample` and `wavegen sample`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from arcore.cli.chunks import draw_in_chunks
from arcore.errors import UsageError, is_out_of_memory
from arcore.files.media import image_grid
from pixelgen.cli import main as pixelgen_main
from pixelgen.pixelcnn import PixelCNN
from tests.tiny_configs import untrained_checkpoint
from wavegen.cli import main as wavegen_main
from wavegen.wavenet import WaveNet


def recording_draw(calls: list[tuple[int, int]], generator: torch.Generator, fail_above: int | None = None):
    """A ``draw`` that records its calls, consumes the generator like a sampler and, above ``fail_above``
    samples, runs out of memory after consuming it."""
    def draw(start: int, count: int) -> torch.Tensor:
        calls.append((start, count))
        values = torch.rand(count, generator=generator)
        if fail_above is not None and count > fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return values
    return draw


def test_chunks_cover_the_request_in_order_with_one_generator():
    calls: list[tuple[int, int]] = []
    chunks = draw_in_chunks(recording_draw(calls, torch.Generator().manual_seed(0)), 10, 4, tool="t")
    assert calls == [(0, 4), (4, 4), (8, 2)] and chunks.done == 10 and not chunks.interrupted
    assert torch.equal(chunks.samples, torch.rand(10, generator=torch.Generator().manual_seed(0)))


def test_out_of_memory_halves_the_chunk_and_redraws_from_the_same_generator_state(capsys):
    calls: list[tuple[int, int]] = []
    generator = torch.Generator().manual_seed(0)
    chunks = draw_in_chunks(recording_draw(calls, generator, fail_above=2), 7, 8, tool="t", generator=generator)
    assert calls == [(0, 7), (0, 4), (0, 2), (2, 2), (4, 2), (6, 1)] and chunks.done == 7
    reference = draw_in_chunks(recording_draw([], torch.Generator().manual_seed(0)), 7, 2, tool="t")
    assert torch.equal(chunks.samples, reference.samples)  # as if it had started with chunks of 2
    assert capsys.readouterr().err.splitlines() == [
        "t: note: out of memory drawing 7 samples at once; retrying 4 at a time",
        "t: note: out of memory drawing 4 samples at once; retrying 2 at a time"]


def test_out_of_memory_for_one_sample_is_a_usage_error():
    def draw(start: int, count: int) -> torch.Tensor:
        raise MemoryError()
    with pytest.raises(UsageError, match="out of memory drawing even one sample"):
        draw_in_chunks(draw, 4, 2, tool="t")


def test_what_counts_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 1099511627776 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_interrupt_keeps_the_finished_chunks():
    def draw(start: int, count: int) -> torch.Tensor:
        if start >= 4:
            raise KeyboardInterrupt
        return torch.arange(start, start + count)
    chunks = draw_in_chunks(draw, 10, 2, tool="t")
    assert chunks.interrupted and chunks.done == 4 and chunks.samples.tolist() == [0, 1, 2, 3]
    assert draw_in_chunks(lambda s, c: draw(s + 4, c), 10, 2, tool="t").samples is None


# ----- through the command-line tools ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pixelcnn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = PixelCNN(image_shape=(1, 4, 4), levels=4, hidden=4, layers=1, kernel_size=3, head=4)
    return untrained_checkpoint(model, tmp_path_factory.mktemp("pixelcnn") / "model.ckpt")


@pytest.fixture(scope="module")
def wavenet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = WaveNet(dilations=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4, head_channels=4,
                    quantization=16)
    return untrained_checkpoint(model, tmp_path_factory.mktemp("wavenet") / "model.ckpt")


def grid_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def grid_shape(count: int) -> tuple[int, ...]:
    """The shape of the PNG grid of ``count`` 1x4x4 images."""
    return image_grid(torch.zeros(count, 1, 4, 4)).shape


def fail_when(model_class: type, should_fail, error: BaseException, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``model_class.sample`` raise ``error`` when ``should_fail(call index, n)``; returns the n of each call."""
    sample, sizes = model_class.sample, []

    def flaky(self, n, **kwargs):
        sizes.append(n)
        if should_fail(len(sizes) - 1, n):
            raise error
        return sample(self, n, **kwargs)
    monkeypatch.setattr(model_class, "sample", flaky)
    return sizes


def test_pixelgen_chunks_are_deterministic_and_complete(pixelcnn_ckpt, tmp_path):
    draw = lambda out, *extra: pixelgen_main(["sample", "--ckpt", str(pixelcnn_ckpt), "--out", str(tmp_path / out),
                                              "--num-samples", "5", "--seed", "3", *extra])
    assert draw("a.png", "--batch-size", "2") == 0 and draw("b.png", "--batch-size", "2") == 0
    assert draw("c.png", "--batch-size", "3") == 0
    assert grid_of(tmp_path / "a.png").shape == grid_shape(5)
    assert np.array_equal(grid_of(tmp_path / "a.png"), grid_of(tmp_path / "b.png"))
    assert not np.array_equal(grid_of(tmp_path / "a.png"), grid_of(tmp_path / "c.png"))  # other chunks, other noise


def test_pixelgen_out_of_memory_halves_the_chunk(pixelcnn_ckpt, tmp_path, monkeypatch, capsys):
    args = ["sample", "--ckpt", str(pixelcnn_ckpt), "--num-samples", "6", "--seed", "1"]
    assert pixelgen_main([*args, "--out", str(tmp_path / "small.png"), "--batch-size", "2"]) == 0
    sizes = fail_when(PixelCNN, lambda i, n: n > 2, torch.OutOfMemoryError("CUDA out of memory"), monkeypatch)
    capsys.readouterr()
    assert pixelgen_main([*args, "--out", str(tmp_path / "halved.png"), "--batch-size", "8"]) == 0
    assert sizes == [6, 3, 2, 2, 2]
    assert "pixelgen: note: out of memory drawing 6 samples at once; retrying 3 at a time" in capsys.readouterr().err
    # complete, and the same images as chunks of 2 from the start: a failed chunk is redrawn from its start state
    assert np.array_equal(grid_of(tmp_path / "halved.png"), grid_of(tmp_path / "small.png"))


def test_pixelgen_ctrl_c_keeps_the_first_chunk(pixelcnn_ckpt, tmp_path, monkeypatch, capsys):
    args = ["sample", "--ckpt", str(pixelcnn_ckpt), "--seed", "2", "--batch-size", "2"]
    assert pixelgen_main([*args, "--out", str(tmp_path / "first.png"), "--num-samples", "2"]) == 0
    fail_when(PixelCNN, lambda i, n: i == 1, KeyboardInterrupt(), monkeypatch)
    capsys.readouterr()
    out = tmp_path / "cut.png"
    with pytest.raises(SystemExit) as exit_:
        pixelgen_main([*args, "--out", str(out), "--num-samples", "6"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"pixelgen: interrupted: kept 2 of 6 samples, written to {out}"]
    assert np.array_equal(grid_of(out), grid_of(tmp_path / "first.png"))


def test_wavegen_ctrl_c_keeps_the_finished_clips_and_oom_halves(wavenet_ckpt, tmp_path, monkeypatch, capsys):
    args = ["sample", "--ckpt", str(wavenet_ckpt), "--seconds", "0.002", "--num-samples", "5", "--seed", "4"]
    out = tmp_path / "clip.wav"
    assert wavegen_main([*args, "--out", str(out), "--batch-size", "2"]) == 0
    clips = [soundfile.read(tmp_path / f"clip_{i}.wav")[0] for i in range(5)]
    assert all(len(clip) == 16 for clip in clips)

    sizes = fail_when(WaveNet, lambda i, n: n > 2, torch.OutOfMemoryError("CUDA out of memory"), monkeypatch)
    halved = tmp_path / "halved" / "clip.wav"
    assert wavegen_main([*args, "--out", str(halved), "--batch-size", "4"]) == 0
    assert sizes == [4, 2, 2, 1]
    for i in range(5):
        assert np.array_equal(soundfile.read(halved.parent / f"clip_{i}.wav")[0], clips[i])

    monkeypatch.undo()
    fail_when(WaveNet, lambda i, n: i == 1, KeyboardInterrupt(), monkeypatch)
    capsys.readouterr()
    cut = tmp_path / "cut" / "clip.wav"
    with pytest.raises(SystemExit) as exit_:
        wavegen_main([*args, "--out", str(cut), "--batch-size", "2"])
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"wavegen: interrupted: kept 2 of 5 samples, written to {cut.parent / 'clip_0.wav'} .. clip_1.wav")
    assert sorted(p.name for p in cut.parent.iterdir()) == ["clip_0.wav", "clip_1.wav"]
    for i in range(2):  # the first chunk is the same as in the uninterrupted run
        assert np.array_equal(soundfile.read(cut.parent / f"clip_{i}.wav")[0], clips[i])
