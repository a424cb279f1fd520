"""The documentation: the site builds in strict mode (a broken link, anchor, snippet or API reference fails it) and
the README's links lead to files of the repository (every page's commands run in ``tests/test_readme_commands.py``).

The site needs the ``docs`` extra, which the test install (``.ci/run``, the README's test command) includes."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build`` of ``config`` into ``site`` (strict mode comes from the config)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's notice about a future MkDocs, not a warning of ours
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--config-file", str(config), "--site-dir",
                           str(site)], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_site_builds_in_strict_mode_with_every_page_and_the_api(tmp_path):
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    api = (site / "api" / "arcore" / "index.html").read_text()
    assert 'id="arcore.sampling.engine.sample"' in api  # rendered from docstrings
    assert 'id="arcore.sampling.cache.StepCache"' in api
    assert 'id="arcore.contract.Capabilities"' in api and 'id="arcore.contract.Model"' in api  # the contract
    assert 'id="pixelgen.igpt.ImageGPT"' in (site / "api" / "pixelgen" / "index.html").read_text()
    assert 'id="wavegen.wavenet.WaveNet"' in (site / "api" / "wavegen" / "index.html").read_text()
    results = (site / "results" / "index.html").read_text()
    assert "pretrained/pixelcnn_mnist.safetensors" in results  # the README's table, included
    assert "bench_igpt" in results  # benchmarks/RESULTS.md, included
    assert (site / "pixelcnn_mnist_samples.png").is_file() and (site / "wavenet_sample.wav").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """The project's settings turn a link to a missing page into a failed build, not a warning."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the engine](engine.md).\n")
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}], plugins=["search"])
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    done = mkdocs_build(path, tmp_path / "site")
    assert done.returncode != 0
    assert "engine.md" in done.stderr


def test_the_readmes_links_lead_to_files_of_the_repository():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert "docs/index.md" in local and "CHANGELOG.md" in local
    for target in local:
        assert (ROOT / target).resolve().is_relative_to(ROOT) and (ROOT / target).exists(), target


def public_callables() -> list[tuple[str, object, object]]:
    """(name, what holds the docstring, the callable) of every public name of ``arcore``, ``pixelgen`` and
    ``wavegen`` and of its public methods, but a method that overrides one of the model contract's or Lightning's
    (documented where it is declared: :class:`arcore.training.module.AutoregressiveModule`)."""
    import inspect

    import pytorch_lightning as pl

    from arcore.training.data import CodesDataModule
    from arcore.training.module import AutoregressiveModule

    declared = {name for base in (AutoregressiveModule, pl.LightningModule, CodesDataModule)
                for name in dir(base)}
    found = []
    for package in ("arcore", "pixelgen", "wavegen"):
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                found.append((f"{package}.{name}", obj, obj))
            elif inspect.isclass(obj):
                found.append((f"{package}.{name}", obj, obj.__init__))
                for attribute, member in vars(obj).items():
                    method = getattr(member, "__func__", member)
                    overrides = obj not in (AutoregressiveModule,) and attribute in declared
                    if not attribute.startswith("_") and inspect.isfunction(method) and not overrides:
                        found.append((f"{package}.{name}.{attribute}", method, method))
    return found


def documented(doc: str) -> set[str]:
    """The names an ``Args:`` section documents (``width, layers: ...`` documents both)."""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    return {name.strip().lstrip("*") for match in re.finditer(r"^ {4}([\w*][\w*, ]*):", section, re.MULTILINE)
            for name in match.group(1).split(",")}


def test_the_public_api_documents_its_arguments():
    """mkdocstrings renders an ``Args:`` section as the parameters' table of the API reference. A constructor's
    parameter may be documented by the class that declares it (a model's ``lr``: its base class)."""
    import inspect

    found = public_callables()
    assert len(found) > 60
    missing = []
    for name, holder, function in found:
        parameters = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
        docs = [inspect.getdoc(c) or "" for c in inspect.getmro(holder)] if inspect.isclass(holder) else \
            [inspect.getdoc(holder) or ""]
        known = set().union(*map(documented, docs))
        missing += [f"{name}: {p}" for p in parameters if p not in known]
    assert not missing, missing
