"""PCGrad gradient surgery (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning").

For every task gradient g_i and every other task gradient g_j with g_i . g_j < 0, g_i is replaced by its
projection onto the normal plane of g_j: g_i <- g_i - (g_i . g_j / |g_j|^2) g_j (projections always use the
original g_j). The update is the sum of the projected gradients. mtpf applies it to the shared backbone
only; parameters owned by one task (its LoRA group and head) keep that task's own gradient.

Written here rather than taken from a package: PyPI's PCGrad ports wrap an optimizer and project every
parameter, which would also mix the task-owned parameters.
"""
from __future__ import annotations

import random

import torch


def pcgrad_combine(grads: list[torch.Tensor], seed: int | None = None) -> torch.Tensor:
    """Combine flat per-task gradient vectors with PCGrad; ``seed`` fixes the (random) projection order."""
    rng = random.Random(seed)
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        others = [grads[j] for j in range(len(grads)) if j != i]
        rng.shuffle(others)
        for other in others:
            # Projected only when the dot product is negative; clamp(max=0) makes that choice on the device
            # (a Python ``if dot < 0`` would wait for the GPU on every step). A zero coefficient leaves g as is.
            dot = torch.dot(g, other).clamp(max=0)
            g -= dot / other.pow(2).sum().clamp_min(1e-20) * other
        projected.append(g)
    return torch.stack(projected).sum(0)


def flatten(grads: list[torch.Tensor | None], like: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, like)])


def unflatten(vec: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for p in like:
        out.append(vec[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out
