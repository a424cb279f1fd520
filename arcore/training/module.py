"""Base LightningModule for every autoregressive model here: likelihood, metrics, optimiser, sampling hooks.

A subclass sets ``num_classes`` and ``event_shape`` and writes two things: ``forward`` (teacher-forced logits,
classes last) and ``render_samples`` (codes to a typed value of :mod:`arcore.files.media`: ``Images``, ``Audio`` or
``Text``); with those it trains, scores and samples (through the cache-free step). ``sampler`` (the incremental path,
:mod:`arcore.sampling.cache`) is an optimisation. What else it offers it declares in
:attr:`AutoregressiveModule.capabilities` (:class:`Capabilities`), which the callbacks and the command lines read
instead of probing attribute names: whether a prime cut from a data batch (:meth:`AutoregressiveModule.prime_from_data`)
makes completions worth logging, whether it resynthesises data from its own features (a vocoder), whether its weights
may be rounded to float16 values, and how many codes make a second of audio. Everything else,
the exact log-likelihood, bits/dim, the training loop, sampling and beam search through the shared engine, and
checkpoint identity, is written once here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, overload

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.data import AttributeDict
from pytorch_lightning.loggers import WandbLogger

from arcore.contract import Capabilities, required
from arcore.errors import UsageError
from arcore.files.media import Media
from arcore.sampling import engine
from arcore.sampling.cache import ForwardSampler, Sampler
from arcore.sampling.decoding import SampleOptions
from arcore.training import quiet
from arcore.training.lightning_private import attached_trainer

quiet.install()  # Lightning's advertisements and misleading hints off the console (arcore.training.quiet)


class AutoregressiveModule(pl.LightningModule):
    """p(x) = prod_t p(x_t | x_<t) over ``event_shape`` codes with ``num_classes`` values each.

    Args:
        lr: AdamW's peak learning rate, > 0.
        weight_decay: AdamW's weight decay, >= 0.
        warmup_steps: steps of linear warm-up to ``lr``.
        lr_schedule: ``cosine`` (down to 5% of ``lr`` at the run's last step) or ``constant`` after the warm-up.
    """

    num_classes: int
    event_shape: tuple[int, ...]
    num_labels: int = 0  # classes of the global conditioning label (0: unconditional)
    renders: ClassVar[type[Media]]
    """What :meth:`render_samples` returns (``Images``, ``Audio`` or ``Text`` of :mod:`arcore.files.media`), declared
    so that a command knows the file it writes before it draws."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 100,
                 lr_schedule: str = "cosine") -> None:
        super().__init__()
        if lr_schedule not in ("cosine", "constant"):
            raise UsageError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        if not (math.isfinite(lr) and lr > 0 and math.isfinite(weight_decay) and weight_decay >= 0
                and warmup_steps >= 0):
            raise UsageError(f"lr must be a finite number > 0, weight_decay finite and >= 0, warmup_steps >= 0; got "
                             f"lr={lr}, weight_decay={weight_decay}, warmup_steps={warmup_steps}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self._step_clock: float | None = None  # time of the previous training step (throughput)

    # ----- the model contract -------------------------------------------------------------------------------
    def event_shape_for(self, length: int | None) -> tuple[int, ...]:
        """Shape of one sample's codes; ``length`` only applies to models of variable length (audio).

        Args:
            length: the codes wanted along the first dimension (None: the model's own).
        """
        if length is not None and length != self.event_shape[0]:
            raise UsageError(f"this model generates a fixed shape {self.event_shape}; length does not apply")
        return self.event_shape

    def to_order(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, *event_shape, ...]`` to ``[B, N, ...]`` in generation order (row-major by default).

        Args:
            x: codes or logits ``[B, *event_shape, ...]``.
        """
        return x.flatten(1, len(self.event_shape))

    def prime_to_order(self, prime: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor:
        """A prefix along the first event dimension, ``[B, P, *event_shape[1:]]``, to ``[B, P * ...]`` codes.

        Args:
            prime: the first ``P`` steps of each sample.
            event_shape: the shape of one whole sample.
        """
        if prime.dim() != len(event_shape) + 1 or tuple(prime.shape[2:]) != tuple(event_shape[1:]) \
                or prime.shape[1] > event_shape[0]:
            rest = "".join(f", {s}" for s in event_shape[1:])
            raise UsageError(f"prime must have shape [B, P{rest}] with P <= {event_shape[0]}, "
                             f"got {list(prime.shape)}")
        return self.to_order(prime)

    def from_order(self, seq: torch.Tensor, event_shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`to_order` for a full sequence.

        Args:
            seq: codes ``[B, N, ...]`` in generation order.
            event_shape: the shape of one sample.
        """
        return seq.reshape(seq.shape[0], *event_shape, *seq.shape[2:])

    def sampler(self, batch_size: int, cond: Any, event_shape: tuple[int, ...]) -> Sampler:
        """The incremental sampler of one run (see :mod:`arcore.sampling.cache`). This default is the cache-free step,
        correct for any ``forward``; a model overrides it with a cached one, proven equal by the shared contract
        tests.

        Args:
            batch_size: the rows drawn at once.
            cond: the conditioning of those rows (labels, frames), or None.
            event_shape: the shape of one sample.
        """
        return ForwardSampler(self, batch_size, cond, event_shape)

    @required
    def render_samples(self, codes: torch.Tensor) -> Media:
        """Codes ``[B, *event_shape]`` as what they stand for: :class:`arcore.files.media.Images`, ``Audio`` or
        ``Text``.

        Args:
            codes: drawn or data codes ``[B, *event_shape]``.
        """
        raise NotImplementedError

    @property
    def hparams(self) -> AttributeDict:  # Lightning's: any mapping; a model's: by attribute
        """The settings ``save_hyperparameters`` recorded, by attribute (``self.hparams.layers``)."""
        return cast(AttributeDict, super().hparams)

    @property
    def capabilities(self) -> Capabilities:
        """What this model offers beyond the required contract (none by default); see :class:`Capabilities`."""
        return Capabilities()

    prime_axis: int = 1
    """The dimension of a data batch's items ``[B, ...]`` along which a prime is cut (2 for image rows)."""

    def prime_from_data(self, data: torch.Tensor, length: int) -> torch.Tensor:
        """The codes of the first ``length`` steps along :attr:`prime_axis` of ``data`` (a batch's first element
        as the data module gives it), ready as ``sample(prime=...)``; ``length = data.shape[prime_axis]`` gives the
        codes of the whole items. By default the data are the codes themselves; a model that encodes its data
        (an image GPT's palette) overrides this.

        Args:
            data: a batch's items, as the data module gives them.
            length: the steps along :attr:`prime_axis` to keep.
        """
        return data.narrow(self.prime_axis, 0, length)

    @property
    def prime_extent(self) -> int:
        """How many steps along :attr:`prime_axis` one data item has (an image's rows): the longest prime
        :meth:`prime_from_data` cuts. By default the data are the codes, so this is their extent."""
        return self.event_shape[self.prime_axis - 1]

    # ----- likelihood -------------------------------------------------------------------------------------------
    def check_codes(self, codes: torch.Tensor) -> None:
        """One-line errors for codes of the wrong shape, type or range.

        Args:
            codes: codes meant for this model.
        """
        shape = self.event_shape_for(codes.shape[-1] if len(self.event_shape) == 1 else None)
        if codes.dim() != len(shape) + 1 or tuple(codes.shape[1:]) != tuple(shape):
            raise UsageError(f"{type(self).__name__} expects codes of shape [B, {', '.join(map(str, shape))}], "
                             f"got {list(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise UsageError(f"codes must be integers in [0, {self.num_classes}), got {codes.dtype}")

    def log_prob(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-likelihood of each sample in nats, ``[B]``.

        Args:
            codes: integer codes ``[B, *event_shape]``.
            cond: their conditioning (labels), or None for an unconditional model.
        """
        logits = self(codes, cond)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision sums in float32
        logp = logits.log_softmax(dim=-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1)
        return logp.flatten(1).sum(dim=1)

    @property
    def num_codes(self) -> int:
        """Codes in one sample of ``event_shape``."""
        return math.prod(self.event_shape)

    def dims(self, codes: torch.Tensor) -> int:
        """Number of coded dimensions per sample (the denominator of bits/dim).

        Args:
            codes: a batch of codes.
        """
        return codes[0].numel()

    # ----- sampling --------------------------------------------------------------------------------------------
    def sample(self, n: int, *, cond: Any = None, prime: torch.Tensor | None = None, length: int | None = None,
               options: SampleOptions | None = None, generator: torch.Generator | None = None,
               **settings: Any) -> torch.Tensor:
        """``n`` samples ``[n, *event_shape]`` through the shared engine (see :func:`arcore.sampling.engine.sample`),
        drawn as ``options`` says (:class:`arcore.sampling.decoding.SampleOptions`) with ``settings`` by name replacing
        its values: ``temperature``, ``top_k``, ``top_p``, ``greedy``, ``use_cache``, ``compile``, ``progress``.

        Args:
            n: how many samples.
            cond: their conditioning (labels ``[n]``, frames), or None.
            prime: a prefix of each sample to continue (the top rows of an image, a clip's start), or None.
            length: the length of each sample, for a model of variable length (audio).
            options: how to draw (default: :class:`arcore.sampling.decoding.SampleOptions` defaults).
            generator: the random generator of the draws (the same seed, the same samples).
            settings: fields of ``options`` replaced by name (``temperature=0.8``).
        """
        return engine.sample(self, n, cond=cond, prime=prime, length=length, options=options, generator=generator,
                             **settings)

    def beam_search(self, n: int = 1, *, beams: int = 4, cond: Any = None, prime: torch.Tensor | None = None,
                    length: int | None = None, options: SampleOptions | None = None,
                    **settings: Any) -> engine.BeamResult:
        """The most likely completions and their log-likelihoods (see :func:`arcore.sampling.engine.beam_search`).

        Args:
            n: how many searches (one per prime or label).
            beams: the beams kept at every step.
            cond: the conditioning of the ``n`` searches, or None.
            prime: prefixes to complete, or None.
            length: the length of each sample, for a model of variable length.
            options: the run's settings (its decoding is not used: beam search keeps the likeliest).
            settings: fields of ``options`` replaced by name.
        """
        return engine.beam_search(self, n, beams=beams, cond=cond, prime=prime, length=length, options=options,
                                  **settings)

    # ----- training --------------------------------------------------------------------------------------------
    def unpack(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """A data-module batch ``(codes, labels)`` to ``(codes, cond)``; labels are dropped when unconditional.

        Args:
            batch: what the data module's loader gives.
        """
        codes, labels = batch
        return codes, (labels if self.num_labels else None)

    def scoring(self) -> torch.autocast:
        """A context that computes in float32 even inside a bf16 mixed-precision run (:mod:`arcore.training.precision`):
        validation, test, predict and likelihoods score the model exactly, whatever precision it trains in."""
        return torch.autocast(self.device.type, enabled=False)

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        codes, cond = self.unpack(batch)
        if stage == "train":
            nll = -self.log_prob(codes, cond)  # nats per sample
        else:
            with self.scoring():
                nll = -self.log_prob(codes, cond)
        dims = self.dims(codes)
        loss = nll.mean() / dims
        size = codes.shape[0]
        on_step = stage == "train"
        # sync_dist: under DDP every logged value is the mean over all processes (one small all-reduce each)
        self.log(f"{stage}/loss", loss, prog_bar=on_step, on_step=on_step, on_epoch=True, batch_size=size,
                 sync_dist=True)
        self.log(f"{stage}/bpd", loss / math.log(2), prog_bar=not on_step, on_step=on_step, on_epoch=True,
                 batch_size=size, sync_dist=True)
        self.log(f"{stage}/nll", nll.mean(), on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log_extra_metrics(stage, codes, nll, size)
        if on_step:
            self._log_throughput(codes)
        return loss

    def log_extra_metrics(self, stage: str, codes: torch.Tensor, nll: torch.Tensor, size: int) -> None:
        """Hook for model-specific metrics (e.g. bits per palette token); nothing by default.

        Args:
            stage: ``train``, ``val`` or ``test``.
            codes: the batch's codes.
            nll: their negative log-likelihoods in nats ``[B]``.
            size: the batch size, for Lightning's averages.
        """

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def _log_throughput(self, codes: torch.Tensor) -> None:
        """``train/examples_per_s`` and ``train/codes_per_s`` over the time since the previous training step (data
        loading included, validation excluded)."""
        now = time.perf_counter()
        if self._step_clock is not None:
            seconds = now - self._step_clock
            self.log("train/examples_per_s", codes.shape[0] / seconds, on_step=True, on_epoch=False)
            self.log("train/codes_per_s", codes.numel() / seconds, on_step=True, on_epoch=False)
        self._step_clock = now

    def on_validation_start(self) -> None:
        self._step_clock = None  # the next training step's interval would include validation

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Exact likelihood of every example: ``{"nll": nats [B], "bpd": bits per dimension [B]}``.

        Args:
            batch: what the data module's loader gives.
            batch_idx: its index in the pass.
        """
        codes, cond = self.unpack(batch)
        with self.scoring():
            nll = -self.log_prob(codes, cond)
        return {"nll": nll, "bpd": nll / (self.dims(codes) * math.log(2))}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches if attached_trainer(self) is not None else float("inf")
        warmup = max(1, self.warmup_steps)
        cosine = self.lr_schedule == "cosine" and math.isfinite(total) and total > warmup

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / (total - warmup))
            return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----- checkpoints -----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):  # lets a resumed fit continue this W&B run (see arcore.cli)
                checkpoint["wandb_run_id"] = logger.version


M = TypeVar("M", bound=torch.nn.Module)


class Layers(torch.nn.ModuleList, Generic[M]):
    """A ``ModuleList`` whose items a type checker knows (``Layers[GatedLayer]``): iterating or indexing it gives
    ``M``, so ``layer.conv.weight`` is a tensor to the checker too. At run time it is a ``ModuleList``, its weights
    named as a ``ModuleList``'s are.

    Args:
        modules: the layers, in order.
    """

    def __init__(self, modules: Iterable[M] = ()) -> None:
        super().__init__(modules)

    if TYPE_CHECKING:
        def __iter__(self) -> Iterator[M]: ...

        @overload
        def __getitem__(self, idx: slice) -> Layers[M]: ...

        @overload
        def __getitem__(self, idx: int) -> M: ...

        def __getitem__(self, idx: int | slice) -> M | Layers[M]: ...

