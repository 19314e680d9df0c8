"""Batched, no-grad teacher inference and sub-token -> word averaging.

A word's vector is the mean of the teacher's vectors of the sub-tokens that the fast tokenizer's
``word_ids()`` maps to it (words are fed pre-split, ``is_split_into_words=True``), so any WordPiece, BPE or
SentencePiece teacher works and its vocabulary need not match the student's.

Byte-level BPE / SentencePiece teachers sometimes emit a bare word-boundary piece (``Ġ``/``▁``) before the
rest of a word; that piece says nothing about the word, so it is left out of the mean unless it is the
word's only piece. Special tokens never count.

Sentences longer than the teacher's limit are cut into consecutive windows of whole words (each window gets
its own special tokens), so every word is embedded -- with less context at window edges. A single word
longer than a whole window keeps only its first pieces.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xlm-roberta-xl"}
_BOUNDARY_PIECES = ("Ġ", "▁")


@dataclass
class EmbedStats:
    sentences: int = 0
    words: int = 0
    tokens: int = 0
    windowed_sentences: int = 0
    words_without_pieces: int = 0


def parse_layers(spec: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """``"-1"`` or ``"-1,-7"`` -> ``(-1, -7)``; indices into ``hidden_states`` (0 = embeddings)."""
    if isinstance(spec, str):
        try:
            layers = tuple(int(x) for x in spec.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--layers must be comma-separated integers such as -1 or -1,-7, got {spec!r}") from None
    else:
        layers = tuple(int(x) for x in spec)
    if not layers:
        raise ValueError("at least one layer is needed")
    return layers


class Teacher:
    """A frozen encoder that turns sentences (lists of words) into one vector per word."""

    def __init__(self, model, tokenizer, layers=(-1,), max_length: int | None = None, device: str = "cpu",
                 batch_tokens: int = 8192, name: str | None = None):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.layers = parse_layers(layers)
        self.device = device
        self.batch_tokens = batch_tokens
        self.name = name
        cfg = model.config
        n_hidden = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None)
        if n_hidden is not None:
            for layer in self.layers:
                if not -(n_hidden + 1) <= layer <= n_hidden:
                    raise ValueError(f"layer {layer} out of range: the teacher has {n_hidden} layers (+ embeddings)")
        self.dim = int(getattr(cfg, "hidden_size", None) or cfg.dim) * len(self.layers)
        self.max_length = self._limit(max_length)
        self._prefix, self._suffix = _special_template(tokenizer)
        self.n_special = len(self._prefix) + len(self._suffix)
        if self.max_length - self.n_special < 1:
            raise ValueError(f"max_length {self.max_length} leaves no room for words")
        vocab = tokenizer.get_vocab()
        self._boundary_ids = {vocab[p] for p in _BOUNDARY_PIECES if p in vocab}
        self.stats = EmbedStats()

    @classmethod
    def load(cls, name_or_path: str, layers=(-1,), max_length: int | None = None, device: str = "auto",
             dtype: str = "float32", batch_tokens: int = 8192) -> Teacher:
        from mtpf.encoder import load_encoder, load_tokenizer, resolve_model

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tok = load_tokenizer(name_or_path)
        model = load_encoder(name_or_path, dtype=getattr(torch, dtype))
        return cls(model, tok, layers, max_length, device, batch_tokens, name=resolve_model(name_or_path))

    def _limit(self, requested: int | None) -> int:
        cfg = self.model.config
        limits = []
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000:
            limits.append(int(tok_max))
        max_pos = getattr(cfg, "max_position_embeddings", None)
        if max_pos:
            # RoBERTa-style position ids start after the padding index, so two positions are never usable.
            offset = (cfg.pad_token_id or 0) + 1 if cfg.model_type in _ROBERTA_LIKE else 0
            limits.append(int(max_pos) - offset)
        if requested:
            limits.append(int(requested))
        return min(limits) if limits else 512

    # -- segmentation ------------------------------------------------------------------------------------
    def _segments(self, sentences: list[list[str]]):
        """Windows ``(input_ids, word index per token or -1, (first word, end word))``; word indices count
        across all ``sentences``, and the word range also covers words that got no piece."""
        enc = self.tokenizer(sentences, is_split_into_words=True, add_special_tokens=False, truncation=False,
                             verbose=False)
        budget = self.max_length - self.n_special
        segments = []
        base = 0
        for i, words in enumerate(sentences):
            ids = enc["input_ids"][i]
            wids = enc.word_ids(i)
            self.stats.tokens += len(ids)
            if len(ids) > budget:
                self.stats.windowed_sentences += 1
            cuts = []  # (start, end) token spans
            start = 0
            while start < len(ids):
                end = min(start + budget, len(ids))
                nxt = end
                if end < len(ids) and wids[end] == wids[end - 1]:
                    # Back off to a word boundary; a single word longer than the budget is cut instead.
                    cut = end
                    while cut > start and wids[cut] == wids[cut - 1]:
                        cut -= 1
                    if cut > start:
                        end = nxt = cut
                    else:
                        while nxt < len(ids) and wids[nxt] == wids[start]:
                            nxt += 1
                cuts.append((start, end, nxt))
                start = nxt
            if not cuts:  # nothing the tokenizer could encode: embed the bare special tokens as context
                segments.append(self._window([], [], base, (base, base + len(words))))
            for k, (s0, e0, n0) in enumerate(cuts):
                lo = 0 if k == 0 else wids[s0]
                hi = len(words) if k == len(cuts) - 1 else wids[n0 - 1] + 1
                segments.append(self._window(ids[s0:e0], wids[s0:e0], base, (base + lo, base + hi)))
            base += len(words)
        return segments, base

    def _window(self, ids, wids, base, word_range):
        full = self._prefix + list(ids) + self._suffix
        lead = len(self._prefix)
        word_index = [-1] * len(full)
        for k, w in enumerate(wids):
            if w is not None:
                word_index[lead + k] = base + w
        boundary = [lead + k for k, tid in enumerate(ids) if tid in self._boundary_ids]
        if boundary:
            # Drop boundary pieces only where the word has another piece to stand for it.
            pieces: dict[int, int] = {}
            for w in word_index:
                if w >= 0:
                    pieces[w] = pieces.get(w, 0) + 1
            for k in boundary:
                if pieces.get(word_index[k], 0) > 1:
                    pieces[word_index[k]] -= 1
                    word_index[k] = -1
        return full, word_index, word_range

    # -- inference -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, sentences: list[list[str]]) -> torch.Tensor:
        """Word vectors of all ``sentences`` concatenated in order: float32 ``(total_words, dim)`` on CPU."""
        segments, n_words = self._segments(sentences)
        sums = torch.zeros(n_words, self.dim, dtype=torch.float32, device=self.device)
        counts = torch.zeros(n_words, dtype=torch.float32, device=self.device)
        fallback = torch.zeros(n_words, self.dim, dtype=torch.float32, device=self.device)
        # Length-bucketed batches: sort by length, then fill each batch up to ``batch_tokens`` padded tokens.
        order = sorted(range(len(segments)), key=lambda s: len(segments[s][0]))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and len(segments[order[j]][0]) * (j + 1 - i) <= self.batch_tokens:
                j += 1
            batch = [segments[s] for s in order[i:j]]
            i = j
            width = max(len(b[0]) for b in batch)
            ids_t = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            widx = torch.full((len(batch), width), -1, dtype=torch.long)
            for r, (ids, wi, _) in enumerate(batch):
                ids_t[r, : len(ids)] = torch.tensor(ids)
                mask[r, : len(ids)] = 1
                widx[r, : len(ids)] = torch.tensor(wi)
            hidden = self._hidden(ids_t.to(self.device), mask.to(self.device)).float()
            widx = widx.to(self.device)
            keep = widx >= 0
            sums.index_add_(0, widx[keep], hidden[keep])
            counts.index_add_(0, widx[keep], torch.ones_like(widx[keep], dtype=torch.float32))
            # Context fallback for words the tokenizer turned into nothing (e.g. a lone zero-width char).
            content = mask.to(self.device).bool()
            seg_mean = (hidden * content.unsqueeze(-1)).sum(1) / content.sum(1, keepdim=True).clamp(min=1)
            for r, (_, _, (lo, hi)) in enumerate(batch):
                fallback[lo:hi] = seg_mean[r]
        missing = counts == 0
        n_missing = int(missing.sum())
        if n_missing:
            self.stats.words_without_pieces += n_missing
        out = torch.where(missing.unsqueeze(-1), fallback, sums / counts.clamp(min=1).unsqueeze(-1))
        self.stats.sentences += len(sentences)
        self.stats.words += n_words
        return out.cpu()

    def _hidden(self, input_ids, attention_mask) -> torch.Tensor:
        if self.layers == (-1,):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.cat([out.hidden_states[layer] for layer in self.layers], dim=-1)


def _special_template(tokenizer) -> tuple[list[int], list[int]]:
    """Special-token ids the tokenizer puts before and after a single sequence (e.g. [CLS] / [SEP])."""
    enc = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True)
    wids = enc.word_ids()
    first = next(i for i, w in enumerate(wids) if w is not None)
    last = max(i for i, w in enumerate(wids) if w is not None)
    return list(enc["input_ids"][:first]), list(enc["input_ids"][last + 1 :])


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32, copy=False)
