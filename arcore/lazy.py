"""Public names of a package that load on first use, so importing the package (and each tool's ``--help``) stays
free of torch and Lightning: :func:`lazy_names` gives the package's module ``__getattr__`` and ``__dir__``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_names(package: str, homes: Mapping[str, str], public: Sequence[str]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name of ``homes`` (name -> the module that defines it) is
    imported from its module the first time it is asked for, then kept in the package like any other attribute;
    ``dir()`` lists ``public`` beside what is loaded already."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *public})

    return __getattr__, __dir__
