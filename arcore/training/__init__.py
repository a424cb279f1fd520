"""Training on PyTorch Lightning: the base module every model subclasses, data, callbacks, stopping and threads.

- :mod:`arcore.training.module`: ``AutoregressiveModule``, exact likelihood, metrics, optimiser, sampling hooks;
- :mod:`arcore.training.data`: the base data module of integer codes and its resumable loaders;
- :mod:`arcore.training.callbacks`: samples logged during validation, EMA, the NaN guard, per-example likelihoods;
- :mod:`arcore.training.stopping`: a stopped ``fit`` keeps its work and resumes where it stopped;
- :mod:`arcore.training.precision`: bf16 mixed precision where the hardware runs it, float32 scoring;
- :mod:`arcore.training.threads`, :mod:`arcore.training.quiet`, :mod:`arcore.training.wandb_mode`: CPU threads, a
  quiet console, W&B's mode;
- :mod:`arcore.training.lightning_private`: every use of Lightning's private API, in one place.
"""
