"""What a model is and may offer: the parts the engine, the tools and the files rely on, as ``Protocol``s beside
:class:`Capabilities`, and the check every model class passes when it registers (:func:`check_model_class`).

- :class:`Autoregressive`: what the sampling engine needs (any ``torch.nn.Module`` that keeps it samples, Lightning or
  not), stated by the engine itself in :mod:`arcore.sampling.cache`;
- :class:`Model`: what the command lines, the callbacks and the files need besides (``arcore.training.module.
  AutoregressiveModule`` provides all of it but ``forward`` and ``render_samples``);
- what ``render_samples`` returns, a typed value: :class:`Images`, :class:`Audio` or :class:`Text` (together
  :data:`Media`; :mod:`arcore.files.media` writes them), so a caller learns what it got from the value's type, never
  from a string key;
- optional parts, each gated by a flag of :class:`Capabilities`: :class:`Resynthesizer` (``resynthesis``) and
  :class:`HalfWeights` (``half_weights``). A caller reaches them only through :func:`resynthesizer` and
  :func:`half_weights`, which check the flag, so nothing is guessed from attribute names.

Only the command lines, the training layer and the files use this module; it uses only the sampling layer below
them (torch, never Lightning).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from arcore.sampling.cache import Autoregressive

if TYPE_CHECKING:
    import torch

    from arcore.sampling.decoding import SampleOptions
    from arcore.sampling.engine import BeamResult

__all__ = ["Audio", "Autoregressive", "Capabilities", "ContractError", "HalfWeights", "Images", "Media", "Model",
           "Resynthesizer", "Text", "check_capabilities", "check_model_class", "half_weights", "required",
           "resynthesizer"]


@dataclass(frozen=True)
class Capabilities:
    """What a model offers beyond the required contract (its ``capabilities``).

    Args:
        completion: ``prime_from_data`` cuts a meaningful prime from a data batch, so the sample logger also logs
            completions of validation data beside the originals.
        resynthesis: the model draws data again from features of the data itself (a vocoder from log-mel frames)
            through :meth:`Resynthesizer.resynthesize`; the sample logger then logs resynthesised validation items
            instead of unconditional samples, and ``sample`` needs that input.
        half_weights: :meth:`HalfWeights.round_weights_to_half` rounds the weights its sampling step reads to float16
            values (``export`` / ``sample --half-weights``).
        codes_per_second: for audio, codes per second of sound, so lengths can be asked for in seconds.
    """

    completion: bool = False
    resynthesis: bool = False
    half_weights: bool = False
    codes_per_second: int | None = None


@dataclass(frozen=True)
class Images:
    """A batch of pictures: ``pixels`` float ``[B, C, H, W]`` in [0, 1], C = 1 or 3."""

    pixels: torch.Tensor

    def __len__(self) -> int:
        return len(self.pixels)


@dataclass(frozen=True)
class Audio:
    """A batch of mono clips: ``clips`` float ``[B, T]`` in [-1, 1] at ``sample_rate`` samples per second."""

    clips: torch.Tensor
    sample_rate: int

    def __len__(self) -> int:
        return len(self.clips)


@dataclass(frozen=True)
class Text:
    """A batch of strings, one per sample."""

    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


Media = Images | Audio | Text
"""What ``render_samples`` returns."""


class Model(Autoregressive, Protocol):
    """What the tools, the callbacks and the files need of a model beyond sampling: its shape and labels, what its
    codes stand for, how a prime is cut from data, its likelihood, and what else it offers."""

    event_shape: tuple[int, ...]
    num_labels: int
    prime_axis: int
    renders: ClassVar[type[Media]]

    @property
    def capabilities(self) -> Capabilities: ...
    @property
    def prime_extent(self) -> int: ...
    @property
    def num_codes(self) -> int: ...
    @property
    def device(self) -> torch.device: ...

    def render_samples(self, codes: torch.Tensor) -> Media: ...
    def prime_from_data(self, data: torch.Tensor, length: int) -> torch.Tensor: ...
    def log_prob(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor: ...
    def sample(self, n: int, *, cond: Any = None, prime: torch.Tensor | None = None, length: int | None = None,
               options: SampleOptions | None = None, generator: torch.Generator | None = None,
               **settings: Any) -> torch.Tensor: ...
    def beam_search(self, n: int = 1, *, beams: int = 4, cond: Any = None, prime: torch.Tensor | None = None,
                    length: int | None = None, options: SampleOptions | None = None,
                    **settings: Any) -> BeamResult: ...
    def state_dict(self) -> dict[str, Any]: ...
    def to(self, *args: Any, **kwargs: Any) -> Any: ...
    def eval(self) -> Any: ...


class Resynthesizer(Protocol):
    """The optional part of a model declaring ``resynthesis``: items drawn again from their own features."""

    def resynthesize(self, items: Sequence[torch.Tensor], cond: torch.Tensor | None = None, /, *,
                     options: SampleOptions | None = None, generator: torch.Generator | None = None,
                     **settings: Any) -> list[torch.Tensor]: ...


class HalfWeights(Protocol):
    """The optional part of a model declaring ``half_weights``."""

    def round_weights_to_half(self) -> float: ...


OPTIONAL_PARTS = {"resynthesis": ("resynthesize", Resynthesizer), "half_weights": ("round_weights_to_half",
HalfWeights)}
"""Each capability that promises a method: the method's name and the ``Protocol`` it belongs to."""


F = TypeVar("F", bound=Callable[..., Any])


def required(method: F) -> F:
    """Mark a base class's placeholder for a method every model writes itself (``render_samples``):
    :func:`check_model_class` refuses a class that inherits the placeholder."""
    setattr(method, REQUIRED, True)
    return method


REQUIRED = "__arcore_required__"
FRAMEWORKS = ("torch", "pytorch_lightning", "lightning")
"""Packages whose ``forward`` is a placeholder (``torch.nn.Module``'s raises, ``LightningModule``'s passes it on)."""


class ContractError(TypeError):
    """A model class that does not keep the contract: one line naming the class, what is missing and how to fix it."""


def check_model_class(cls: type) -> None:
    """Refuse, with one :class:`ContractError` line, a model class that leaves a required method unwritten
    (``forward``, or one its base marks :func:`required`, such as ``render_samples``), does not declare what it renders
    (``renders``), or declares a capability in a class
    attribute ``capabilities`` without the method that capability promises. A ``capabilities`` property (one that
    depends on the model's settings) is checked on each model that reaches an optional part
    (:func:`resynthesizer`, :func:`half_weights`).

    Args:
        cls: the model class, checked without building one.
    """
    owner = next((base for base in cls.__mro__ if "forward" in vars(base)), None)
    if owner is None or owner.__module__.split(".")[0] in FRAMEWORKS:
        raise ContractError(f"{cls.__qualname__} does not write forward(codes, cond) -> logits [B, *event_shape, "
                            f"num_classes]: every model must")
    unwritten = sorted(name for name, value in inspect.getmembers(cls) if getattr(value, REQUIRED, False))
    if unwritten:
        raise ContractError(f"{cls.__qualname__} does not write {', '.join(unwritten)}: every model must (see "
                            f"arcore.contract.Model)")
    if not isinstance(getattr(cls, "renders", None), type):
        raise ContractError(f"{cls.__qualname__} does not declare what it renders: set the class attribute renders "
                            f"to Images, Audio or Text (arcore.contract), what its render_samples returns")
    declared = inspect.getattr_static(cls, "capabilities", None)
    if isinstance(declared, Capabilities):
        check_capabilities(cls, declared)


def check_capabilities(owner: object, capabilities: Capabilities) -> None:
    """Refuse, with one :class:`ContractError` line, ``capabilities`` that promise a method ``owner`` (a model or
    its class) does not have.

    Args:
        owner: a model class or a model.
        capabilities: what it declares.
    """
    cls = owner if isinstance(owner, type) else type(owner)
    for flag, (method, part) in OPTIONAL_PARTS.items():
        if getattr(capabilities, flag) and not callable(getattr(cls, method, None)):
            raise ContractError(f"{cls.__qualname__} declares {flag} in its capabilities but has no {method} method "
                                f"(arcore.contract.{part.__name__}): write it, or drop {flag}=True")


def resynthesizer(model: Model) -> Resynthesizer:
    """``model`` as a :class:`Resynthesizer`, after checking that it declares ``resynthesis`` and has the method.

    Args:
        model: the model whose resynthesis a caller wants.
    """
    return _optional_part(model, "resynthesis")


def half_weights(model: Model) -> HalfWeights:
    """``model`` as :class:`HalfWeights`, after checking that it declares ``half_weights`` and has the method.

    Args:
        model: the model whose weights a caller wants rounded.
    """
    return _optional_part(model, "half_weights")


def _optional_part(model: Model, flag: str) -> Any:
    capabilities = model.capabilities
    if not getattr(capabilities, flag):
        raise ContractError(f"a {type(model).__qualname__} does not declare {flag} in its capabilities")
    check_capabilities(model, capabilities)
    return model
