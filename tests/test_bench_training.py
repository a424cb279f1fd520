"""The training benchmark's tiny run: every shipped config builds, steps in float32 and bf16, and its table holds a
positive rate, a speed-up and a share of the peak for each row."""

from __future__ import annotations

import re
import sys

import pytest

from benchmarks import bench_training


@pytest.mark.parametrize("forced", ["0", "1"])
def test_tiny_run_prints_a_row_per_config(forced, monkeypatch, capsys):
    monkeypatch.setenv("ARCORE_BF16", forced)  # "1": the path of a machine with native bf16 (full timing)
    # forced "1" on a machine without bf16 runs the emulated bf16 step several times: the smallest config only
    configs = ["igpt_mnist", "pixelcnn_mnist", "wavenet_vocoder"] if forced == "0" else ["pixelcnn_mnist"]
    monkeypatch.setattr(sys, "argv", ["bench_training", "--tiny", "--configs", *configs])
    bench_training.main()
    lines = capsys.readouterr().out.splitlines()
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s*\|\s*", line.strip("| ")) for line in lines)
            if cells[0] in bench_training.CONFIGS and len(cells) == 7}
    assert sorted(rows) == sorted(configs)
    for threads, fp32, bf16, speedup, fp32_peak, bf16_peak in rows.values():
        assert threads == "1" and float(fp32) > 0 and float(bf16) > 0
        assert float(speedup.rstrip("x")) > 0
        assert 0 < float(fp32_peak.rstrip("%")) <= 100
        assert bf16_peak == "n/a" if forced == "0" else float(bf16_peak.rstrip("%")) > 0  # vs an emulated peak here
