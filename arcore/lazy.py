"""Names that load on first use: a package's public names, so importing the package (and each tool's ``--help``) stays
free of torch and Lightning (:func:`lazy_names` gives the package's module ``__getattr__`` and ``__dir__``), and the old
dotted paths of moved modules (:func:`moved_modules`)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
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


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import finder that answers a module's old dotted path with the module at its new one: ``import
    arcore.callbacks`` gives ``arcore.training.callbacks`` itself (one module object, its classes unchanged), so
    configs and code written against the old path keep working. :func:`moved_modules` installs one."""

    def __init__(self, moves: Mapping[str, str]) -> None:
        self.moves = dict(moves)

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        if name not in self.moves:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.moves[spec.name])
        self._own_spec = module.__spec__  # the import system is about to replace it with the old path's
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._own_spec


def moved_modules(moves: Mapping[str, str]) -> None:
    """Keep the old dotted paths of moved modules importable: ``moves`` maps each old path to the new one (see
    :class:`MovedModules`). Installing the same moves twice is a no-op."""
    if not any(isinstance(finder, MovedModules) and finder.moves == dict(moves) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules(moves))
