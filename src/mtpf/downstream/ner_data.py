"""NER data for the token classifier: sentences -> sub-token ids with labels on each word's first sub-token,
long sentences cut into windows of whole words, and length-bucketed batches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100


@dataclass
class EncodedNer:
    ids: list[list[int]]  # one entry per piece (a sentence, or a window of a long sentence)
    labels: list[list[int]]  # class id on each word's first sub-token, IGNORE elsewhere
    sentence: list[int]  # piece -> sentence index
    words: list[list[int]]  # piece -> word index (within its sentence) of every labelled position, in order
    n_words: list[int]  # sentence -> number of words
    n_windowed: int = 0  # sentences that had to be split into windows


def _first_subtoken(word_ids, offset: int = 0):
    positions, words, previous = [], [], None
    for pos, wid in enumerate(word_ids):
        if wid is not None and wid != previous:
            positions.append(pos)
            words.append(wid + offset)
        previous = wid
    return positions, words


def encode_ner(tokenizer, tokens: list[list[str]], tag_ids: list[list[int]] | None, max_length: int) -> EncodedNer:
    enc_all = EncodedNer([], [], [], [], [len(t) for t in tokens])
    step = 2048
    for start in range(0, len(tokens), step):
        chunk = tokens[start : start + step]
        enc = tokenizer(chunk, is_split_into_words=True, truncation=False)
        for i, words in enumerate(chunk):
            s = start + i
            ids = enc["input_ids"][i]
            tags = tag_ids[s] if tag_ids is not None else [0] * len(words)
            if len(ids) <= max_length:
                _add_piece(enc_all, ids, enc.word_ids(i), tags, s, 0)
            else:
                enc_all.n_windowed += 1
                for lo, hi in _windows(tokenizer, words, max_length):
                    w = tokenizer(words[lo:hi], is_split_into_words=True, truncation=True, max_length=max_length)
                    _add_piece(enc_all, w["input_ids"], w.word_ids(), tags[lo:hi], s, lo)
    return enc_all


def _add_piece(out: EncodedNer, ids, word_ids, tags, sentence: int, offset: int) -> None:
    positions, words = _first_subtoken(word_ids)
    labels = [IGNORE] * len(ids)
    for p, w in zip(positions, words):
        labels[p] = tags[w]
    out.ids.append(list(ids))
    out.labels.append(labels)
    out.sentence.append(sentence)
    out.words.append([w + offset for w in words])


def _windows(tokenizer, words: list[str], max_length: int):
    """Consecutive word ranges whose sub-tokens (plus special tokens) fit in ``max_length``."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    pieces = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    counts = [0] * len(words)
    for wid in pieces.word_ids():
        if wid is not None:
            counts[wid] += 1
    lo, used = 0, 0
    for i, c in enumerate(counts):
        c = min(c, budget)
        if i > lo and used + c > budget:
            yield lo, i
            lo, used = i, 0
        used += c
    yield lo, len(words)


def bucket_batches(lengths, batch_size: int, rng: np.random.Generator, window: int = 50) -> list[list[int]]:
    """Shuffle, sort windows of ``batch_size * window`` by length, cut into batches (the last one may be short),
    shuffle the batches: little padding, random order, every example once per epoch."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    span = batch_size * window
    for s in range(0, len(order), span):
        chunk = order[s : s + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[b : b + batch_size].tolist() for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_pieces(enc: EncodedNer, pieces: list[int], pad_id: int, device=None, pack: bool = False) -> dict:
    """Padded ``input_ids``/``attention_mask``/``labels`` of some pieces, on ``device``; ``pack``: one
    padding-free row instead (``mtpf.pretrain.cpu_speed.pack_batch``)."""
    from mtpf.data.pipeline import to_device
    from mtpf.data.samplers import pad_batch

    if pack:
        from mtpf.pretrain.cpu_speed import pack_batch

        batch = pack_batch([enc.ids[i] for i in pieces], [enc.labels[i] for i in pieces])
    else:
        batch = pad_batch([enc.ids[i] for i in pieces], pad_id, [enc.labels[i] for i in pieces])
    return batch if device is None else to_device(batch, device)
