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

import itertools
from dataclasses import dataclass

import numpy as np
import torch

_BOUNDARY_PIECES = ("Ġ", "▁")


@dataclass
class Prepared:
    """What :meth:`Teacher.prepare` hands to :meth:`Teacher.embed`: every window's tokens (specials included)
    back to back, the word index of each token (-1: none), window lengths, the words without pieces of a
    window (window -> word indices; they take the window's mean), and the number of words."""
    ids: np.ndarray
    word_index: np.ndarray
    lens: np.ndarray
    missing: dict
    n_words: int


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
        # The Rust tokenizer itself, without truncation/padding: it hands back ids and word ids per sentence
        # without transformers' conversion of every field to Python lists (a third of the CPU time per word).
        self._backend = _plain_backend(tokenizer)
        vocab = tokenizer.get_vocab()
        self._boundary_ids = {vocab[p] for p in _BOUNDARY_PIECES if p in vocab}
        self.stats = EmbedStats()

    @classmethod
    def load(cls, name_or_path: str, layers=(-1,), max_length: int | None = None, device: str = "auto",
             dtype: str = "auto", batch_tokens: int | None = None) -> Teacher:
        """``device="auto"``: CUDA when present. ``dtype="auto"``: bfloat16 on CUDA (the teacher is frozen and
        word vectors only feed k-means, so bf16 costs nothing measurable and doubles the speed), float32 on CPU."""
        from mtpf.encoder import load_encoder, load_tokenizer, resolve_model

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        if batch_tokens is None:  # a GPU wants big batches; a CPU gains nothing past a few thousand tokens
            batch_tokens = 65536 if str(device).startswith("cuda") else 8192
        tok = load_tokenizer(name_or_path)
        model = load_encoder(name_or_path, dtype=getattr(torch, dtype))
        return cls(model, tok, layers, max_length, device, batch_tokens, name=resolve_model(name_or_path))

    def _limit(self, requested: int | None) -> int:
        from mtpf.encoder import max_positions

        cfg = self.model.config
        limits = []
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000:
            limits.append(int(tok_max))
        max_pos = max_positions(cfg)  # RoBERTa-style position ids start after the padding index
        if max_pos:
            limits.append(max_pos)
        if requested:
            limits.append(int(requested))
        return min(limits) if limits else 512

    # -- segmentation ------------------------------------------------------------------------------------
    def prepare(self, sentences: list[list[str]]) -> Prepared:
        """Tokenised windows of ``sentences`` for :meth:`embed` (CPU only, so it can run ahead in a thread), as
        flat arrays (:class:`Prepared`); word indices count across all ``sentences``.

        Sentences that fit one window and give every word a piece (nearly all) are laid out with numpy over the
        whole chunk at once; the rest (long sentences, words without pieces) take the per-sentence path. The
        per-token Python of the per-sentence path was ~7 % of ``mtpf label``'s time per word on a CPU, and more
        of the host's share next to a GPU."""
        if self._backend is not None:
            encs = self._backend.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
            ids_l = [e.ids for e in encs]
            wids_l = [e.word_ids for e in encs]
        else:
            enc = self.tokenizer(sentences, is_split_into_words=True, add_special_tokens=False, truncation=False,
                                 verbose=False)
            ids_l = enc["input_ids"]
            wids_l = [enc.word_ids(i) for i in range(len(sentences))]
        budget = self.max_length - self.n_special
        n_tok = np.fromiter(map(len, ids_l), np.int64, count=len(ids_l))
        n_words = np.fromiter(map(len, sentences), np.int64, count=len(sentences))
        bases = np.cumsum(n_words) - n_words
        self.stats.tokens += int(n_tok.sum())
        # pieces of a sentence's words come in word order, so the number of distinct word ids is the number of
        # changes; a None (no word) never occurs without special tokens, but would send the sentence the slow way
        fast = n_tok <= budget
        try:
            flat_w = np.fromiter(itertools.chain.from_iterable(wids_l), np.int64, count=int(n_tok.sum()))
        except TypeError:  # a None among the word ids
            flat_w = np.fromiter((-1 if w is None else w for w in itertools.chain.from_iterable(wids_l)), np.int64,
                                 count=int(n_tok.sum()))
        starts = np.cumsum(n_tok) - n_tok
        new_word = np.ones(len(flat_w), dtype=bool)
        new_word[1:] = flat_w[1:] != flat_w[:-1]
        new_word[starts[n_tok > 0]] = True
        distinct = (np.add.reduceat(new_word.astype(np.int64), starts[n_tok > 0]) if len(flat_w)
                    else np.zeros(0, np.int64))
        full = np.zeros(len(sentences), dtype=bool)
        full[n_tok > 0] = distinct == n_words[n_tok > 0]
        fast &= full & (n_words > 0)
        sent_of_tok = np.repeat(np.arange(len(sentences)), n_tok)
        fast &= ~np.isin(np.arange(len(sentences)), sent_of_tok[flat_w < 0])
        flat_ids = np.fromiter(itertools.chain.from_iterable(ids_l), np.int64, count=len(flat_w))
        take = fast[sent_of_tok]
        ids_f, w_f = flat_ids[take], flat_w[take] + bases[sent_of_tok[take]]
        if self._boundary_ids and len(ids_f):
            # Drop boundary pieces only where the word has another piece to stand for it: the first
            # min(boundary pieces, pieces - 1) boundary pieces of each word, in order.
            is_b = np.isin(ids_f, list(self._boundary_ids))
            _, first, pieces = np.unique(w_f, return_index=True, return_counts=True)
            word_slot = np.repeat(np.arange(len(first)), pieces)
            rank = np.cumsum(is_b) - is_b  # boundary pieces before this one ...
            rank = rank - rank[first][word_slot]  # ... within its word
            w_f = np.where(is_b & (rank < pieces[word_slot] - 1), -1, w_f)
        # windows: prefix + pieces + suffix per fast sentence
        lead, trail = len(self._prefix), len(self._suffix)
        fast_idx = np.flatnonzero(fast)
        lens = n_tok[fast_idx] + lead + trail
        win_start = np.cumsum(lens) - lens
        total = int(lens.sum())
        ids_out = np.empty(total, np.int64)
        wid_out = np.full(total, -1, np.int64)
        pos = np.repeat(win_start + lead, n_tok[fast_idx]) + (np.arange(len(ids_f)) - np.repeat(
            np.cumsum(n_tok[fast_idx]) - n_tok[fast_idx], n_tok[fast_idx]))
        ids_out[pos] = ids_f
        wid_out[pos] = w_f
        for k, tid in enumerate(self._prefix):
            ids_out[win_start + k] = tid
        for k, tid in enumerate(self._suffix):
            ids_out[win_start + lens - trail + k] = tid
        # the other sentences, one by one
        segments = []
        for i in np.flatnonzero(~fast).tolist():
            words, ids, wids, base = sentences[i], ids_l[i], wids_l[i], int(bases[i])
            present = set(wids)
            present.discard(None)
            missing = [w for w in range(len(words)) if w not in present] if len(present) < len(words) else []
            if len(ids) <= budget:
                segments.append(self._window(ids, wids, base, [base + w for w in missing]))
                continue
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
            # A word without pieces takes the mean of the window it falls in (the earlier one at a window edge).
            firsts = [0] + [wids[s0] for s0, _, _ in cuts[1:]]
            for k, (s0, e0, _) in enumerate(cuts):
                hi = firsts[k + 1] if k + 1 < len(cuts) else len(words)
                mine = [base + w for w in missing if firsts[k] <= w < hi]
                segments.append(self._window(ids[s0:e0], wids[s0:e0], base, mine))
        missing = {}
        if segments:
            slow_lens = np.fromiter((len(seg[0]) for seg in segments), np.int64, count=len(segments))
            ids_out = np.concatenate([ids_out, np.fromiter(itertools.chain.from_iterable(seg[0] for seg in segments),
                                                           np.int64, count=int(slow_lens.sum()))])
            wid_out = np.concatenate([wid_out, np.fromiter(itertools.chain.from_iterable(seg[1] for seg in segments),
                                                           np.int64, count=int(slow_lens.sum()))])
            missing = {len(lens) + k: seg[2] for k, seg in enumerate(segments) if seg[2]}
            lens = np.concatenate([lens, slow_lens])
        return Prepared(ids_out, wid_out, lens, missing, int(n_words.sum()))

    def _window(self, ids, wids, base, missing):
        full = self._prefix + list(ids) + self._suffix
        lead = len(self._prefix)
        word_index = [-1] * lead + [-1 if w is None else base + w for w in wids] + [-1] * len(self._suffix)
        boundary = [lead + k for k, tid in enumerate(ids) if tid in self._boundary_ids] if self._boundary_ids else []
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
        return full, word_index, missing

    # -- inference -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, sentences: list[list[str]], on_device: bool = False, prepared=None) -> torch.Tensor:
        """Word vectors of all ``sentences`` concatenated in order: float32 ``(total_words, dim)``, on CPU or, with
        ``on_device``, on the teacher's device (so normalising and k-means assignment stay there too).
        ``prepared``: ``self.prepare(sentences)`` made ahead of time."""
        prep = prepared if prepared is not None else self.prepare(sentences)
        n_words = prep.n_words
        dev = torch.device(self.device)
        cuda = dev.type == "cuda"
        # Row ``n_words`` is a sink for specials/padding: summing every token, with no boolean mask, keeps the
        # sub-token -> word averaging free of host syncs (index_add_ over word ids, on the device).
        sums = torch.zeros(n_words + 1, self.dim, dtype=torch.float32, device=dev)
        counts = torch.zeros(n_words + 1, dtype=torch.float32, device=dev)
        fallback = {}
        # Length-sorted batches of at most ``batch_tokens`` padded tokens, width rounded up to a multiple of 8
        # (fewer distinct shapes, tensor-core friendly), never past the teacher's limit.
        # All windows' tokens in two flat arrays, so each padded batch is filled by one vectorised scatter.
        lens, flat_ids = prep.lens, prep.ids
        flat_wid = prep.word_index.copy()
        flat_wid[flat_wid < 0] = n_words
        starts = np.cumsum(lens) - lens
        order = np.argsort(lens, kind="stable")
        widths = np.minimum(-(-lens[order] // 8) * 8, max(self.max_length, int(lens.max(initial=0))))
        with_missing = prep.missing
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        i = 0
        while i < len(order):
            # Widths grow along ``order``: the batch is the longest run whose padded size fits ``batch_tokens``.
            span = widths[i : i + max(1, self.batch_tokens // int(widths[i]))]
            j = i + max(1, int(np.searchsorted(span * np.arange(1, len(span) + 1), self.batch_tokens, "right")))
            rows, width = order[i:j], int(widths[j - 1])
            i = j
            row_len = lens[rows]
            r_idx = np.repeat(np.arange(len(rows)), row_len)
            c_idx = np.arange(int(row_len.sum())) - np.repeat(np.cumsum(row_len) - row_len, row_len)
            src = np.repeat(starts[rows], row_len) + c_idx
            ids_np = np.full((len(rows), width), pad_id, dtype=np.int64)
            widx_np = np.full((len(rows), width), n_words, dtype=np.int64)
            ids_np[r_idx, c_idx] = flat_ids[src]
            widx_np[r_idx, c_idx] = flat_wid[src]
            mask_np = (np.arange(width)[None, :] < row_len[:, None]).astype(np.int64)
            ids_t, mask_t, widx_t = (_to(torch.from_numpy(a), dev, cuda) for a in (ids_np, mask_np, widx_np))
            hidden = self._hidden(ids_t, mask_t)
            flat = hidden.reshape(-1, hidden.shape[-1]).float()
            widx_flat = widx_t.reshape(-1)
            sums.index_add_(0, widx_flat, flat)
            counts.index_add_(0, widx_flat, torch.ones_like(widx_flat, dtype=torch.float32))
            # Context fallback for words the tokenizer turned into nothing (rare: e.g. a lone zero-width char): the
            # mean of the window's word pieces, without its special tokens unless they are all it has.
            for r, k in enumerate(rows.tolist() if with_missing else []):
                if k in with_missing:
                    lo, hi = len(self._prefix), int(lens[k]) - len(self._suffix)
                    window = hidden[r, lo:hi] if hi > lo else hidden[r, : lens[k]]
                    fallback[tuple(with_missing[k])] = window.float().mean(0)
        out = sums[:n_words] / counts[:n_words].clamp(min=1).unsqueeze(-1)
        for missing, mean in fallback.items():
            out[list(missing)] = mean
            self.stats.words_without_pieces += len(missing)
        self.stats.sentences += len(sentences)
        self.stats.words += n_words
        return out if on_device else out.cpu()

    def _hidden(self, input_ids, attention_mask) -> torch.Tensor:
        if self.layers == (-1,):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.cat([out.hidden_states[layer] for layer in self.layers], dim=-1)


def _plain_backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    # transformers may add behaviour on top of the Rust tokenizer (e.g. a RoBERTa prefix space): use the
    # plain one only where it gives exactly what the transformers call gives.
    probe = [["Obama", "visited", "Zürich", "!", "didn't", "3.5"]]
    ref = tokenizer(probe, is_split_into_words=True, add_special_tokens=False)
    got = plain.encode_batch(probe, is_pretokenized=True, add_special_tokens=False)[0]
    return plain if (got.ids, got.word_ids) == (ref["input_ids"][0], ref.word_ids(0)) else None


def _to(t: torch.Tensor, device: torch.device, cuda: bool) -> torch.Tensor:
    return t.pin_memory().to(device, non_blocking=True) if cuda else t


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
