"""Checks of the model contract that every autoregressive model here must pass (used by the model tests).

Each check works through the contract only (``to_order``, ``from_order``, ``forward``, ``log_prob``,
``sampler``), so the same code proves causality, exact likelihoods and cache equivalence for PixelCNN,
the image GPT and WaveNet.
"""

from __future__ import annotations

import torch

from arcore.sampling.engine import stepper


def causality_violations(model, codes: torch.Tensor, cond=None) -> list[tuple[int, int]]:
    """Pairs (changed position t, affected position s <= t): logits at s changed when the code at t changed."""
    model.eval()
    shape = tuple(codes.shape[1:])
    with torch.no_grad():
        base = model.to_order(model(codes, cond))
        seq = model.to_order(codes)
        bad = []
        for t in range(seq.shape[1]):
            changed = seq.clone()
            changed[:, t] = (changed[:, t] + 1) % model.num_classes
            logits = model.to_order(model(model.from_order(changed, shape), cond))
            moved = (logits - base).abs().amax(dim=(0, 2)) > 1e-9  # per position
            bad += [(t, s) for s in range(t + 1) if moved[s]]
        return bad


def brute_force_log_prob(model, codes: torch.Tensor, cond=None) -> torch.Tensor:
    """sum_t log p(x_t | x_<t), each term from a pass that sees only the codes before t (the rest zeroed)."""
    model.eval()
    shape = tuple(codes.shape[1:])
    seq = model.to_order(codes)
    total = torch.zeros(codes.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for t in range(seq.shape[1]):
            past = seq.clone()
            past[:, t:] = 0
            logits = model.to_order(model(model.from_order(past, shape), cond))[:, t].double()
            total += logits.log_softmax(-1).gather(1, seq[:, t: t + 1]).squeeze(1)
    return total


def step_logit_error(model, codes: torch.Tensor, cond=None) -> float:
    """Largest difference between cached step logits and the teacher-forced logits along ``codes``."""
    model.eval()
    shape = tuple(codes.shape[1:])
    with torch.no_grad():
        full = model.to_order(model(codes, cond))
        seq = model.to_order(codes)
        run, _ = stepper(model, codes.shape[0], cond, shape)
        return max((run(t, seq) - full[:, t]).abs().max().item() for t in range(seq.shape[1]))


def sample_both_ways(model, n: int, seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The same seed through the cached and the cache-free sampler."""
    cached = model.sample(n, generator=torch.Generator().manual_seed(seed), use_cache=True, **kwargs)
    naive = model.sample(n, generator=torch.Generator().manual_seed(seed), use_cache=False, **kwargs)
    return cached, naive


def randomise(model: torch.nn.Module, std: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Random weights large enough that every connection matters (a trained-looking, non-degenerate model)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model.eval()
