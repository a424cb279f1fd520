"""What a run's config may hold: the classes it may name (``class_path``, imported by jsonargparse before their
type is checked) and how far its YAML aliases may expand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from arcore.errors import UsageError
from arcore.files.registry import MODELS, declared_packages

TRUSTED_PACKAGES = ("arcore", "pytorch_lightning", "lightning_fabric", "torch")
"""Packages whose classes a config may name (``class_path``) beside those of the tools and their registered models:
the core, and Lightning's and torch's callbacks, loggers and plugins."""


def restrict_class_paths(folder: Path) -> None:
    """Let a config or a flag name classes (``class_path``) of :data:`TRUSTED_PACKAGES`, of the packages whose
    models an installed distribution declares (the tools' own and users', by
    :func:`arcore.files.registry.declared_packages`), of the registered models' packages and of the modules in
    ``folder`` (a user's own callback beside the config: the working folder) only. jsonargparse imports the module a
    ``class_path`` names before it checks that the class is of the right type, so any installed module's code would
    run from a config; its import-path policy refuses the others before the import."""
    from jsonargparse import set_parsing_settings

    try:
        with os.scandir(folder) as entries:
            local = [entry.name.removesuffix(".py") for entry in entries if entry.name.endswith(".py")
                     or (entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")))]
    except OSError:  # a working folder this process cannot list holds nothing it could import
        local = []
    allowed = {*TRUSTED_PACKAGES, *declared_packages(), *(name.split(".")[0] for name in MODELS), *local}
    set_parsing_settings(import_path_denylist=["*"],
                         import_path_allowlist=sorted(name for name in allowed if name.isidentifier()))


MAX_CONFIG_VALUES = 1_000_000
"""The most values (mappings, lists and scalars, each alias counted as what it stands for) one YAML config or
value may hold: thousands of times a run's config, and far below what exhausts memory."""


def limit_yaml_expansion() -> None:
    """Have jsonargparse refuse, before building it, YAML that its aliases expand beyond :data:`MAX_CONFIG_VALUES`
    (an alias bomb: nine aliases of nine aliases, ten levels deep, are 9**10 strings from a few hundred bytes) or
    that refers to itself; anything else is read by jsonargparse's own YAML loader, as before."""
    from jsonargparse import get_loader, set_loader

    read = get_loader("yaml")
    if getattr(read, "bounded", False):
        return

    def bounded(stream: str, path: Any = None) -> Any:
        given = f"--config {path}" if path else "a YAML value"  # jsonargparse gives a config file's name
        try:
            node = yaml.compose(stream, Loader=yaml.SafeLoader)
            size = 0 if node is None else _yaml_values(node, {}, set(), given)
        except yaml.YAMLError:  # reported by jsonargparse's own loader, as before
            size = 0
        except RecursionError:
            raise UsageError(f"{given} nests its values too deeply to be read") from None
        if size > MAX_CONFIG_VALUES:
            raise UsageError(f"{given} expands, through its aliases (&name, *name), to more than "
                             f"{MAX_CONFIG_VALUES:,} values: refused before it is built (an alias bomb?); write the "
                             f"values out")
        return read(stream)

    bounded.bounded = True  # type: ignore[attr-defined]
    set_loader("yaml", bounded, (yaml.YAMLError,))


def _yaml_values(node: yaml.Node, counted: dict[int, int], open_nodes: set[int], given: str) -> int:
    """How many values the composed YAML ``node`` holds once built, each alias as the value it names (``counted``
    keeps the count of every node already seen, so a shared node is counted, not walked, again); ``given`` names the
    YAML in errors."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes:
        raise UsageError(f"{given} refers to itself through an alias (*name inside the value &name marks): it would "
                         f"never end")
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_yaml_values(key, counted, open_nodes, given) + _yaml_values(value, counted, open_nodes, given)
                       for key, value in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_yaml_values(item, counted, open_nodes, given) for item in node.value)
    else:
        size = 1
    open_nodes.discard(id(node))
    counted[id(node)] = size
    return size
