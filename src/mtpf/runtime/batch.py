"""Serving one micro-batch: tokenise, run the shared trunk once per distinct text, fan out per app, post-process.

A micro-batch is a list of *parts*: one (app, text) pair each. A part is tokenised into *pieces* (one, or
several windows for a long NER text); a piece served for an app is a *row*.

Shared trunk. Every app has a *level*: the lowest encoder layer its LoRA touches (0 for LoRA on every layer,
the number of layers for a head-only app). Below its level an app computes exactly what the bare backbone
computes. So for the levels present in the batch, ascending, the runtime

1. advances the trunk states of the distinct token sequences that still need it to that level, with no adapter
   active (one plain batched forward of those layers per chunk; optionally from a small cache), then
2. runs the rows of the apps at that level from there to the top, with their adapters (mixed or grouped).

Rows of level 0 are today's full forward; rows at the top level take the trunk states as they are.

Apps that share one loaded adapter (the runtime deduplicates identical LoRAs, e.g. TC apps carrying the same
``tc`` task-primary adapter with different heads) share its rows too: step 2 runs once per distinct
(adapter, token sequence) and every app's head reads the same hidden states.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from mtpf.runtime.app import decode_bio, softmax, split_words


class TrunkCache:
    """Trunk states keyed by (level, token ids), least recently used evicted past ``max_bytes``.

    Lets apps that ask about the same text a moment apart (separate calls) share the trunk too. Counters are
    plain attributes so a server can read them without a lock.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._d: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key):
        arr = self._d.get(key)
        if arr is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return arr

    def put(self, key, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes or key in self._d:
            return
        self._d[key] = arr
        self.bytes += arr.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._d.popitem(last=False)
            self.bytes -= old.nbytes


@dataclass
class Piece:
    ids: dict  # input name -> list[int]
    positions: list[int] = field(default_factory=list)  # NER: first sub-token position of each tagged word
    word_idx: list[int] = field(default_factory=list)  # NER: the word index (in its text) of each position

    @property
    def key(self) -> tuple:
        return tuple(self.ids["input_ids"])


@dataclass
class Tokenized:
    pieces: list[Piece]
    words: list | None = None  # NER: (word, start, end) per word
    truncated: bool = False
    windowed: bool = False


@dataclass
class Part:
    app: object  # core._App
    op: str  # entities | tags | classify | embed
    text: object  # str, or a list of words for "tags"
    tok: Tokenized | None = None
    hidden: list = field(default_factory=list)  # per piece: [len, H]


def tokenize_parts(parts: list[Part], tokenizer, input_names: list[str], model_max_length: int) -> None:
    """Fill ``part.tok``; parts with the same tokenisation (text, task, length limit) share one result."""
    from mtpf.downstream.ner import IGNORE, encode_ner

    groups: dict[tuple, list[Part]] = {}
    for p in parts:
        spec = p.app.spec
        max_len = min(spec.max_length, model_max_length)
        kind = "ner" if spec.task == "ner" else "tc"
        text_key = tuple(p.text) if p.op == "tags" else p.text
        groups.setdefault((kind, max_len, p.op == "tags"), {}).setdefault(text_key, []).append(p)
    for (kind, max_len, presplit), by_text in groups.items():
        texts = list(by_text)
        if kind == "ner":
            words = [[(w, -1, -1) for w in t] if presplit else split_words(t) for t in texts]
            toks = [Tokenized([], ws) for ws in words]
            nonempty = [i for i, ws in enumerate(words) if ws]  # no words: nothing to tag, no forward
            # the evaluation suite's windowing: long sentences become consecutive windows of whole words
            enc = encode_ner(tokenizer, [[w for w, _, _ in words[i]] for i in nonempty], None, max_len)
            for ids, labels, sent, widx in zip(enc.ids, enc.labels, enc.sentence, enc.words):
                sent = nonempty[sent]
                ids_d = {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids)}
                positions = [i for i, lab in enumerate(labels) if lab != IGNORE]
                toks[sent].pieces.append(Piece({n: ids_d[n] for n in input_names}, positions, widx))
            for t in toks:
                t.windowed = len(t.pieces) > 1
        else:
            enc = tokenizer(texts, truncation=False, verbose=False)
            # tokenise in full to know what gets cut; only the (rare) long texts are tokenised again, truncated
            long = {i: j for j, i in enumerate(i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_len)}
            cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_len) if long else None
            toks = []
            for i in range(len(texts)):
                src, j = (cut, long[i]) if i in long else (enc, i)
                toks.append(Tokenized([Piece({n: src[n][j] for n in input_names})], truncated=i in long))
        for text_key, tok in zip(texts, toks):
            for p in by_text[text_key]:
                p.tok = tok


def pad(seqs: list[dict], input_names: list[str], pad_id: int) -> dict[str, np.ndarray]:
    length = max(len(s["input_ids"]) for s in seqs)
    feeds = {}
    for name in input_names:
        arr = np.full((len(seqs), length), pad_id if name == "input_ids" else 0, dtype=np.int64)
        for j, s in enumerate(seqs):
            arr[j, :len(s[name])] = s[name]
        feeds[name] = arr
    return feeds


def chunk_order(items: list[tuple[int, object]], forward_rows: int, grouped: bool) -> list[list[int]]:
    """Indices of ``items`` ((length, adapter key) each) cut into forward passes of ``forward_rows`` rows.

    Sorted by length to cut padding; grouped backends keep one adapter's rows together (a new chunk starts at
    an adapter change once the current chunk is half full).
    """
    order = sorted(range(len(items)), key=lambda i: ((str(items[i][1]),) if grouped else ()) + (items[i][0],))
    chunks, cur = [], []
    for i in order:
        if cur and (len(cur) >= forward_rows or (grouped and items[cur[-1]][1] != items[i][1]
                                                 and len(cur) >= forward_rows // 2)):
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


class BatchRunner:
    """Runs the parts of one micro-batch through a backend with the shared trunk (see the module doc)."""

    def __init__(self, backend, input_names: list[str], pad_id: int, forward_rows: int, cache: TrunkCache | None,
                 shared_trunk: bool = True, dedup: bool = True):
        self.backend = backend
        self.input_names = input_names
        self.pad_id = pad_id
        self.forward_rows = forward_rows
        self.cache = cache
        self.num_layers = int(getattr(backend, "num_layers", 0))
        self.can_split = shared_trunk and bool(getattr(backend, "supports_layer_ranges", False))
        self.group_upper = str(getattr(backend, "device", "cpu")).startswith("cpu")
        self.dedup = dedup
        # counters (read without a lock): rows of trunk forwards (no adapter; a text advanced in two steps counts
        # twice), rows of forwards with an adapter (up to the top), and rows answered (pieces of parts)
        self.trunk_rows = 0
        self.adapter_rows = 0
        self.rows_served = 0

    def level(self, app) -> int:
        """Lowest layer the app's adapter touches; the top for a head-only app (0 where ranges are unsupported)."""
        if app.key is None:
            return self.num_layers
        if not self.can_split:
            return 0
        return int(self.backend.first_layer.get(app.key, 0))

    def _forward(self, items: list[tuple[dict, object, np.ndarray | None]], start: int, stop: int | None):
        """``items``: (ids, adapter key, state entering ``start`` or None); returns each row's output [len, H]."""
        # On CPU, rows are ordered by adapter and cut per adapter once a chunk is half full (small groups still
        # share a forward, mixed): 8 all-layer NER apps in one analyze cost 15.7 ms/text/app with every forward
        # mixing apps vs ~7 alone (bench/bench_lora_layers.py --serving-only); elsewhere (a GPU, where one big
        # forward beats several small ones) the backend's mode decides
        grouped = self.group_upper or getattr(self.backend, "mode", "grouped") == "grouped"
        out: list = [None] * len(items)
        for chunk in chunk_order([(len(ids["input_ids"]), key) for ids, key, _ in items], self.forward_rows,
                                 grouped):
            feeds = pad([items[i][0] for i in chunk], self.input_names, self.pad_id)
            hidden = None
            if start > 0:
                hidden = np.zeros(feeds["input_ids"].shape + (items[chunk[0]][2].shape[-1],), np.float32)
                for j, i in enumerate(chunk):
                    hidden[j, :len(items[i][2])] = items[i][2]
            keys = [items[i][1] for i in chunk]
            if start == 0 and (stop is None or stop >= self.num_layers):
                h = self.backend.forward(feeds, keys)
            else:
                h = self.backend.forward(feeds, keys, start, stop, hidden)
            for j, i in enumerate(chunk):
                out[i] = h[j, :len(items[i][0]["input_ids"])]
        return out

    def run(self, parts: list[Part]) -> None:
        """Fill ``part.hidden`` (last hidden state per piece) for every part."""
        top = self.num_layers
        rows = [(p, k, self.level(p.app)) for p in parts for k in range(len(p.tok.pieces))]
        self.rows_served += len(rows)
        need: dict[tuple, int] = {}  # distinct token sequence -> highest level any of its rows needs
        ids_of: dict[tuple, dict] = {}
        for p, k, lvl in rows:
            if lvl > 0:
                key = p.tok.pieces[k].key
                need[key] = max(need.get(key, 0), lvl)
                ids_of[key] = p.tok.pieces[k].ids
        state: dict[tuple, tuple[int, np.ndarray | None]] = {key: (0, None) for key in need}
        for p in parts:
            p.hidden = [None] * len(p.tok.pieces)
        for lvl in sorted({lvl for _, _, lvl in rows}):
            if lvl > 0:
                self._advance([key for key, m in need.items() if m >= lvl], lvl, state, ids_of)
            at = [(p, k) for p, k, v in rows if v == lvl]
            if lvl >= top:
                for p, k in at:
                    p.hidden[k] = state[p.tok.pieces[k].key][1]
                continue
            # one row per distinct (adapter, token sequence): apps sharing an adapter share these layers too
            items, first, where = [], {}, []
            for p, k in at:
                piece = p.tok.pieces[k]
                row_key = (p.app.key, piece.key) if self.dedup else len(where)
                if row_key not in first:
                    first[row_key] = len(items)
                    items.append((piece.ids, p.app.key, state[piece.key][1] if lvl > 0 else None))
                where.append(first[row_key])
            self.adapter_rows += len(items)
            outs = self._forward(items, lvl, None)
            for (p, k), j in zip(at, where):
                p.hidden[k] = outs[j]

    def _advance(self, keys: list[tuple], lvl: int, state: dict, ids_of: dict) -> None:
        """Bring the trunk states of ``keys`` to layer ``lvl`` (plain forward, no adapter; cache first)."""
        todo: dict[int, list[tuple]] = {}
        for key in keys:
            cur, _ = state[key]
            if cur >= lvl:
                continue
            hit = self.cache.get((lvl, key)) if self.cache is not None else None
            if hit is not None:
                state[key] = (lvl, hit)
            else:
                todo.setdefault(cur, []).append(key)
        for cur, group in todo.items():
            items = [(ids_of[key], None, state[key][1]) for key in group]
            self.trunk_rows += len(items)
            for key, h in zip(group, self._forward(items, cur, lvl)):
                h = np.ascontiguousarray(h)
                state[key] = (lvl, h)
                if self.cache is not None:
                    # a copy: h is a slice of the whole padded batch output, which a cached view would keep
                    # alive (6x the bytes the cache counts, measured); trunk_cache_mb must bound the memory
                    self.cache.put((lvl, key), h.copy() if h.base is not None else h)


def post_process(part: Part):
    """A part's answer from its pieces' hidden states (NER windows merged per word)."""
    spec = part.app.spec
    tok = part.tok
    if spec.task == "ner":
        n = len(tok.words)
        tags, scores = ["O"] * n, [1.0] * n  # a word without a sub-token (rare symbols) stays O
        for piece, h in zip(tok.pieces, part.hidden):
            if not piece.positions:
                continue
            probs = softmax(h[piece.positions] @ spec.head_weight.T + spec.head_bias)
            best = probs.argmax(-1)
            for w, c, pr in zip(piece.word_idx, best, probs):
                tags[w] = spec.labels[int(c)]
                scores[w] = float(pr[c])
        if part.op == "tags":
            return tags
        return decode_bio(part.text, tok.words, tags, scores)
    h = part.hidden[0]  # only this row's real tokens
    emb = h[0] if spec.pooling == "cls" else h.mean(0)
    if spec.normalize:
        emb = emb / max(float(np.linalg.norm(emb)), 1e-12)
    if part.op == "embed":
        return emb
    probs = softmax(emb @ spec.head_weight.T + spec.head_bias)
    c = int(probs.argmax())
    return {"label": spec.labels[c], "score": float(probs[c]),
            "probabilities": {lab: float(p) for lab, p in zip(spec.labels, probs)}, "truncated": tok.truncated}
