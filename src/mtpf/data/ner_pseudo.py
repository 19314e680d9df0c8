"""Word-level pseudo-labels for NER pre-finetuning: JSONL ``{"tokens": [...], "labels": [int, ...]}``.

The teacher-labelling step (``mtpf label``) writes these shards; the engine reads them here and puts each
word's label on its first sub-token only (other sub-tokens and special tokens get -100), as the HF
token-classification examples do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mtpf.data.io import DataError, expand_paths, iter_jsonl, require_str_list

IGNORE = -100


@dataclass
class LabelledSentences:
    tokens: list[list[str]]
    labels: list[list[int]]
    num_labels: int
    sources: list[str]


def load_pseudo_labels(paths, num_labels: int | None = None) -> LabelledSentences:
    files = expand_paths(paths, (".jsonl", ".jsonl.gz"))
    tokens, labels = [], []
    max_label = -1
    for f in files:
        for lineno, obj in iter_jsonl(f):
            toks = require_str_list(f, lineno, obj, "tokens")
            labs = obj.get("labels")
            if not isinstance(labs, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in labs):
                raise DataError(f, lineno, "'labels' must be a list of integer cluster ids")
            if len(toks) != len(labs):
                raise DataError(f, lineno, f"{len(toks)} tokens but {len(labs)} labels (need one label per word)")
            if any(x < 0 for x in labs):
                raise DataError(f, lineno, "labels must be >= 0")
            if not toks:
                continue
            max_label = max(max_label, max(labs))
            tokens.append(toks)
            labels.append(labs)
    if not tokens:
        raise DataError(files[0] if files else Path("."), None, "no labelled sentences found")
    declared = num_labels if num_labels is not None else _declared_clusters(files)
    if declared is not None and max_label >= declared:
        raise DataError(files[0], None, f"label id {max_label} found but only {declared} clusters declared")
    return LabelledSentences(tokens, labels, declared or max_label + 1, [str(f) for f in files])


def _declared_clusters(files: list[Path]) -> int | None:
    for folder in {f.parent for f in files}:
        meta = folder / "clusters.json"
        if meta.is_file():
            try:
                return int(json.loads(meta.read_text())["K"])
            except (KeyError, ValueError, json.JSONDecodeError) as exc:
                raise DataError(meta, None, f"cannot read the number of clusters 'K': {exc}") from None
    return None


def align_first_subtoken(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label of each sub-token: the word's label on its first piece, -100 elsewhere."""
    out, previous = [], None
    for wid in word_ids:
        if wid is None or wid == previous:
            out.append(IGNORE)
        else:
            out.append(word_labels[wid])
        previous = wid
    return out


def tokenize_labelled(tokenizer, sentences: LabelledSentences, max_length: int):
    """Pre-tokenise once (fast tokenizer, batched); returns parallel lists of ids and aligned labels.

    Sentences longer than ``max_length`` are split into consecutive windows of whole words so that no word
    loses its label to truncation.
    """
    ids_out, labels_out = [], []
    step = 2048
    for start in range(0, len(sentences.tokens), step):
        chunk_tokens = sentences.tokens[start : start + step]
        chunk_labels = sentences.labels[start : start + step]
        enc = tokenizer(chunk_tokens, is_split_into_words=True, truncation=False, add_special_tokens=True)
        for i in range(len(chunk_tokens)):
            ids = enc["input_ids"][i]
            if len(ids) <= max_length:
                ids_out.append(ids)
                labels_out.append(align_first_subtoken(enc.word_ids(i), chunk_labels[i]))
            else:
                for w_ids, w_labels in _windows(tokenizer, chunk_tokens[i], chunk_labels[i], max_length):
                    ids_out.append(w_ids)
                    labels_out.append(w_labels)
    return ids_out, labels_out


def _windows(tokenizer, words, labels, max_length):
    enc = tokenizer(words, add_special_tokens=False, is_split_into_words=True)
    pieces = [0] * len(words)
    for wid in enc.word_ids():
        if wid is not None:
            pieces[wid] += 1
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    cur_words, cur_len = [], 0
    for i, n_pieces in enumerate(pieces):
        p_len = min(n_pieces, budget)
        if cur_words and cur_len + p_len > budget:
            yield _encode_window(tokenizer, words, labels, cur_words, max_length)
            cur_words, cur_len = [], 0
        cur_words.append(i)
        cur_len += p_len
    if cur_words:
        yield _encode_window(tokenizer, words, labels, cur_words, max_length)


def _encode_window(tokenizer, words, labels, idx, max_length):
    enc = tokenizer([words[i] for i in idx], is_split_into_words=True, truncation=True, max_length=max_length)
    return enc["input_ids"], align_first_subtoken(enc.word_ids(), [labels[i] for i in idx])
