"""Weights files for sharing a trained model: safetensors, with everything needed to rebuild it in the metadata.

``pixelgen export`` / ``wavegen export`` turn a checkpoint of ``fit`` into one ``.safetensors`` file: the weights
``sample`` and ``test`` use (the EMA average when the run kept one, which is what ``fit`` stores as the checkpoint's
``state_dict``), persistent buffers included (an image GPT's palette), and JSON strings in the metadata (see
:func:`metadata_of`): the model class, its settings, the data settings without the local path, how long it trained,
and the metrics known for it. No optimiser, scheduler, loop or callback state.

safetensors holds raw tensors behind a JSON header, so reading one runs nothing whatever it holds; its format has no
checksum, so the export records the SHA-256 of the tensor bytes and every read checks it (flipped bytes in a weight
are refused, as a checkpoint's CRCs are). :func:`checkpoint_from_weights` gives the file's contents in the shape of
a checkpoint (``state_dict``, ``hyper_parameters`` with ``_class_path``, ``model_class``,
``datamodule_hyper_parameters``), so every reader of checkpoints (``sample``, ``test`` / ``validate`` / ``predict``,
``--prime-from``, the Python ``load``) accepts these files as it accepts a ``.ckpt``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from arcore.errors import UsageError, first_line

SUFFIX = ".safetensors"
MAX_HEADER = 100 * 2 ** 20  # safetensors' own limit on the JSON header, in bytes
CHECKSUM = "weights_sha256"
"""The SHA-256 of the tensor bytes alone: what every file records (readers of earlier versions check it), and all a
file written before :data:`FILE_CHECKSUM` existed is checked against."""
FILE_CHECKSUM = "file_sha256"
"""The SHA-256 of the whole file but this entry: the header (every setting, every tensor's dtype, shape and place)
as canonical JSON, then the tensor bytes. A file that records it is checked against it, so a changed setting (a
sample rate, an image width) is refused as a changed weight is."""


def is_weights_file(data: bytes, path: str | Path) -> bool:
    """Whether ``data`` is (or claims to be, by its suffix or its first bytes) a safetensors file: an 8-byte
    little-endian header size, then a JSON object. Torch checkpoints start with ``PK`` (zip) or a pickle opcode,
    never with this, so a renamed checkpoint is read as what it is."""
    size = int.from_bytes(data[:8], "little")
    if len(data) > 8 and data[8:9] == b"{" and size <= MAX_HEADER:  # first: a header size may start with 0x80
        return True
    if data[:2] == b"PK" or data[:1] == b"\x80":
        return False
    return Path(path).suffix.lower() == SUFFIX


def split(data: bytes, path: str | Path, what: str) -> tuple[dict[str, Any], dict[str, str], bytes]:
    """The header (tensor table), the metadata and the tensor bytes of a safetensors file, checked: whole, not cut
    short, its weights matching the checksum the export recorded. One line for anything wrong."""
    name = f"{what} {path}"
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if len(data) < 8 or size > MAX_HEADER or data[8:9] != b"{":
        empty = " (the file is empty)" if not data else ""
        raise UsageError(f"{name} is not a readable safetensors file{empty}: it does not start with a safetensors "
                         f"header")
    if 8 + size > len(data):
        raise UsageError(f"{name} is cut short: its header alone needs {8 + size:,} bytes, the file holds "
                         f"{len(data):,}; use an intact copy")
    try:
        header = json.loads(data[8: 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{name} is damaged: its safetensors header is not valid JSON ({exc})") from None
    metadata = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UsageError(f"{name} is not a weights file of this project: it holds no metadata (write one with "
                         f"the `export` command of the tool that trained it)")
    body = data[8 + size:]
    ends = [entry["data_offsets"][-1] for entry in header.values() if isinstance(entry, dict)
            and isinstance(entry.get("data_offsets"), list) and entry["data_offsets"]]
    if ends and all(isinstance(end, int) for end in ends) and max(ends) > len(body):
        raise UsageError(f"{name} is cut short: its tensors need {max(ends):,} bytes after the header, the file "
                         f"holds {len(body):,}; use an intact copy")
    recorded = metadata.get(CHECKSUM)
    if recorded is None:
        raise UsageError(f"{name} is not a weights file of this project: its metadata records no {CHECKSUM} (write "
                         f"one with the `export` command of the tool that trained it)")
    whole = metadata.get(FILE_CHECKSUM)
    if whole is not None and _file_digest(header, metadata, body) != whole:
        raise UsageError(f"{name} is damaged: its settings or tensors do not match the SHA-256 recorded in it (the "
                         f"file was altered or cut short); use an intact copy")
    if hashlib.sha256(body).hexdigest() != recorded:
        raise UsageError(f"{name} is damaged: its tensor bytes do not match the SHA-256 recorded in it (the file was "
                         f"altered or cut short); use an intact copy")
    return header, metadata, body


def _file_digest(header: Mapping[str, Any], metadata: Mapping[str, str], body: bytes) -> str:
    """:data:`FILE_CHECKSUM` of a file's tensor table ``header``, its ``metadata`` (the entry itself left out) and
    its tensor bytes."""
    table = {**header, "__metadata__": {k: v for k, v in metadata.items() if k != FILE_CHECKSUM}}
    digest = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    digest.update(body)
    return digest.hexdigest()


def checkpoint_from_weights(data: bytes, path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A weights file's contents in the shape of a checkpoint (module docstring), on the CPU, with
    ``weights_only: True`` and the file's ``metadata``. Nothing in the file runs: the tensors are parsed by
    safetensors, the settings are JSON."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    _, metadata, _ = split(data, path, what)
    try:
        state_dict = load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise UsageError(f"{what} {path} is damaged: its tensor table does not hold together ({first_line(exc)})"
                         ) from None
    check_finite(state_dict, f"{what} {path}")
    fields = {key: _json_field(metadata, key, path, what) for key in ("hyper_parameters", "data")}
    if not all(isinstance(value, dict) for value in fields.values()):
        raise UsageError(f"{what} {path} is damaged: its hyper_parameters and data metadata must be JSON objects")
    model_class = metadata.get("model_class")
    hparams = {k: v for k, v in fields["hyper_parameters"].items() if not k.startswith("_")}
    return {"state_dict": state_dict, "model_class": model_class,
            "hyper_parameters": {"_class_path": model_class, **hparams},
            "datamodule_hyper_parameters": fields["data"], "pytorch-lightning_version": _lightning_version(),
            "weights_only": True, "metadata": metadata}


def metadata_of(checkpoint: Mapping[str, Any], model: object, source: str | Path, tool: str
                ) -> dict[str, str]:
    """What a weights file records about ``model`` (built from ``checkpoint``, the file ``source``, of the command
    line tool ``tool``), every value a string (safetensors' rule), the structured ones JSON:

    - ``model_class``, ``hyper_parameters``: the class path and its settings (``load`` builds the model from them);
    - ``data``: the data settings it was trained on, without ``root`` (a path on the trainer's machine; ``sample
      --data-root`` or the data module's ``root=`` names it where the file is used);
    - ``weights``: ``ema`` (the average of ``arcore.training.callbacks.EMA``, what validation, test and sample use) or
      ``trained`` (the weights as trained, when the run kept no average);
    - ``trained``: epoch, step and training seconds when the checkpoint records them;
    - ``metrics``: ``validation``, the score its checkpoint callbacks monitored at the save and the best of the run;
      ``test``, null with a ``note`` saying so: no test metric is stored in a checkpoint, and ``test --ckpt_path
      FILE --record_metrics true`` measures the file's and records them here (``test``, ``test_data``);
    - :data:`CHECKSUM` of the tensor bytes, added by :func:`encode`.
    """
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    data = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items()
            if not k.startswith("_") and k != "root"}
    validation: dict[str, float] = {}
    train_seconds = None
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if not isinstance(state, dict):
            continue
        if name.startswith("ModelCheckpoint") and state.get("monitor"):
            for key, value in (("", state.get("current_score")), (" (best of the run)", state.get("best_model_score"))):
                score = _finite(value)
                if score is not None:
                    validation[f"{state['monitor']}{key}"] = score
        elif name == "Timer":
            train_seconds = _finite((state.get("time_elapsed") or {}).get("train"))
    trained = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step"),
               "train_seconds": None if train_seconds is None else round(train_seconds, 1),
               "checkpoint": Path(source).name}
    note = (f"no test metrics recorded yet: `{tool} test --config ... --ckpt_path FILE --record_metrics true` "
            f"measures this file's and records them here")
    return {"format": "pt", "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "hyper_parameters": _json(hparams), "data": _json(data),
            "weights": "ema" if "current_model_state" in checkpoint else "trained", "trained": _json(trained),
            "metrics": _json({"validation": validation, "test": None, "note": note})}


def encode(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file of ``state_dict`` (on the CPU, each tensor its own contiguous copy) with ``metadata``, the
    SHA-256 of its tensor bytes (:data:`CHECKSUM`) and that of the whole file (:data:`FILE_CHECKSUM`)."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state_dict.items()}
    metadata = {k: v for k, v in metadata.items() if k not in (CHECKSUM, FILE_CHECKSUM)}
    plain = save(tensors, metadata=metadata)
    size = int.from_bytes(plain[:8], "little")
    body = plain[8 + size:]  # the tensor bytes and their places do not depend on the metadata
    header = {k: v for k, v in json.loads(plain[8: 8 + size]).items() if k != "__metadata__"}
    metadata[CHECKSUM] = hashlib.sha256(body).hexdigest()
    return save(tensors, metadata={**metadata, FILE_CHECKSUM: _file_digest(header, metadata, body)})


def check_finite(state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse, in one line, weights holding NaN or inf (``name`` names the file): a model that diverged samples
    black images or silence, and its scores are NaN."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UsageError(f"{name} holds non-finite weights ({bad:,} NaN or inf values in {key}): the run that "
                             f"made it diverged; use an earlier checkpoint of that run")


def build_checked(cls: type[torch.nn.Module], settings: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                  name: str) -> torch.nn.Module:
    """``cls(**settings)`` holding ``state_dict``, with the settings checked against the tensors before anything
    large is built (``name`` names the file in errors). The model is first laid out on torch's ``meta`` device
    (no memory), its construction stopped as soon as it asks for more weight tensors or weights than the file
    holds (a small file saying ``layers: 100000``); then every tensor's name, shape and dtype must match the
    model's (an int32 tensor is not cast into a float weight). Only then is the model built and filled in."""
    limits = (len(state_dict), sum(t.numel() for t in state_dict.values()))
    try:
        with _weights_at_most(*limits, name), torch.device("meta"):
            _match(cls(**settings).state_dict(), state_dict, name)
    except UsageError:
        raise
    except Exception:  # noqa: BLE001, S110 - a constructor that needs real tensors: checked on the real build below
        pass
    try:
        with _weights_at_most(*limits, name):
            model = cls(**settings)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - settings that do not fit the class, in any way
        raise UsageError(f"{name}: its settings do not build a {cls.__name__} ({type(exc).__name__}: "
                         f"{first_line(exc)})") from None
    _match(model.state_dict(), state_dict, name)
    model.load_state_dict(state_dict)
    return model


@contextmanager
def _weights_at_most(tensors: int, elements: int, name: str) -> Iterator[None]:
    """Stop any module construction inside the block once it registers more than ``tensors`` weight tensors or
    ``elements`` weights in all."""
    seen = [0, 0]

    def count(module: torch.nn.Module, key: str, parameter: torch.nn.Parameter | None) -> None:
        if parameter is not None:
            seen[0] += 1
            seen[1] += parameter.numel()
            if seen[0] > tensors or seen[1] > elements:
                raise UsageError(f"{name}: its settings describe a larger model than the weights it holds "
                                 f"({tensors:,} tensors, {elements:,} weights): they were altered or belong to "
                                 f"another file; use an intact copy")

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        yield
    finally:
        handle.remove()


def _match(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse tensors that are not the model's: a missing or extra name, another shape or another dtype."""
    missing, extra = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    if missing or extra:
        raise UsageError(f"{name}: its settings and tensors do not match (" + "; ".join(
            part for part in (f"missing {', '.join(missing[:3])}" if missing else "",
                              f"unexpected {', '.join(extra[:3])}" if extra else "") if part) + ")")
    for key, tensor in expected.items():
        if tuple(given[key].shape) != tuple(tensor.shape) or given[key].dtype != tensor.dtype:
            raise UsageError(f"{name}: tensor {key} is {str(given[key].dtype).removeprefix('torch.')} "
                             f"{list(given[key].shape)} where its settings build "
                             f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}: the file was altered "
                             f"or its settings belong to another file")


def with_test_metrics(data: bytes, path: str | Path, metrics: Mapping[str, float], test_data: Mapping[str, Any],
                      what: str = "checkpoint") -> bytes:
    """The weights file ``data`` again, its ``metrics`` metadata now holding ``test`` (``metrics``, rounded to 6
    digits) and ``test_data`` (the settings of the data they were measured on, without ``root``); the tensors, and
    so the checksum, unchanged."""
    checkpoint = checkpoint_from_weights(data, path, what)
    known = _json_field(checkpoint["metadata"], "metrics", path, what)
    known = {k: v for k, v in known.items() if k != "note"} if isinstance(known, dict) else {}
    known["test"] = {name: round(float(value), 6) for name, value in sorted(metrics.items())}
    known["test_data"] = {k: v for k, v in test_data.items() if not k.startswith("_") and k != "root"}
    metadata = {k: v for k, v in checkpoint["metadata"].items() if k != CHECKSUM}
    return encode(checkpoint["state_dict"], {**metadata, "metrics": _json(known)})


def _json(value: Any) -> str:
    """Settings as JSON: tuples as lists, paths and anything else unusual as strings."""
    return json.dumps(value, default=str, sort_keys=True)


def _json_field(metadata: Mapping[str, str], key: str, path: str | Path, what: str) -> Any:
    try:
        return json.loads(metadata.get(key, "{}"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} is damaged: its {key} metadata is not valid JSON ({exc})") from None


def _finite(value: Any) -> float | None:
    """A number (or one-element tensor) as a float, or None when it is missing or not finite."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _lightning_version() -> str:
    from importlib.metadata import version

    return version("pytorch-lightning")
