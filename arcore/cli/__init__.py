"""Command-line plumbing shared by ``pixelgen`` and ``wavegen``, one module per job.

- :mod:`arcore.cli.main`: ``run``, the entry point of both console scripts, and the one-line errors;
- :mod:`arcore.cli.runs`: ``fit | validate | test | predict``, LightningCLI's commands (configs in
  ``lightning_configs/``), and the run folder, checkpoints and W&B run they use;
- :mod:`arcore.cli.resume`: the checks a resumed ``fit`` passes;
- :mod:`arcore.cli.export`: ``export``, a checkpoint as a weights file for sharing;
- :mod:`arcore.cli.sampling`: what every ``sample`` command sets up before drawing (``sample`` itself is each
  package's own parser on :mod:`arcore.sample_cli`).

Lightning's private API is reached only through :mod:`arcore.lightning_private`.
"""
