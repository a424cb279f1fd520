"""A run's CPU threads: the cores free at its start, unless --threads or OMP_NUM_THREADS say otherwise."""

from __future__ import annotations

import pytest

from arcore.training import threads


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def loadavg(monkeypatch, *running: int) -> None:
    """Make successive reads of /proc/loadavg report these runnable-task counts (this process among them); the last
    one repeats."""
    counts = list(running)
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/loadavg":
            from io import StringIO

            count = counts.pop(0) if len(counts) > 1 else counts[0]
            return StringIO(f"5.00 4.00 3.00 {count}/300 12345\n")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)


@pytest.mark.parametrize(("running", "expected"), [(1, 2), (2, 1), (3, 1), (9, 1)])
def test_a_run_takes_the_cores_nothing_else_is_running_on(two_cores, monkeypatch, running, expected):
    loadavg(monkeypatch, running)
    count, why = threads.choose_threads(None)
    assert count == expected
    assert f"{running - 1} busy" in why and "--threads" in why


def test_the_user_chooses_with_threads_or_omp_num_threads(two_cores, monkeypatch):
    loadavg(monkeypatch, 9)
    assert threads.choose_threads(2) == (2, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(None) == (2, "OMP_NUM_THREADS")
    assert threads.choose_threads(1) == (1, "--threads")  # the flag wins over the environment


def test_without_proc_loadavg_every_core_counts_as_free(two_cores, monkeypatch):
    def missing(path, *args, **kwargs):
        raise OSError("no such file")

    monkeypatch.setattr("builtins.open", missing)
    assert threads.choose_threads(None)[0] == 2


def test_the_median_reading_ignores_a_passing_burst(monkeypatch):
    loadavg(monkeypatch, 9, 1, 1, 2, 1)
    assert threads.busy_cores(interval=0) == 0
