"""The native-build helper (arcore.sampling.native): builds that never block each other, the fallback, the switches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from arcore.sampling import native

ROOT = Path(__file__).resolve().parents[1]
PROBE = r"""
#include <Python.h>
#define INIT(name) INIT_(name)
#define INIT_(name) PyInit_##name
static PyModuleDef probe = {PyModuleDef_HEAD_INIT, "probe", nullptr, -1, nullptr};
PyMODINIT_FUNC INIT(TORCH_EXTENSION_NAME)(void) {
  PyObject* module = PyModule_Create(&probe);
  PyModule_AddIntConstant(module, "answer", 42);
  return module;
}
"""
LOAD = "import sys; from pathlib import Path; from arcore.sampling import native; " \
       "native.load('probe', Path(sys.argv[1]), what='the probe')"


def no_compiler(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """A fresh build cache in ``folder``, nothing loaded yet in this process, and no C++ compiler."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(folder))
    monkeypatch.setenv("CXX", str(folder / "no-such-compiler" / "g++"))
    monkeypatch.setattr(native, "_loaded", {})


def probe_source(folder: Path) -> Path:
    source = folder / "probe.cpp"
    source.write_text(PROBE)
    return source


def slow_compiler(folder: Path, seconds: float) -> tuple[Path, Path]:
    """A ``g++`` that marks the moment a compile starts, then sleeps ``seconds`` before compiling."""
    marker = folder / "compiling"
    wrapper = folder / "slow" / "g++"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -c "*) touch {marker}; sleep {seconds};; esac\n'
                       f'exec c++ "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, marker


def start_build(source: Path, cache: Path, compiler: Path) -> subprocess.Popen:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "CXX": str(compiler)}
    return subprocess.Popen([sys.executable, "-c", LOAD, str(source)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the first build ended before its compiler started"
        assert time.monotonic() < deadline, "the first build never started its compiler"
        time.sleep(0.1)


def test_a_build_killed_mid_way_does_not_block_the_next_load(tmp_path, monkeypatch):
    source, cache = probe_source(tmp_path), tmp_path / "cache"
    compiler, marker = slow_compiler(tmp_path, seconds=300)
    first = start_build(source, cache, compiler)
    wait_for(marker, first)
    os.killpg(first.pid, signal.SIGKILL)  # kill -9 of the build, its compiler included, mid-compile
    first.wait()
    assert list((cache / "arcore").glob("*.build-*")), "the killed build left its private folder behind"

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native, "_loaded", {})
    start = time.monotonic()
    module = native.load("probe", source, what="the probe")
    assert module is not None and module.answer == 42
    assert time.monotonic() - start < 60  # a fresh build of the probe: seconds, no wait on the dead one
    assert not list((cache / "arcore").glob("*.build-*"))  # the dead build's folder is cleared
    monkeypatch.setattr(native, "_loaded", {})
    assert native.load("probe", source, what="the probe").answer == 42  # now from the cache, no build


def test_a_load_during_a_live_build_says_so_and_uses_that_build(tmp_path, monkeypatch, capsys):
    source, cache = probe_source(tmp_path), tmp_path / "cache"
    compiler, marker = slow_compiler(tmp_path, seconds=3)
    first = start_build(source, cache, compiler)
    try:
        wait_for(marker, first)
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler" / "g++"))  # this process could not build
        monkeypatch.setattr(native, "_loaded", {})
        module = native.load("probe", source, what="the probe")
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0
    assert module is not None and module.answer == 42
    err = capsys.readouterr().err
    assert f"waiting for process {first.pid}, which is building this fused CPU step" in err
    assert "compiling" not in err


def test_without_a_compiler_load_warns_once_and_returns_none(tmp_path, monkeypatch):
    no_compiler(monkeypatch, tmp_path)
    source = probe_source(tmp_path)
    with pytest.warns(UserWarning, match="could not be built.*the probe uses the PyTorch step"):
        assert native.load("probe", source, what="the probe") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load("probe", source, what="the probe") is None  # decided once per process


def test_one_switch_turns_every_fused_step_off_and_one_each(monkeypatch):
    assert native.enabled("WAVEGEN_FUSED")
    monkeypatch.setenv("WAVEGEN_FUSED", "0")
    assert not native.enabled("WAVEGEN_FUSED") and native.enabled("PIXELGEN_FUSED")
    monkeypatch.delenv("WAVEGEN_FUSED")
    monkeypatch.setenv("ARCORE_FUSED", "0")
    assert not native.enabled("WAVEGEN_FUSED") and not native.enabled("PIXELGEN_FUSED")


def test_builds_are_kept_per_source_and_kind_of_cpu(tmp_path):
    source = probe_source(tmp_path)
    name = native.build_name("probe", source)
    assert name.startswith(f"probe_{native.cpu_tag()}_")
    source.write_text(PROBE + "\n// changed\n")
    assert native.build_name("probe", source) != name
