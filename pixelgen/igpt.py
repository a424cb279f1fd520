"""A small image GPT (Chen et al. 2020, "Generative Pretraining from Pixels") over a k-means colour palette.

An image is resized (optionally: iGPT trains at 32x32 and below), each pixel replaced by the index of its nearest
palette colour, and the ``H * W`` tokens are read in raster order. A decoder-only transformer models
``p(x_t | x_<t)``: the input at position ``t`` is the embedding of token ``t - 1`` (a learned start embedding, or
the class label's embedding when class-conditional, at ``t = 0``) plus a learned position embedding, followed by
pre-norm blocks (causal self-attention, GELU MLP) and a linear head over the palette.

Training runs every position at once through ``F.scaled_dot_product_attention(is_causal=True)``. Sampling uses a
KV cache: per layer a key/value buffer for all ``H * W`` positions, allocated once, written in place at the
position held on the device (``cache.position``), and attended through an additive mask that opens one position per
step. A step is a handful of operations per layer (layer norm, one fused qkv product, one cache write, one
attention call, the projection and the MLP) with no host synchronisation. For small batches on the CPU, where those
small operations cost more in per-call overhead than in arithmetic, a fused C++ step (``pixelgen/igpt_step.py``) does
the same work in one call.

The palette is a buffer of the model, so a checkpoint samples and renders images without the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arcore.contract import Capabilities
from arcore.errors import UsageError, check_labels, options
from arcore.files.media import Images
from arcore.sampling.cache import Piece, Sampler, Step, StepCache, previous_code
from arcore.training.lightning_private import attached_datamodule
from arcore.training.module import AutoregressiveModule, Layers
from arcore.training.precision import float32_output
from pixelgen import palette as pal
from pixelgen.igpt_step import FusedStep
from pixelgen.pixelcnn import check_image_data, checked_image_shape

SPAN_BUCKETS = 4  # a sampling step attends over the first 1/4, 2/4, 3/4 or all cached positions (ImageGPTSampler)


class Dense(nn.Module):
    """``x @ weight + bias`` for rows ``x [M, fan_in]``, the weight stored ``[fan_in, fan_out]``: the layout in which a
    one-row product (a sampling step at batch 1) streams the weight fastest (1.5x ``nn.Linear``'s on this CPU)."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class BlockedDense:
    """A :class:`Dense` for sampling: its weight copied into ``blocks`` contiguous column blocks
    ``[blocks, fan_in, fan_out / blocks]`` and applied as one batched product. MKL runs a product of one row on one
    thread; a batch of blocks it spreads over all of them, so a batch-1 step streams its weights about twice as fast
    on 2 cores, with the same sums in the same order (bit-identical results)."""

    def __init__(self, dense: Dense, blocks: int) -> None:
        fan_in, fan_out = dense.weight.shape
        self.blocks = blocks if fan_out % blocks == 0 else 1
        self.weight = dense.weight.detach().view(fan_in, self.blocks, -1).transpose(0, 1).contiguous()
        self.bias = dense.bias.detach().view(self.blocks, 1, -1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        out = torch.baddbmm(self.bias, x.expand(self.blocks, rows, -1), self.weight)  # [blocks, rows, fan_out/blocks]
        if rows == 1:  # [blocks, 1, n] is already the row's layout
            return out.view(1, -1)
        return out.transpose(0, 1).reshape(rows, -1)


Affine = Callable[[torch.Tensor], torch.Tensor]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``, on rows ``[M, width]``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(width)
        self.qkv = Dense(width, 3 * width)
        self.proj = Dense(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = Dense(width, mlp_ratio * width)
        self.out = Dense(mlp_ratio * width, width)

    def dense(self) -> tuple[Dense, Dense, Dense, Dense]:
        """The four products of the block in order: qkv, attention output, MLP in, MLP out."""
        return self.qkv, self.proj, self.fc, self.out

    def mlp(self, x: torch.Tensor, fc: Affine, out: Affine) -> torch.Tensor:
        """The MLP branch ``out(gelu(fc(ln(x))))`` (without the residual)."""
        return out(F.gelu(fc(self.ln2(x)), approximate="tanh"))

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced pass over ``[B, N, width]``, causal; writes the keys and values into ``kv [B, 2, heads,
        >= N, head_dim]`` when given (prefill)."""
        b, n, width = x.shape
        drop = self.dropout if self.training else 0.0
        rows = x.reshape(b * n, width)
        qkv = self.qkv(self.ln1(rows)).view(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if kv is not None:
            kv[:, :, :, :n] = qkv[1:].transpose(0, 1)
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True, dropout_p=drop)
        rows = rows + F.dropout(self.proj(att.transpose(1, 2).reshape(b * n, width)), drop, self.training)
        return (rows + F.dropout(self.mlp(rows, self.fc, self.out), drop, self.training)).view(b, n, width)

    def step(self, x: torch.Tensor, kv: torch.Tensor, index: torch.Tensor, visible: torch.Tensor,
             dense: Sequence[Affine]) -> torch.Tensor:
        """One position ``x [B, width]``: write its key and value into ``kv [B, 2, heads, N, head_dim]`` at
        ``index [1]`` and attend over the first ``S`` cached positions, the additive ``visible [1, 1, 1, S]``
        masking those not yet written; ``dense`` are the block's four products (see :meth:`dense`) in sampling form.
        (The write goes to the whole buffer, not to a view of its first ``S`` positions: a compiled step would copy
        the whole cache to write through such a view.)"""
        to_qkv, proj, fc, out = dense
        b, span = x.shape[0], visible.shape[-1]
        qkv = to_qkv(self.ln1(x)).view(b, 3, self.heads, 1, -1)
        kv.index_copy_(3, index, qkv[:, 1:])
        att = F.scaled_dot_product_attention(qkv[:, 0], kv[:, 0, :, :span], kv[:, 1, :, :span], attn_mask=visible)
        x = x + proj(att.view(b, -1))
        return x + self.mlp(x, fc, out)


class ImageGPT(AutoregressiveModule):
    """Causal transformer over palette tokens of ``image_shape = (C, H, W)`` images, optionally resized.

    Args:
        image_shape: (channels, height, width) of the data's images; channels 1 or 3.
        palette_size: colours in the k-means palette (the vocabulary): 16 grey levels suit MNIST, iGPT used 512.
        resolution: side of the square the images are resized to (area averaging) before encoding; None keeps
            the data's size. Event shape and sequence length follow: ``(r, r)``, ``r * r`` tokens.
        width, layers, heads, mlp_ratio: transformer size (``width`` divisible by ``heads``).
        dropout: on the residual branches and attention weights during training.
        num_labels: classes for class conditioning (0: unconditional); the label's embedding is the first token.
        palette_seed, palette_steps: k-means seed and mini-batch steps.
        palette_cache: folder for fitted palettes (None: ``$PIXELGEN_CACHE`` or ``~/.cache/pixelgen``).
    """

    palette: torch.Tensor  # buffers: [palette_size, C] colours, and whether they were fitted
    palette_fitted: torch.Tensor

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), palette_size: int = 16,
                 resolution: int | None = None, width: int = 128, layers: int = 4, heads: int = 4,
                 mlp_ratio: int = 4, dropout: float = 0.0, num_labels: int = 0, palette_seed: int = 0,
                 palette_steps: int = 300, palette_cache: str | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.01, warmup_steps: int = 200, lr_schedule: str = "cosine") -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, lr_schedule=lr_schedule)
        image_shape = checked_image_shape(image_shape)
        if palette_size < 2:
            raise UsageError(f"palette_size must be >= 2, got {palette_size}")
        if min(width, heads, mlp_ratio) < 1 or num_labels < 0 or not 0.0 <= dropout < 1.0:
            raise UsageError(f"width, heads and mlp_ratio must be >= 1, num_labels >= 0 and dropout in [0, 1), got "
                             f"{width}, {heads}, {mlp_ratio}, {num_labels} and {dropout}")
        if width % heads:
            raise UsageError(f"width ({width}) must be a multiple of heads ({heads})")
        if layers < 1 or (resolution is not None and resolution < 1):
            raise UsageError(f"layers and resolution must be >= 1, got {layers} and {resolution}")
        self.save_hyperparameters()
        self.image_shape = image_shape
        self.event_shape = image_shape[1:] if resolution is None else (resolution, resolution)
        self.num_classes = palette_size
        self.num_labels = num_labels
        self.register_buffer("palette", torch.zeros(palette_size, image_shape[0]))
        self.register_buffer("palette_fitted", torch.tensor(False))
        self.token_embedding = nn.Embedding(palette_size, width)
        self.position_embedding = nn.Parameter(torch.zeros(self.num_codes, width))
        self.start = nn.Parameter(torch.zeros(width))
        self.label_embedding = nn.Embedding(num_labels, width) if num_labels else None
        self.blocks = Layers(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = Dense(width, palette_size)
        self._init_weights()
        self._palette_rmse: torch.Tensor | None = None  # of the last unpacked batch, logged with its metrics

    def _init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)."""
        for module in self.modules():
            if isinstance(module, (Dense, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        nn.init.normal_(self.start, std=0.02)
        for block in self.blocks:
            for residual in (block.proj, block.out):
                nn.init.normal_(residual.weight, std=0.02 / math.sqrt(2 * len(self.blocks)))

    # ----- palette: images <-> tokens ----------------------------------------------------------------------------
    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """8-bit images ``[B, C, H, W]`` at the model's resolution (area average, rounded), same dtype.

        Args:
            images: 8-bit images ``[B, C, H, W]``.
        """
        if tuple(images.shape[-2:]) == tuple(self.event_shape):
            return images
        return F.interpolate(images.float(), size=self.event_shape, mode="area").round_().to(images.dtype)

    def fit_palette(self, images: torch.Tensor) -> None:
        """Fit the palette on 8-bit training images ``[N, C, H, W]`` at the model's resolution (or reuse the fit
        cached on disk for the same pixels and settings).

        Args:
            images: 8-bit training images ``[N, C, H, W]``.
        """
        hp = self.hparams
        pixels = pal.pixel_rows(self.resize(images))
        fitted = pal.fit_palette(pixels, self.num_classes, seed=hp.palette_seed, steps=hp.palette_steps,
                                 cache_dir=Path(hp.palette_cache) if hp.palette_cache else None)
        self.palette.copy_(fitted)
        self.palette_fitted.fill_(True)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """8-bit images ``[B, C, H, W]`` to the model's codes ``[B, *event_shape]``: resize, nearest colour.

        Args:
            images: 8-bit images ``[B, C, H, W]``.
        """
        if not self.palette_fitted:
            raise UsageError("this ImageGPT has no palette yet: train it with `pixelgen fit` (which fits one) or "
                             "load a checkpoint")
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise UsageError(f"ImageGPT expects 8-bit images of shape [B, {', '.join(map(str, self.image_shape))}],"
                             f" got {list(images.shape)}")
        return pal.encode(self.resize(images), self.palette)

    renders = Images
    capabilities = Capabilities(completion=True)
    prime_axis = 2

    @property
    def prime_extent(self) -> int:
        """The rows of a data image (its tokens come from a resized copy of it)."""
        return self.image_shape[1]

    def prime_from_data(self, data: torch.Tensor, length: int) -> torch.Tensor:
        """The codes of the top ``length`` image rows (scaled to the model's resolution) of 8-bit images ``data``."""
        return self.encode_images(data)[:, : round(length * self.event_shape[0] / self.image_shape[1])]

    def render_samples(self, codes: torch.Tensor) -> Images:
        return Images(pal.decode(codes, self.palette).float().div(255.0).clamp(0.0, 1.0))

    # ----- training ----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check the data against the model and, when fitting a model without one, fit the palette."""
        datamodule = attached_datamodule(self)
        if datamodule is None:
            return
        check_image_data(self, datamodule)
        if getattr(datamodule, "levels", 256) != 256:
            raise UsageError("ImageGPT fits its palette on 8-bit pixels: set the data's bits=8 and binarize=None",
                             {"the data's ": "", **options("data", "bits", "binarize"), "None": "null"})
        if stage == "fit" and not self.palette_fitted:
            self.fit_palette(datamodule.train_pixels().to(self.device))

    def unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(8-bit images, labels)`` to ``(palette tokens, labels or None)``; notes the palette's RMSE."""
        images, labels = batch
        tokens = self.encode_images(images)
        self._palette_rmse = (pal.decode(tokens, self.palette) - self.resize(images)).square().mean().sqrt()
        return tokens, (labels if self.num_labels else None)

    def log_extra_metrics(self, stage: str, codes: torch.Tensor, nll: torch.Tensor, size: int) -> None:
        """``bpd`` of this model is bits per palette token; add bits per sub-pixel of the palette-quantised image
        at the model's resolution and the palette's RMSE (8-bit units): the two figures a reader needs to compare
        it with models of the 8-bit pixels."""
        subpixels = self.image_shape[0] * self.num_codes
        self.log(f"{stage}/bits_per_subpixel", nll.mean() / (subpixels * math.log(2)), on_step=False,
                 on_epoch=True, batch_size=size, sync_dist=True)
        if self._palette_rmse is not None:
            self.log(f"{stage}/palette_rmse", self._palette_rmse, on_step=False, on_epoch=True, batch_size=size,
                     sync_dist=True)

    # ----- teacher-forced pass -----------------------------------------------------------------------------------
    def _first_input(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The input at position 0, ``[B, width]``: the label's embedding, or the learned start embedding."""
        cond, embedding = check_labels(cond, self.num_labels, batch), self.label_embedding
        if cond is None or embedding is None:
            return self.start.expand(batch, -1)
        return embedding(cond)

    def forward(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, *event_shape, palette_size]``; position t depends only on tokens before t (and the label)."""
        self.check_codes(codes)
        return self._teacher_forced(codes.flatten(1), cond).view(codes.shape[0], *self.event_shape, self.num_classes)

    def _teacher_forced(self, tokens: torch.Tensor, cond: torch.Tensor | None,
                        kv: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``[B * n, palette_size]`` of the first ``n`` positions from tokens ``[B, n]``; writes every layer's
        keys and values into ``kv`` when given (prefill)."""
        b, n = tokens.shape
        x = torch.cat([self._first_input(cond, b).unsqueeze(1), self.token_embedding(tokens[:, :-1])], dim=1)
        x = x + self.position_embedding[:n]
        for i, block in enumerate(self.blocks):
            x = block(x, None if kv is None else kv[i])
        return float32_output(self.head, self.ln_f(x).flatten(0, 1))

    # ----- cached sampling ---------------------------------------------------------------------------------------
    def sampler(self, batch_size: int, cond: torch.Tensor | None, event_shape: tuple[int, ...]) -> ImageGPTSampler:
        """The KV-cache sampler (or the fused C++ step for small float32 batches on the CPU)."""
        return ImageGPTSampler(self, batch_size, cond, event_shape)


class ImageGPTSampler(Sampler):
    """The K/V cache and the step pieces of one run.

    State, each a field of the sampler registered in its cache: ``kv [layers, B, 2, heads, N, head_dim]``, written in
    place at ``cache.position``; ``visible [1, 1, 1, N]``, the additive attention mask (0 for positions written so far,
    -inf beyond; the PyTorch step's only); ``first [B, width]``, the input at position 0. There is one step piece per
    attention span: position ``t`` attends over the first ``ceil(N (j + 1) / SPAN_BUCKETS)`` cached positions for the
    bucket ``j`` that holds ``t`` (the mask hides the rest), so a step reads ~5/8 of the cache on average and a run
    has ``SPAN_BUCKETS`` pieces whatever the image size. Small float32 batches on the CPU take the fused C++ step
    instead (:mod:`pixelgen.igpt_step`).
    """

    @torch.no_grad()
    def __init__(self, model: ImageGPT, batch_size: int, cond: torch.Tensor | None, event_shape: tuple[int, ...]
                 ) -> None:
        if tuple(event_shape) != tuple(model.event_shape):
            raise UsageError(f"ImageGPT generates {model.event_shape} tokens, not {tuple(event_shape)}")
        super().__init__(StepCache(batch_size, model.device, model.dtype))
        self.model, self.cond = model, cond
        cache, n, heads, width = self.cache, model.num_codes, model.blocks[0].heads, model.start.shape[0]
        self.kv = kv = cache.alloc("kv", (len(model.blocks), batch_size, 2, heads, n, width // heads), batch_dim=1)
        self.layer_kv = kv.unbind(0)  # per-layer views, resolved once
        self.first = cache.register("first", model._first_input(cond, batch_size) + model.position_embedding[0])
        self.visible: torch.Tensor | None = None
        if FusedStep.applies(model, batch_size):  # small batches on the CPU: the whole step in one C++ call
            self.pieces: list[Step] = [FusedStep(model, kv, self.first, cache.position)]
        else:
            self.visible = cache.register("visible", torch.full((1, 1, 1, n), float("-inf"), dtype=cache.dtype,
                                                                device=model.device), batch_dim=None)
            blocks = torch.get_num_threads() if batch_size <= 8 else 1  # larger batches keep every thread busy
            self.dense = [[BlockedDense(d, blocks) for d in block.dense()] for block in model.blocks]
            self.head = BlockedDense(model.head, blocks)
            self.pieces = [partial(self._step, span) for span in self.spans()]
        self.step = self.pieces[-1]

    def capturable(self, piece: Piece) -> bool:
        return not isinstance(piece, FusedStep)

    def spans(self) -> list[int]:
        """How many cached positions each step piece attends over."""
        n = self.model.num_codes
        return sorted({-(-n * (j + 1) // SPAN_BUCKETS) for j in range(SPAN_BUCKETS)})

    def schedule(self, t: int) -> tuple[Piece]:
        if len(self.pieces) == 1:
            return (self.pieces[0],)
        return (next(piece for piece, span in zip(self.pieces, self.spans()) if t < span),)

    def _step(self, span: int, seq: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, palette_size]`` at ``cache.position``, attending over the first ``span`` positions; tokens,
        position embeddings and cache writes are indexed by the device position."""
        model, cache, visible = self.model, self.cache, self.visible
        assert visible is not None  # the PyTorch step's mask (the fused step keeps none)
        index = cache.position.view(1)
        visible.index_fill_(3, index, 0.0)
        visible = visible[..., :span]
        x = torch.where(index == 0, self.first,
                        F.embedding(previous_code(seq, cache.position), model.token_embedding.weight)
                        + model.position_embedding.index_select(0, index))
        for block, kv, dense in zip(model.blocks, self.layer_kv, self.dense):
            x = block.step(x, kv, index, visible, dense)
        return self.head(model.ln_f(x))

    @torch.no_grad()
    def prefill(self, seq: torch.Tensor, length: int) -> None:
        """Keys and values of the first ``length`` positions from one teacher-forced pass."""
        self.model._teacher_forced(seq[:, :length], self.cond, self.layer_kv)
        if self.visible is not None:
            self.visible[..., :length] = 0.0
        self.cache.position.fill_(length)
