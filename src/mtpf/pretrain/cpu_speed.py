"""Two CPU-only speed-ups for pre-finetuning that keep the training the same.

On a CPU every token position costs a full share of the matmuls (there is no tensor-core tile to fill), and
PyTorch's CPU dropout draws its mask one element at a time from a Mersenne twister on one thread. Measured on
this project's 2-core CPU (MiniLM-L6, NER batch 32, see docs/benchmarks.md): padding was 8 % of the positions
even for globally length-sorted batches, and ``bernoulli_`` 9 % of the step.

1. **Padding-free NER batches** (``pack_batch``): a batch is one row of the batch's real tokens, with
   ``position_ids`` restarting at 0 for each sentence. Every per-token layer (embeddings, the Q/K/V/output
   projections, the MLP, LayerNorm, the head) runs on real tokens only; the attention function registered here
   (``mtpf_cpu``, through transformers' public ``AttentionInterface``) scatters Q/K/V into the padded
   ``[batch, heads, length, dim]`` layout for the attention itself and gathers the result back. Same logits,
   loss and gradients as the padded batch (``tests/test_cpu_speed.py``). Why not transformers' own
   padding-free path (``DataCollatorWithFlattening``): it relies on flash-attention's varlen kernels (no CPU
   build) or, for decoders, on a block-diagonal mask built from ``position_ids``; transformers 5's
   bidirectional (encoder) mask has no packed form, and a [tokens x tokens] mask would square the attention.
2. **A faster dropout RNG** (``FastDropout``): the same Bernoulli(1 - p) keep mask, scaled by 1 / (1 - p),
   drawn from numpy's PCG64 (4 masks of 16 bits per 64-bit draw, ~7x faster here). Its seed is drawn from
   torch's generator, so ``torch.manual_seed``, the RNG state a checkpoint restores and GradCache's replay of a
   chunk's dropout govern it as they govern torch's dropout. The keep probability is quantised to 1/65536
   (p = 0.1 keeps with probability 0.899994). Attention-probability dropout uses it too (in ``attention``).

Neither changes what is saved: dropout modules carry no weights and the attention implementation is not
written to ``config.json``. Evaluation (no dropout, padded batches) runs transformers' SDPA path unchanged.
On CUDA neither is installed: the GPU path pads to a multiple of 8 and uses the fused dropout kernels.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

ATTENTION = "mtpf_cpu"
# Model types whose embeddings take ``position_ids`` counted from 0 for each sentence and whose attention goes
# through transformers' AttentionInterface. RoBERTa-style models count positions from padding_idx + 1 and are
# left padded (they still get FastDropout).
PACKABLE = {"bert"}


def keep_mask(shape, p: float) -> torch.Tensor:
    """A CPU bool tensor of ``shape``, each element True with probability round((1 - p) * 65536) / 65536."""
    n = int(np.prod(shape))
    seed = int(torch.randint(0, 2**62, (1,)))  # from torch's generator: seeded, checkpointed, replayable
    raw = np.random.PCG64(seed).random_raw((n + 3) // 4).view(np.uint16)[:n]
    return torch.from_numpy(raw < round((1.0 - p) * 65536)).view(shape)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x * mask / (1 - p)``, as torch's CPU dropout computes it, with the mask from ``keep_mask``."""
    return x * keep_mask(x.shape, p).to(x.dtype).div_(1.0 - p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the mask from ``keep_mask`` when training on the CPU; otherwise ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return fast_dropout(x, self.p)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, mtpf_pack=None,
              **kwargs):
    """transformers attention function: padded batches without dropout go to SDPA unchanged; packed batches
    (``mtpf_pack``) are scattered to the padded layout and back; dropout on CPU uses ``keep_mask``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    fast = dropout > 0 and query.device.type == "cpu"
    if mtpf_pack is None and not fast:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if mtpf_pack is not None:
        index, mask = mtpf_pack["index"], mtpf_pack["key_mask"]  # [tokens], [batch, 1, 1, length] bool
        b, length = mask.shape[0], mask.shape[-1]
        heads, dim = query.shape[1], query.shape[-1]

        def pad(x):  # [1, heads, tokens, dim] -> [batch, heads, length, dim]
            out = x.new_zeros(b * length, heads, dim).index_copy(0, index, x[0].transpose(0, 1))
            return out.view(b, length, heads, dim).transpose(1, 2)

        query, key, value = pad(query), pad(key), pad(value)
        attention_mask = mask
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if fast:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask
        probs = fast_dropout(scores.softmax(-1), dropout)
        out = torch.matmul(probs, value)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               scale=scaling)
    out = out.transpose(1, 2)  # [batch, length, heads, dim], as transformers' attention functions return
    if mtpf_pack is not None:
        out = out.reshape(-1, out.shape[2], out.shape[3]).index_select(0, mtpf_pack["index"])[None]
    return out.contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def install(encoder: nn.Module) -> bool:
    """Swap every ``nn.Dropout`` of ``encoder`` (LoRA dropouts included) for ``FastDropout`` and route its
    attention through ``attention``. Returns True when NER batches may be packed (a ``PACKABLE`` model whose
    attention was routed)."""
    from transformers import PreTrainedModel

    for module in list(encoder.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p, child.inplace))
    base = next((m for m in encoder.modules() if isinstance(m, PreTrainedModel)), None)
    if base is None or getattr(base.config, "_attn_implementation", None) not in ("sdpa", "eager", ATTENTION):
        return False
    _register()
    base.set_attn_implementation(ATTENTION)
    return base.config.model_type in PACKABLE


def pack_batch(seqs, labels) -> dict:
    """One row of the batch's real tokens: ids, ``position_ids`` from 0 per sentence, labels (-100 where a
    sentence's labels are shorter than its ids), and ``mtpf_pack`` for ``attention``."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max())
    ids = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.arange(len(ids)) - starts
    lab = np.full(len(ids), -100, dtype=np.int64)
    for start, n, row in zip(np.cumsum(lengths) - lengths, lengths, labels):
        lab[start : start + min(len(row), n)] = row[:n]
    index = np.repeat(np.arange(len(seqs)) * width, lengths) + positions
    key_mask = np.arange(width)[None, :] < lengths[:, None]
    return {"input_ids": torch.from_numpy(ids)[None], "position_ids": torch.from_numpy(positions)[None],
            "labels": torch.from_numpy(lab)[None],
            "mtpf_pack": {"index": torch.from_numpy(index), "key_mask": torch.from_numpy(key_mask)[:, None, None]}}
