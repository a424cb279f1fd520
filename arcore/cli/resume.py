"""The check that a resumed ``fit`` trains what its config asks for: the same model class, model settings and data
settings as the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arcore.errors import UsageError
from arcore.training.data import CodesDataModule


def _plain(value: Any) -> Any:
    """Config values as plain data, so a tuple from the command line equals the list stored in a checkpoint."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in dict(value.items()).items()}
    return value


def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}"


def check_resume_matches_config(config: Any, path: str | Path, checkpoint: dict[str, Any],
                                datamodule_class: type[CodesDataModule]) -> None:
    """Refuse, in one line, a ``fit`` resuming a checkpoint of another model, other model settings or other data
    settings than the config's (``config`` is the subcommand's parsed config; ``path`` a file or what
    ``ckpt_path: last`` found).

    Given a checkpoint file, LightningCLI rebuilds the model from the hyperparameters stored in it and silently
    drops the config's, so another model class, width or palette asked for would quietly train the checkpoint's
    model instead; with ``last`` the config's model is built and the checkpoint's weights loaded into it. Of the data
    settings, those that change what is learned (``datamodule_class.resume_settings``: dataset, binarisation, bits,
    sample rate, crop sizes) must match too; the data's location may move.
    ``validate``/``test``/``predict`` evaluate the checkpoint's own model, which is what they are for.
    """
    how = "resume with the config it was trained with, or start a new run in another folder"
    hparams = checkpoint.get("hyper_parameters") or {}
    stored_class = hparams.get("_class_path") or checkpoint.get("model_class")
    wanted_class = config.model.get("class_path") if config.get("model") else None
    if stored_class and wanted_class and stored_class != wanted_class:
        raise UsageError(f"{path} holds {_a(stored_class.rsplit('.', 1)[-1])} but the config builds "
                         f"{_a(wanted_class.rsplit('.', 1)[-1])}: {how}")
    for kind, stored, wanted, keys in (
            ("model", hparams, (config.get("model") or {}).get("init_args"), None),
            ("data", datamodule_class.settings_from_checkpoint(checkpoint.get("datamodule_hyper_parameters") or {}),
             (config.get("data") or {}).get("init_args"), datamodule_class.resume_settings)):
        stored = {k: _plain(v) for k, v in stored.items() if not k.startswith("_")}
        wanted = _plain(wanted or {})
        differ = sorted(k for k in wanted.keys() & stored.keys() if (keys is None or k in keys)
                        and wanted[k] != stored[k])
        if differ:
            prefix = "--data." if kind == "data" else ""
            raise UsageError(f"{path} was trained with {', '.join(f'{prefix}{k}={stored[k]}' for k in differ)}, "
                             f"the config asks for {', '.join(f'{prefix}{k}={wanted[k]}' for k in differ)}: {how}")
