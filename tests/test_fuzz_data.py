"""Fuzzing the data loaders with broken files: random bytes, real headers over random bodies, truncated files.

Property: a folder of image or audio files, some broken, some valid, either loads with one warning line per
skipped file and every valid file kept, or, when no file is usable, raises `UsageError` with a one-line message.
Nothing else may escape.
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from arcore.errors import UsageError
from pixelgen.data import ImageDataModule
from wavegen.data import AudioDataModule

FUZZ = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def image_bytes(suffix: str, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG" if suffix == ".png" else "JPEG")
    return buffer.getvalue()


def audio_bytes(suffix: str, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    tone = 0.5 * np.sin(np.arange(rate // 10) * 0.3).astype(np.float32)
    soundfile.write(buffer, tone, rate, format="WAV" if suffix == ".wav" else "FLAC")
    return buffer.getvalue()


def wav_header(fmt: int, channels: int, rate: int, bits: int, body: bytes) -> bytes:
    """A RIFF/WAVE file with the given (possibly absurd) format fields over ``body``."""
    block = max(channels * bits // 8, 0) & 0xFFFF
    chunk = struct.pack("<HHIIHH", fmt & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                        (rate * block) & 0xFFFFFFFF, block, bits & 0xFFFF)
    data = b"fmt " + struct.pack("<I", len(chunk)) + chunk + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(data)) + b"WAVE" + data


def broken(suffixes: list[str], valid: Callable[[str], bytes], magic: dict[str, bytes], headers: st.SearchStrategy | None
           ) -> st.SearchStrategy[tuple[str, bytes]]:
    """(suffix, content) of a broken file: random bytes, a real magic number over random bytes, a truncated
    valid file, or (audio) a WAV header with random fields."""
    kinds = [
        st.tuples(st.sampled_from(suffixes), st.binary(max_size=400)),
        st.sampled_from(suffixes).flatmap(lambda s: st.tuples(st.just(s), st.binary(max_size=400).map(
            lambda b: magic[s] + b))),
        st.sampled_from(suffixes).flatmap(lambda s: st.tuples(st.just(s), st.integers(0, len(valid(s)) - 1).map(
            lambda n: valid(s)[:n]))),
    ]
    if headers is not None:
        kinds.append(st.tuples(st.just(".wav"), headers))
    return st.one_of(*kinds)


IMAGE_SUFFIXES = [".png", ".jpg"]
AUDIO_SUFFIXES = [".wav", ".flac"]
broken_images = broken(IMAGE_SUFFIXES, image_bytes, {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff"}, None)
broken_audio = broken(AUDIO_SUFFIXES, audio_bytes, {".wav": b"RIFF\x00\x01\x00\x00WAVE", ".flac": b"fLaC"},
                      st.builds(wav_header, st.sampled_from([1, 3, 0xFFFE, 7]), st.integers(0, 9),
                                st.one_of(st.sampled_from([0, 1, 8000, 44100, 96001]), st.integers(0, 2**32 - 1)),
                                st.sampled_from([0, 8, 16, 24, 32, 7]), st.binary(max_size=400)))


def check_outcome(load, files: int, valid: int, err: io.StringIO, tool: str, nothing_left: str) -> None:
    """Run ``load`` (returns how many items it kept) and check the property."""
    try:
        with redirect_stderr(err):
            kept = load()
    except UsageError as exc:
        assert valid == 0, f"{valid} valid files, yet: {exc}"
        assert len(str(exc).splitlines()) == 1 and nothing_left in str(exc)
        return
    warnings = err.getvalue().splitlines()
    assert all(line.startswith(f"{tool}: warning: skipping ") for line in warnings), warnings
    assert kept >= valid and kept + len(warnings) == files


@FUZZ
@given(bad=st.lists(broken_images, min_size=1, max_size=4), valid=st.integers(0, 2))
def test_image_folder_skips_broken_files_or_says_nothing_is_usable(bad, valid):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = [*bad, *((IMAGE_SUFFIXES[i % 2], image_bytes(IMAGE_SUFFIXES[i % 2], i)) for i in range(valid))]
        for i, (suffix, content) in enumerate(files):
            folder = root / "train" / ("a", "b")[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}{suffix}").write_bytes(content)
        data = ImageDataModule("folder", root=tmp, channels=3)
        check_outcome(lambda: len(data.train_pixels()) + len(data.split("val")[0]), len(files), valid,
                      io.StringIO(), "pixelgen", "no readable images")


@FUZZ
@given(bad=st.lists(broken_audio, min_size=1, max_size=4), valid=st.integers(0, 2))
def test_audio_folder_skips_broken_files_or_says_nothing_is_usable(bad, valid):
    with tempfile.TemporaryDirectory() as tmp:
        files = [*bad, *((AUDIO_SUFFIXES[i % 2], audio_bytes(AUDIO_SUFFIXES[i % 2])) for i in range(valid))]
        for i, (suffix, content) in enumerate(files):
            (Path(tmp) / f"{i}{suffix}").write_bytes(content)
        data = AudioDataModule(tmp, val_fraction=0, test_fraction=0)
        check_outcome(lambda: len(data.splits()["train"]), len(files), valid, io.StringIO(), "wavegen",
                      "no usable audio")


def test_a_header_claiming_an_absurd_rate_is_skipped_before_any_resampling(tmp_path, capsys):
    """Found by fuzzing: 1 Hz upsampled to 8 kHz grows 8000-fold, and 96,001 Hz (coprime with 8000) needs a
    resampling filter bank of gigabytes; both are now refused with a warning."""
    body = bytes(range(256)) * 4
    (tmp_path / "slow.wav").write_bytes(wav_header(1, 1, 1, 16, body))
    (tmp_path / "huge.wav").write_bytes(wav_header(1, 1, 96001, 16, body))
    (tmp_path / "good.wav").write_bytes(audio_bytes(".wav"))
    clips = AudioDataModule(str(tmp_path), val_fraction=0, test_fraction=0).splits()["train"]
    assert [clip.name for clip in clips] == ["good.wav"]
    huge, slow = capsys.readouterr().err.splitlines()
    assert huge == (f"wavegen: warning: skipping {tmp_path / 'huge.wav'}: resampling 96001 Hz to 8000 Hz needs a "
                    f"filter bank too large for memory: convert the file to a common rate (e.g. 16000 or 44100 Hz)")
    assert slow == (f"wavegen: warning: skipping {tmp_path / 'slow.wav'}: a sample rate of 1 Hz is not plausible "
                    f"audio (1,000 to 768,000 Hz)")
