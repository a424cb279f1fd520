"""Sampling: the one loop over a model's positions, the caches a step keeps, decoding and fused native steps; torch
only, never Lightning.

- :mod:`arcore.sampling.engine`: ``sample`` and ``beam_search``, the loop, capture of a step;
- :mod:`arcore.sampling.cache`: ``Autoregressive`` (what the engine needs of a model), ``StepCache``, ``Sampler``
  (the step contract) and the cache-free reference;
- :mod:`arcore.sampling.decoding`: ``Decoding`` (temperature, top-k, top-p, greedy) and ``SampleOptions``;
- :mod:`arcore.sampling.native`: fused C++ steps, built on first use.
"""
