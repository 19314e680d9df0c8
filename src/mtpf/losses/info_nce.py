"""InfoNCE with in-batch negatives (paper Section 4, Eq. 1; Chen et al., 2020 "A Simple Framework for
Contrastive Learning of Visual Representations"; the same loss as sentence-transformers'
MultipleNegativesRankingLoss with ``scale = 1 / temperature``).

    L = -1/|B| sum_i log( exp(<z_i, z_i+>/tau) / sum_j exp(<z_i, z_j+>/tau) )

with z the L2-normalised mean-pooled embeddings. Under ``torch.distributed`` the positives (and, for the
symmetric variant, anchors) of every process are gathered *with gradient*, so each process sees the whole
global batch as negatives; averaging the per-process losses (what DDP does to the gradients) then equals
the loss of one process holding the concatenated batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather along dim 0 keeping the autograd graph; returns (global tensor, offset of this rank)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x)
    sizes = {p.shape[0] for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"every process must hold the same number of pairs, got sizes {sorted(sizes)}")
    return torch.cat(parts, 0), dist.get_rank() * x.shape[0]


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = 0.05,
    symmetric: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """Mean InfoNCE over this process's anchors against all (gathered) positives."""
    if anchors.shape != positives.shape:
        raise ValueError(f"anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} differ")
    a = F.normalize(anchors, dim=-1)
    p = F.normalize(positives, dim=-1)
    p_all, offset = _gather(p) if gather else (p, 0)
    labels = torch.arange(a.shape[0], device=a.device) + offset
    loss = F.cross_entropy(a @ p_all.T / temperature, labels)
    if symmetric:
        a_all, _ = _gather(a) if gather else (a, 0)
        loss = (loss + F.cross_entropy(p @ a_all.T / temperature, labels)) / 2
    return loss
