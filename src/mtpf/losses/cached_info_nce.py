"""GradCache for InfoNCE (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"; sentence-transformers' CachedMultipleNegativesRankingLoss does the same).

A contrastive batch of 1024 does not fit in small memory with activations kept. GradCache splits it:
1. embed every mini-batch without a graph, remembering the RNG state (so dropout is replayed exactly);
2. compute the loss on the detached embeddings and backpropagate to them only -> d loss / d embedding;
3. re-embed each mini-batch with a graph and backpropagate the cached embedding gradients.
The parameter gradients equal those of the uncached loss; peak memory is that of one mini-batch.

This needs control of the backward pass, so it is a function that *does* the backward, not a module.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from mtpf.losses.info_nce import info_nce


class _RngState:
    """CPU (and CUDA, where present) RNG state captured before a forward and replayed for its re-run."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    @contextlib.contextmanager
    def replay(self):
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def cached_info_nce_backward(
    embed: Callable[[dict], torch.Tensor],
    anchor_chunks: Sequence[dict],
    positive_chunks: Sequence[dict],
    temperature: float = 0.05,
    symmetric: bool = False,
    gather: bool = True,
    loss_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    anchor_order: torch.Tensor | None = None,
    positive_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Accumulate ``loss_scale * d InfoNCE / d params`` into ``.grad``; return the (detached) loss.

    ``embed(chunk)`` maps a tokenised mini-batch to its embeddings. ``*_order`` undo a length-sorting of the
    chunks: row ``k`` of the concatenated chunk outputs is pair ``order[k]``. ``no_sync`` (DDP's) wraps all
    re-forwards but the last so gradients are all-reduced once.
    """
    chunks = [("a", c) for c in anchor_chunks] + [("p", c) for c in positive_chunks]
    states, reps = [], []
    with torch.no_grad():
        for _, chunk in chunks:
            states.append(_RngState())
            reps.append(embed(chunk))
    n_a = len(anchor_chunks)
    a = torch.cat(reps[:n_a]).detach().requires_grad_()
    p = torch.cat(reps[n_a:]).detach().requires_grad_()
    a_in = _unsort(a, anchor_order)
    p_in = _unsort(p, positive_order)
    loss = info_nce(a_in, p_in, temperature, symmetric, gather)
    (loss * loss_scale).backward()  # the scaled gradient; the loss itself is returned as is (a 0 scale too)
    grads = list(torch.split(a.grad, [r.shape[0] for r in reps[:n_a]])) + list(
        torch.split(p.grad, [r.shape[0] for r in reps[n_a:]])
    )
    for k, ((_, chunk), state, grad) in enumerate(zip(chunks, states, grads)):
        last = k == len(chunks) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx, state.replay():
            torch.autograd.backward(embed(chunk), grad)
    return loss.detach()


def _unsort(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    if order is None:
        return x
    out = torch.empty_like(x)
    out[order] = x
    return out
