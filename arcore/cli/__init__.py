"""The command lines ``pixelgen`` and ``wavegen``: imports the rest of arcore, imported by none of it.

- :mod:`arcore.cli.launch`: the front of both console scripts, before torch loads: the commands, the ``sample``
  options, the dispatch;
- :mod:`arcore.cli.main`: ``run``, the Lightning commands and ``export``, and the one-line errors;
- :mod:`arcore.cli.runs`: ``fit | validate | test | predict``, LightningCLI with the project's checks (the shared
  settings of every run in ``arcore/cli/base.yaml``); :mod:`arcore.cli.run_folder` (a run's folder, name and lock),
  :mod:`arcore.cli.wandb_run` (its W&B run), :mod:`arcore.cli.configs` (the classes a config may name, the size of
  its YAML) and :mod:`arcore.cli.record` (test metrics into a weights file);
- :mod:`arcore.cli.resume`: the checks a resumed ``fit`` passes;
- :mod:`arcore.cli.export`: ``export``, a checkpoint as a weights file for sharing;
- :mod:`arcore.cli.sample` and :mod:`arcore.cli.chunks`: what every ``sample`` command does (each tool adds its
  own parser and output).

Lightning's private API is reached only through :mod:`arcore.training.lightning_private`.
"""
