"""The model registry: which model classes checkpoints and weights files may name, and the tool each belongs to;
and reading a model from such a file through it.

A file records its model's class as a name (``module.QualName``). That name is only ever looked up, never imported:
in :data:`MODELS`, which holds the classes registered with :func:`register_model`, and among the entry points of
the installed distributions. A tool (``pixelgen``, ``wavegen``) finds its models in the entry-point group
``<tool>.models`` (:func:`group`): ``pixelgen`` and ``wavegen`` declare their own there (``pyproject.toml``), and a
model in a user's own installed distribution joins a tool the same way::

    [project.entry-points."pixelgen.models"]
    tinychar = "tiny_char_model:TinyCharModel"

Installing that distribution is the user's consent to import its module; loading a file still imports nothing the
file names. Every class passes the contract check when it registers (:func:`arcore.contract.check_model_class`).
"""

from __future__ import annotations

import io
import sys
from importlib.metadata import EntryPoint, distributions, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arcore.contract import ContractError, check_model_class
from arcore.errors import UsageError, first_line
from arcore.files import checkpoint as checkpoint_io
from arcore.files import weights

if TYPE_CHECKING:
    import torch

    from arcore.contract import Model

MODELS: dict[str, tuple[str, type]] = {}
"""The model classes that checkpoints and weights files may name: the name a file records (``module.QualName``) to
the tool whose files hold it and the class."""

_SEEN: set[tuple[str, str, str, str]] = set()
"""The entry points (group, name, value, where their distribution is installed) :func:`load_models` has registered."""


def group(tool: str) -> str:
    """The entry-point group where the installed distributions declare the models of ``tool``.

    Args:
        tool: the command line tool (or package) that trains and samples the models, e.g. ``pixelgen``.
    """
    return f"{tool}.models"


def class_name(cls: type) -> str:
    """The name a file records for the model class ``cls``: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_model(tool: str, cls: type) -> type:
    """Let checkpoints and weights files of ``tool`` name ``cls`` and return ``cls``, after checking it keeps the
    model contract (:func:`arcore.contract.check_model_class`: a capability declared without its method is refused
    here, in one line). A class of the same name registered for another tool is refused; for the same tool, the
    newer class replaces it (its module was imported again).

    Args:
        tool: the command or package whose files hold the model, e.g. ``pixelgen``.
        cls: the model class.
    """
    check_model_class(cls)
    name = class_name(cls)
    if MODELS.get(name, (tool, cls))[0] != tool:
        raise ContractError(f"{name} is already registered for {MODELS[name][0]}")
    MODELS[name] = (tool, cls)
    return cls


def load_models(tool: str) -> None:
    """Register every model class that an installed distribution declares in ``tool``'s entry-point group
    (:func:`group`), each once per process (a distribution installed since the last call joins at the next); a
    declared class that cannot be imported or breaks the contract is one :class:`arcore.errors.UsageError` line
    naming its distribution.

    Args:
        tool: the tool whose models to register, e.g. ``pixelgen``.
    """
    for point in entry_points(group=group(tool)):
        seen = (point.group, point.name, point.value, str(point.dist.locate_file("")) if point.dist else "")
        if seen in _SEEN:
            continue
        try:
            cls = point.load()
            if not isinstance(cls, type):
                raise ContractError(f"{point.value} is not a class")
            register_model(tool, cls)
        except Exception as exc:  # noqa: BLE001 - an installed distribution's module, whatever it raises
            raise UsageError(f"the {tool} model {point.name!r} = {point.value} declared by {_distribution(point)} "
                             f"cannot be registered ({type(exc).__name__}: {first_line(exc)}): fix or uninstall "
                             f"that distribution") from None
        _SEEN.add(seen)


def _distribution(point: EntryPoint) -> str:
    dist = point.dist
    return f"the installed distribution {dist.name}" if dist is not None else "an installed distribution"


def declared_tool(name: str) -> str | None:
    """The tool whose entry-point group declares the class recorded as ``name``, read from the installed
    distributions' metadata alone (nothing is imported), or None.

    Args:
        name: a recorded class name, ``module.QualName``.
    """
    for dist in distributions():
        for point in dist.entry_points:
            if point.group.endswith(".models") and point.value.replace(":", ".") == name:
                return point.group.removesuffix(".models")
    return None


def declared_packages() -> set[str]:
    """The top-level packages whose model classes an installed distribution declares in an entry-point group of a
    tool (``pixelgen``, ``wavegen``, and a user's model packages), read from the metadata alone."""
    return {point.value.split(":")[0].split(".")[0] for dist in distributions() for point in dist.entry_points
            if point.group.endswith(".models")}


def model_class(checkpoint: dict[str, Any], path: str | Path, tool: str, command: str | None = "sample") -> type:
    """The model class a checkpoint records, looked up among the registered models of ``tool``. A checkpoint of
    another tool is named as such (``use `wavegen COMMAND```, or ``wavegen.load`` for a Python caller,
    ``command=None``); a missing, unknown or malformed class name is one :class:`arcore.errors.UsageError` line.

    Args:
        checkpoint: the file's contents (:func:`arcore.files.checkpoint.load_checkpoint_bytes`).
        path: the file, for the errors.
        tool: the tool reading it, e.g. ``pixelgen``.
        command: the command named in the error for another tool's file (None: a Python caller).
    """
    name = checkpoint.get("model_class") or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not name:
        raise UsageError(f"{path} is not a checkpoint of this project (no model class recorded)")
    load_models(tool)
    shown = repr(name)[:80]
    if not isinstance(name, str):
        raise UsageError(f"{path} records the model class {shown}, which is not a {tool} model")
    owner, cls = MODELS.get(name, (None, None))
    other = owner or declared_tool(name)
    if other is not None and other != tool:
        use = f"`{other} {command}`" if command else f"{other}.load"
        raise UsageError(f"{path} holds a {other} model ({name.rsplit('.', 1)[-1]}); use {use} for it")
    if cls is not None:
        return cls
    module_name, _, attribute = name.rpartition(".")
    own_packages = {registered.split(".")[0] for registered, (owner, _) in MODELS.items() if owner == tool}
    if not module_name or name.split(".")[0] not in own_packages:
        raise UsageError(f"{path} records the model class {shown}, which is not a {tool} model")
    if getattr(sys.modules.get(module_name), attribute, None) is not None:  # looked at, never imported
        raise UsageError(f"{path} records {shown}, which is not a {tool} model class")
    raise UsageError(f"{path} records the model class {shown}, which {tool} does not have (written by another "
                     f"version?)")


def load_checkpoint(path: str | Path, tool: str, map_location: str | torch.device = "cpu",
                    command: str | None = "sample") -> Model:
    """Load a model saved by ``fit`` (a ``.ckpt``) or ``export`` (a ``.safetensors`` weights file) and check it
    belongs to ``tool``; see :func:`read_model`.

    Args:
        path: the file.
        tool: the tool whose models it may hold, e.g. ``pixelgen``.
        map_location: where the weights go.
        command: the other tool's command named in the error for its file (None: a Python caller).
    """
    return read_model(path, tool, map_location, command)[0]


def read_model(path: str | Path, tool: str, map_location: str | torch.device = "cpu",
               command: str | None = "sample", what: str = "checkpoint") -> tuple[Model, dict[str, Any]]:
    """The model in a checkpoint or weights file of ``tool``, and the file's contents. The file is read once,
    checked for damage and read without running anything in it (:mod:`arcore.files.checkpoint`,
    :mod:`arcore.files.weights`); its class is found through the registry (:func:`model_class`).

    Args:
        path: the file.
        tool: the tool whose models it may hold, e.g. ``pixelgen``.
        map_location: where the weights go.
        command: the other tool's command named in the error for its file (None: a Python caller, told to use
            ``<tool>.load``).
        what: how errors name the file (``--ckpt``).
    """
    hint = f" (pass a .ckpt written by `{tool} fit` or a .safetensors written by `{tool} export`)"
    data = checkpoint_io.read_checkpoint_bytes(path, what, hint)
    checkpoint = checkpoint_io.load_checkpoint_bytes(data, path, what)
    cls: Any = model_class(checkpoint, path, tool, command)
    model: Any
    try:
        if checkpoint.get("weights_only"):  # settings and weights, nothing else: build, then fill in
            model = weights.build_checked(cls, {k: v for k, v in checkpoint["hyper_parameters"].items()
                                                if not k.startswith("_")}, checkpoint["state_dict"], f"{what} {path}")
            return model.to(map_location), checkpoint
        with checkpoint_io.allow_listed():
            model = cls.load_from_checkpoint(io.BytesIO(data), map_location=map_location, weights_only=True)
        return model, checkpoint
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - settings or weights that do not fit the class, in any way
        raise UsageError(f"{path}: its stored settings and weights do not build a {cls.__name__} "
                         f"({type(exc).__name__}: {first_line(exc)})") from None
