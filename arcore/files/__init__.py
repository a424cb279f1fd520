"""Files: atomic writes, checkpoints and weights files read safely, the model registry, and media written out.

- :mod:`arcore.files.atomic`: atomic replacement, output paths checked before any work, folder locks;
- :mod:`arcore.files.checkpoint`: checkpoints read without running their code, damage refused;
- :mod:`arcore.files.weights`: safetensors weights files for sharing a trained model;
- :mod:`arcore.files.registry`: which model classes a file may name (entry points), and reading a model from a file;
- :mod:`arcore.files.media`: writing a model's ``Images``, ``Audio`` and ``Text`` (:mod:`arcore.contract`) as PNG,
  WAV and text.

Before ``arcore.files`` was this package it was the module now at :mod:`arcore.files.atomic`; its names are found
here still (``from arcore.files import atomic_write``).
"""

from __future__ import annotations

from arcore.lazy import lazy_names

_ATOMIC = ("atomic_write", "check_output", "folder_lock", "make_parents", "nothing_left_on_failure",
           "refuse_replacing_inputs", "remove_if_empty", "remove_leftovers", "unique_temporary", "write_atomically")

__getattr__, __dir__ = lazy_names(__name__, dict.fromkeys(_ATOMIC, "arcore.files.atomic"), _ATOMIC)
