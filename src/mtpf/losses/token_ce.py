"""Token-level cross-entropy against word pseudo-labels (paper Section 4, "Pre-Finetuning for NER").

The labels are teacher cluster ids on the first sub-token of each word and -100 elsewhere (ignored).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
