"""The two measurements of paper Section 5.

* Finding 1 (``perturbation_similarity``): mean cosine similarity between the mean-pooled embedding of a
  sentence and those of its entity-perturbed variants (Figure 3a).
* Finding 2 (``token_homogeneity``): mean pairwise cosine similarity of the token embeddings inside a
  sentence (last hidden state, special tokens and padding excluded), averaged over sentences (Figure 3b).

Both take an embedding callable so they work for any encoder; ``sentence_embedder`` / ``token_embedder``
build those callables for an HF encoder, optionally PEFT-wrapped with one adapter active. Inputs are
pre-split words (``list[list[str]]``, tokenised with ``is_split_into_words``) or plain strings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

Sentences = Sequence[Sequence[str]] | Sequence[str]
EmbedSentences = Callable[[Sentences], torch.Tensor]  # -> [N, H]
EmbedTokens = Callable[[Sentences], list[torch.Tensor]]  # -> N x [n_i, H]


# ----------------------------------------------------------------------------------------------- metrics
def perturbation_similarity(
    embed_sentences: EmbedSentences, originals: list[list[str]], variants: list[list[list[str]]]
) -> float:
    """Mean over sentences of the mean cosine(original, variant) over that sentence's variants.

    Sentences with no variant (no entity to replace) are ignored; ``nan`` when there is none at all.
    Everything is embedded in one call, so the embedder can batch originals and variants by length together.
    """
    if len(originals) != len(variants):
        raise ValueError(f"{len(originals)} originals but {len(variants)} variant lists")
    keep = [i for i, vs in enumerate(variants) if vs]
    if not keep:
        return float("nan")
    texts = [originals[i] for i in keep] + [v for i in keep for v in variants[i]]
    return similarity_from_embeddings(embed_sentences(texts), [len(variants[i]) for i in keep])


def similarity_from_embeddings(emb: torch.Tensor, counts: list[int]) -> float:
    """``emb`` = the originals' embeddings, then their variants' in order (``counts[k]`` for original k)."""
    emb = torch.nn.functional.normalize(emb.double(), dim=-1)
    n = len(counts)
    orig, rest = emb[:n], emb[n:]
    if rest.shape[0] != sum(counts):
        raise ValueError(f"{rest.shape[0]} variant embeddings for {sum(counts)} variants")
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor(counts))
    cos = (rest * orig[owner]).sum(-1)
    per_sentence = torch.zeros(n, dtype=cos.dtype).index_add_(0, owner, cos) / torch.tensor(
        counts, dtype=cos.dtype
    )
    return float(per_sentence.mean())


def mean_pairwise_cosine(tokens: torch.Tensor) -> float | None:
    """Mean cosine over distinct pairs (i < j) of the rows of ``tokens`` [n, H]; ``None`` when n < 2.

    Uses sum_{i != j} cos_ij = ||sum_i x_i / |x_i| ||^2 - n, so the cost is O(n H), not O(n^2 H).
    """
    n = tokens.shape[0]
    if n < 2:
        return None
    unit = torch.nn.functional.normalize(tokens.double(), dim=-1)
    total = unit.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def token_homogeneity(embed_tokens: EmbedTokens, sentences: Sentences) -> float:
    """Intra-sentence token similarity averaged over sentences (fewer than 2 tokens: skipped)."""
    values = [v for v in (mean_pairwise_cosine(t) for t in embed_tokens(sentences)) if v is not None]
    return float(sum(values) / len(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------------- encoding
def unwrap_encoder(model: nn.Module) -> nn.Module:
    """The encoder inside DDP (``.module``) and ``MultiTaskEncoder`` (``.encoder``) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "encoder") and hasattr(model, "adapters") and hasattr(model, "ner_head"):
            model = model.encoder
        else:
            return model


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def adapter_context(model: nn.Module, adapter: str | None):
    """Only ``adapter`` active on a PeftModel (``None``: backbone alone); plain encoders take none."""
    if is_peft(model):
        if adapter is not None and adapter not in model.peft_config:
            raise ValueError(f"adapter {adapter!r} not on this model (it has {sorted(model.peft_config)})")
        from mtpf.lora import active_adapter

        return active_adapter(model, adapter)
    if adapter is not None:
        raise ValueError(f"adapter {adapter!r} requested but the model carries no PEFT adapters")
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference_mode(model: nn.Module):
    """eval() + no_grad for the enclosed block; every submodule's own training flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Tokenized:
    __slots__ = ("input_ids", "source", "special", "token_type_ids")

    def __init__(self, source, input_ids, special, token_type_ids):
        self.source, self.input_ids, self.special, self.token_type_ids = (
            source,
            input_ids,
            special,
            token_type_ids,
        )


def tokenize(tokenizer, sentences: Sentences, max_length: int) -> _Tokenized:
    sentences = list(sentences)
    split = bool(sentences) and not isinstance(sentences[0], str)
    enc = tokenizer(
        [list(s) for s in sentences] if split else sentences,
        is_split_into_words=split,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
    )
    return _Tokenized(sentences, enc["input_ids"], enc["special_tokens_mask"], enc.get("token_type_ids"))


def encode_batches(
    model: nn.Module,
    tokenizer,
    sentences: Sentences,
    batch_size: int = 64,
    max_length: int = 256,
    adapter: str | None = None,
    cache: dict | None = None,
):
    """Yield ``(indices, last_hidden [B, T, H], attention_mask [B, T], keep [B, T])``,
    batches sorted by length.

    ``keep`` is true on real (non-special, non-padding) tokens. Runs in eval mode under no_grad with only
    ``adapter`` active. ``cache`` (a dict) keeps the tokenisation of a sentence list object between calls.
    """
    model = unwrap_encoder(model)
    tok = None
    if cache is not None:
        key = (id(tokenizer), id(sentences), max_length)
        hit = cache.get(key)
        if hit is not None and hit.source is sentences:
            tok = hit
    if tok is None:
        tok = tokenize(tokenizer, sentences, max_length)
        tok.source = sentences
        if cache is not None:
            cache[key] = tok
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(tok.input_ids)), key=lambda i: len(tok.input_ids[i]))
    with inference_mode(model), adapter_context(model, adapter):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(tok.input_ids[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            keep = torch.zeros((len(idx), width), dtype=torch.bool)
            tt = torch.zeros((len(idx), width), dtype=torch.long) if tok.token_type_ids is not None else None
            for r, i in enumerate(idx):
                n = len(tok.input_ids[i])
                ids[r, :n] = torch.tensor(tok.input_ids[i])
                mask[r, :n] = 1
                keep[r, :n] = torch.tensor(tok.special[i]) == 0
                if tt is not None:
                    tt[r, :n] = torch.tensor(tok.token_type_ids[i])
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if tt is not None:
                inputs["token_type_ids"] = tt.to(device)
            hidden = model(**inputs).last_hidden_state.float()
            yield idx, hidden, inputs["attention_mask"], keep.to(device)


def sentence_embedder(
    model: nn.Module,
    tokenizer,
    adapter: str | None = None,
    batch_size: int = 64,
    max_length: int = 256,
    cache: dict | None = None,
) -> EmbedSentences:
    """Callable: sentences -> mean-pooled last hidden states [N, H] (float32, CPU), padding excluded.

    Pooling is sentence-transformers' mean over the attention mask, special tokens included, as in
    ``mtpf.encoder.mean_pool`` and the exported sentence-transformer.
    """
    from mtpf.encoder import mean_pool

    def embed(sentences: Sentences) -> torch.Tensor:
        out = None
        for idx, hidden, attention, _ in encode_batches(
            model, tokenizer, sentences, batch_size, max_length, adapter, cache
        ):
            pooled = mean_pool(hidden, attention).cpu()
            if out is None:
                out = torch.empty(len(sentences), pooled.shape[-1])
            out[torch.tensor(idx)] = pooled
        return out if out is not None else torch.empty(0, 0)

    return embed


def token_embedder(
    model: nn.Module,
    tokenizer,
    adapter: str | None = None,
    batch_size: int = 64,
    max_length: int = 256,
    cache: dict | None = None,
) -> EmbedTokens:
    """Callable: sentences -> per sentence its token embeddings [n_i, H] (last hidden state, float32, CPU),
    special tokens and padding excluded."""

    def embed(sentences: Sentences) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(sentences)
        for idx, hidden, _, keep in encode_batches(
            model, tokenizer, sentences, batch_size, max_length, adapter, cache
        ):
            hidden, keep = hidden.cpu(), keep.cpu()
            for r, i in enumerate(idx):
                out[i] = hidden[r][keep[r]]
        return out

    return embed
