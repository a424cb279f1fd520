"""Every benchmark script runs at a tiny size (``--tiny``): an API that a benchmark uses and that changes breaks a test
here instead of the next person who measures. The figures of a tiny run mean nothing; the tables' shapes do."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from benchmarks import bench_capture, bench_igpt, bench_pixelcnn, bench_wavenet
from tests.test_audio_data import SHARED_AUDIO

ROOT = Path(__file__).resolve().parents[1]
DATA = SHARED_AUDIO


@pytest.fixture(autouse=True)
def _restore_threads_and_steps():
    """The benchmarks set torch's thread count and switch the fused steps on and off in ``os.environ``: put both
    back as they were (monkeypatch would not undo a variable the benchmark sets that was unset before)."""
    names = ("ARCORE_FUSED", "PIXELGEN_FUSED", "WAVEGEN_FUSED")
    saved = {name: os.environ.pop(name, None) for name in names}
    threads = torch.get_num_threads()
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    torch.set_num_threads(threads)


def rows(report: str, header: str) -> list[list[str]]:
    """The cells of the body rows of the Markdown table whose header row starts with ``| header |``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        body.append([cell.strip() for cell in line.strip("|").split("|")])
    return body


def number(cell: str) -> float:
    """A table cell such as ``**1,334**``, ``158x`` or ``0.59 s`` as a float."""
    return float(re.sub(r"[^0-9.]", "", cell.split()[0]))


def test_bench_igpt_runs_tiny_and_rewrites_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Image GPT (`python -m benchmarks.bench_igpt`)\n\nold\n\n## Next\n\nkept\n")
    report = bench_igpt.main(["--tiny", "--threads", "1", "--results", str(results)])
    speed = rows(report, "model")
    # both tiny models at batch 1 and their larger batch, the fused step wherever it serves the batch
    assert {(row[0], row[3], row[4]) for row in speed} >= {("tiny 4x4", "1", "fused"), ("tiny 4x4", "16", "PyTorch"),
                                                        ("tiny reference 6x6", "2", "fused")}
    assert all(number(row[5]) > 0 and number(row[6]) > 0 for row in speed)
    along = rows(report, "positions")
    assert [row[0] for row in along] == ["0-3", "9-12", "18-21", "27-30", "32-35"]  # 36 tokens, windows of 4
    assert "aten::" in report  # the profile of the PyTorch step ran through the engine's runner
    text = results.read_text()
    assert "old" not in text and "tiny reference 6x6" in text and text.endswith("## Next\n\nkept\n")


def test_bench_pixelcnn_runs_tiny():
    report = bench_pixelcnn.main(["--tiny"])
    training = rows(report, "config")
    assert len(training) == 5 and all(number(row[2]) > 0 for row in training)  # softmax and mixture, 1 and 8 bits
    assert [int(row[1]) for row in training] == [64, 32, 32, 64, 64]  # each config's own batch
    speed = rows(report, "batch")[:2]
    assert [row[0] for row in speed] == ["1", "16"]
    for row in speed:  # the speed-up is the ratio of the two rates, each rate the batch's codes over its time
        cached, free = number(row[1]), number(row[2])  # which is faster is the benchmark's finding, not the test's
        assert cached > 0 and free > 0 and number(row[3]) == pytest.approx(cached / free, rel=0.1, abs=0.6)
        codes = int(row[0]) * 48  # a batch of tiny 3x4x4 images
        for rate, cell in ((cached, row[4]), (free, row[5])):  # the time a batch takes, as rounded in the table
            decimals = len(cell.split()[0].partition(".")[2])
            assert number(cell) == pytest.approx(codes / rate, rel=0.2, abs=0.5 * 10 ** -decimals), (cell, rate)
    sizes = rows(report, "image")
    assert [(row[0], int(row[1])) for row in sizes] == [("3x2x2", 12), ("3x4x4", 48)]
    assert all(number(row[2]) > 0 and number(row[3]) > 0 for row in sizes)  # a code's cost, cached and cache-free
    assert "aten::" in report


def test_bench_wavenet_runs_tiny_with_or_without_r9y9():
    report = bench_wavenet.main(["--tiny", "--threads", "1"])
    sampling = rows(report, "model")
    assert len(sampling) == 6  # three shipped configs at batch 1 and 16
    assert all(number(row[3]) > 0 and number(row[5]) > 0 for row in sampling)
    r9y9 = [row[7] for row in sampling]
    if bench_wavenet.have_r9y9():
        assert all(number(cell) > 0 for cell in r9y9)
    else:  # its column is left empty, the rest still measured
        assert r9y9 == ["-"] * 6
    assert [row[1] for row in rows(report, "batch")] == ["fused, float16 weights", "fused", "PyTorch"] * 2
    assert len(rows(report, "samples/s")) == 1 and "aten::" in report


def test_r9y9_is_built_at_the_benchmarked_sizes():
    pytest.importorskip("wavenet_vocoder")  # the optional extra: pip install -e '.[bench]'
    model = next(iter(bench_wavenet.models(bench_wavenet.TINY).values()))[0]
    assert bench_wavenet.r9y9_rate(model, 1, 16, repeats=1) > 0


def test_bench_capture_runs_tiny_with_every_configs_training_step():
    report = bench_capture.main(["--tiny", "--batches", "1", "--train", "--threads", "1"])
    sampling = rows(report, "model")
    assert [row[0] for row in sampling] == ["PixelCNN", "image GPT", "WaveNet"]
    assert all(number(row[2]) > 0 and number(row[3]) > 0 for row in sampling)
    trained = [row[0] for row in rows(report, "config")]
    # every run config, the class-conditional and mel-conditioned WaveNets included (base.yaml is not a model)
    expected = sorted(p.name for p in bench_capture.CONFIGS.glob("*.yaml") if p.name != "base.yaml")
    assert trained == expected


def test_bench_vocoder_runs_tiny_with_its_baselines_in_each_frame_layout():
    from benchmarks import bench_vocoder

    report = bench_vocoder.main(["--tiny", "--temperatures", "1.0", "0.5", "--frames", "20/80", "80/160/640"])
    table = rows(report, "resynthesis from the same frames")
    classical = ["8-bit mu-law round trip (ceiling)", "mel-constrained Griffin-Lim, 100 iterations",
                 "torchaudio least squares + Griffin-Lim, 100 iterations"]
    assert [row[0] for row in table] == [*classical * 3, "`untrained`, temperature 1", "`untrained`, temperature 0.5"]
    assert [row[1] for row in table] == [  # the layouts asked for, then the model's own with its rows
        *["20 bands, hop 80, window 320 (0.25 per sample)"] * 3,
        *["80 bands, hop 160, window 640 (0.50 per sample)"] * 3,
        *["80 bands, hop 80, window 320 (1.00 per sample)"] * 5]
    pesq = [number(row[2]) for row in table]
    assert pesq[0] == pesq[3] == pesq[6]  # the same clips in every layout: the round trip scores the same
    assert pesq[6] > pesq[7] > pesq[9] and pesq[6] > pesq[8] > pesq[9]  # both inversions above an untrained model
    assert all(number(row[5]) > 0 for row in table if not row[0].startswith("8-bit"))  # timed


def test_bench_vocoder_scores_the_classical_inversions_without_a_model(tmp_path, capsys):
    import soundfile

    from benchmarks import bench_vocoder
    from benchmarks.common import speech_like

    for i in range(40):
        soundfile.write(tmp_path / f"clip{i}.wav", speech_like(120 + 5 * i, 1.0), 8000)
    report = bench_vocoder.main(["--data-root", str(tmp_path), "--frames", "20/80", "--clips", "2", "--seconds", "1"])
    table = rows(report, "resynthesis from the same frames")
    assert [(row[0], row[1]) for row in table] == [
        ("8-bit mu-law round trip (ceiling)", "20 bands, hop 80, window 320 (0.25 per sample)"),
        ("mel-constrained Griffin-Lim, 100 iterations", "20 bands, hop 80, window 320 (0.25 per sample)"),
        ("torchaudio least squares + Griffin-Lim, 100 iterations", "20 bands, hop 80, window 320 (0.25 per sample)")]
    distance = [number(row[4]) for row in table]
    assert distance[1] < distance[2]  # the mel-constrained inversion matches the frames closer
    for flags, message in [(["--frames", "20"], "--frames 20: write BANDS/HOP or BANDS/HOP/WINDOW"),
                           (["--frames", "20/80/100"], "--frames 20/80/100: mel frames need"),
                           ([], "--data-root is required")]:
        with pytest.raises(SystemExit) as exit_:
            bench_vocoder.main([*(["--data-root", str(tmp_path)] if flags else []), *flags])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_bench_digits_runs_tiny_through_the_recogniser():
    from benchmarks import bench_digits

    report = bench_digits.main(["--tiny", "--frames", "20/80"])
    table = rows(report, "recognised")
    classical = ["mel-constrained Griffin-Lim, 100 iterations",
                 "torchaudio least squares + Griffin-Lim, 100 iterations"]
    assert [row[0] for row in table] == ["original", "8-bit mu-law round trip (ceiling)", *classical * 2,
                                         "`untrained`, temperature 0.6"]
    assert [row[1] for row in table] == ["-", "-", *["20 bands, hop 80, window 320 (0.25 per sample)"] * 2,
                                         *["80 bands, hop 80, window 320 (1.00 per sample)"] * 3]
    counts = [tuple(map(int, row[2].split("/"))) for row in table]
    assert all(files == 20 and 0 <= right <= 20 for right, files in counts)  # one take of 2 speakers x 10 digits
    if counts[0][0]:
        assert [float(row[3]) for row in table] == [round(right / counts[0][0], 3) for right, _ in counts]
    assert table[0][4:] == ["-", "-"]  # the originals are the reference
    assert number(table[1][4]) > number(table[-1][4])  # the mu-law ceiling above an untrained vocoder
    assert number(table[4][4]) > number(table[-1][4])  # so is mel-constrained Griffin-Lim from the same frames


def test_digit_recogniser_hears_a_digit_word_in_speech_and_none_in_silence():
    from benchmarks.bench_digits import DIGITS, Recogniser
    from wavegen.data import read_audio

    recognise = Recogniser()
    assert recognise(torch.zeros(8000), 8000) is None  # silence holds no word (asked first: PocketSphinx keeps
    # some state from one utterance to the next, and after loud speech it can hear a word in silence)
    speech = read_audio(ROOT / "docs" / "wavenet_vocoder_original.wav", 8000)  # held-out speech, not a digit
    assert recognise(speech, 8000) in DIGITS  # its grammar holds the ten digits: speech is heard as one of them
    resampled = torch.nn.functional.interpolate(speech[None, None], scale_factor=2, mode="linear")[0, 0]
    assert recognise(resampled, 16000) in DIGITS  # at its own rate already: no resampling


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "spoken-digits").is_dir(), reason="needs the real data in ../shared/data")
def test_digit_recogniser_answers_real_spoken_digits_correctly():
    """Take 0 of every speaker of the spoken-digit recordings: the recogniser names the digit said far above
    chance (6 in 60 by guessing; 48 when measured)."""
    from benchmarks.bench_digits import DIGITS, Recogniser
    from wavegen.data import read_audio

    recognise = Recogniser()
    files = sorted((DATA / "spoken-digits").glob("*_0.wav"))
    heard = [recognise(read_audio(f, 8000), 8000) == DIGITS[int(f.name[0])] for f in files]
    assert len(files) == 60 and sum(heard) >= 40


@pytest.mark.parametrize(("names", "flags", "message"), [
    ([], [], "--data-root .* holds no audio files"),
    (["hello.wav", "1_ann_0.wav"], [], "--data-root .*1 audio file\\(s\\) not named DIGIT_SPEAKER_TAKE.*hello.wav"),
    (["1_ann_0.wav"], ["--takes", "3"], "--takes 3: no file of --data-root"),
    (["1_ann_0.wav"], ["--temperatures", "0"], "--temperatures must be > 0"),
])
def test_bench_digits_refuses_bad_input_in_one_line(tmp_path, capsys, names, flags, message):
    import soundfile

    from benchmarks import bench_digits
    from benchmarks.common import speech_like

    for name in names:
        soundfile.write(tmp_path / name, speech_like(120, 0.5), 8000)
    with pytest.raises(SystemExit) as exit_:
        bench_digits.main(["--data-root", str(tmp_path), "--models", "pretrained/wavenet_vocoder.safetensors",
                           *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(f"^bench_digits: error: {message}", err), err


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason="no shared real audio on this machine")
def test_digit_recogniser_understands_most_real_digits():
    from benchmarks.bench_digits import DIGITS, Recogniser
    from wavegen.data import read_audio

    recognise = Recogniser()
    files = sorted((SHARED_AUDIO / "spoken-digits").glob("*_0.wav"))
    right = sum(recognise(read_audio(path, 8000), 8000) == DIGITS[int(path.name[0])] for path in files)
    assert len(files) == 60 and right >= 40  # 49 of the 60 first takes with pocketsphinx 5.1.1
