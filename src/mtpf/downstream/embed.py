"""Sentence embeddings for the TC protocol: mean pooling over the last hidden state, length-bucketed batches,
an on-disk cache keyed by (model fingerprint, dataset fingerprint), each distinct text encoded once."""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np


def length_batches(lengths, batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches: little padding per batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def tokenize_truncating(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Token ids truncated to ``max_length`` and, per text, whether it had to be truncated."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=False)
    ids = enc["input_ids"]
    # a text was truncated iff it fills max_length and the untruncated one is longer; check those only
    full = [i for i, x in enumerate(ids) if len(x) >= max_length]
    truncated = np.zeros(len(texts), dtype=bool)
    if full:
        long_ids = tokenizer([texts[i] for i in full], truncation=False)["input_ids"]
        truncated[full] = [len(x) > max_length for x in long_ids]
    return ids, truncated


def encode_texts(encoder, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
                 normalize: bool = False, progress: bool = False, desc: str = "encode") -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, H] float32, per text whether it was truncated)."""
    import torch

    from mtpf.data.samplers import pad_batch
    from mtpf.device import autocast
    from mtpf.encoder import mean_pool

    if not texts:
        return np.zeros((0, encoder.config.hidden_size), dtype=np.float32), np.zeros(0, dtype=bool)
    ids, truncated = tokenize_truncating(tokenizer, texts, max_length)
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    batches = length_batches([len(x) for x in ids], batch_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(encoder.parameters()).device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc=desc, unit="text", leave=False, dynamic_ncols=True)
    encoder.eval()
    with torch.inference_mode():
        for b in batches:
            batch = pad_batch([ids[i] for i in b], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device):  # bf16 on CUDA, as pre-finetuning; pooling in fp32
                hidden = encoder(**batch).last_hidden_state
            emb = mean_pool(hidden.float(), batch["attention_mask"])
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
            out[b] = emb.cpu().numpy()
            if bar is not None:
                bar.update(len(b))
    if bar is not None:
        bar.close()
    return out, truncated


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """``DIR/<model>-<dataset>.npz`` holding ``keys`` (sha1 of each text) and ``emb``; grows as texts are added.

    ``get(texts, compute)`` returns the embeddings of ``texts`` in order, calling ``compute`` (once, on the
    distinct texts not yet cached) for the rest; ``compute`` returns (embeddings, per-text truncation flags).
    ``truncated_among(texts)`` counts the truncated ones among ``texts``. ``directory=None`` disables the disk.
    """

    def __init__(self, directory: str | os.PathLike | None, model_fp: str, dataset_fp: str, config: str = ""):
        self.path = None
        if directory is not None:
            tag = hashlib.sha256(f"{model_fp}|{dataset_fp}|{config}".encode()).hexdigest()[:24]
            self.path = Path(directory) / f"emb-{tag}.npz"
        self.index: dict[str, int] = {}
        self.emb = None
        self.trunc = np.zeros(0, dtype=bool)  # per cached row
        self.encoded_now = 0
        if self.path is not None and self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    keys, self.emb = list(z["keys"]), z["emb"]
                    trunc = z["trunc"] if "trunc" in z else np.zeros(len(keys), dtype=bool)
                self.trunc = np.asarray(trunc, dtype=bool)
                self.index = {str(k): i for i, k in enumerate(keys)}
            except Exception:  # a torn or foreign file: start over
                self.index, self.emb, self.trunc = {}, None, np.zeros(0, dtype=bool)

    def get(self, texts: list[str], compute: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in self.index and k not in missing:
                missing[k] = t
        if missing:
            new, truncated = compute(list(missing.values()))
            self.trunc = np.concatenate([self.trunc, np.asarray(truncated, dtype=bool)])
            self.encoded_now += len(missing)
            start = 0 if self.emb is None else len(self.emb)
            self.emb = new if self.emb is None else np.concatenate([self.emb, new])
            for j, k in enumerate(missing):
                self.index[k] = start + j
            self._save()
        return self.emb[[self.index[k] for k in keys]]

    def truncated_among(self, texts: list[str]) -> int:
        """How many distinct texts of ``texts`` (all cached) were truncated when encoded."""
        rows = {self.index[text_key(t)] for t in texts}
        return int(self.trunc[sorted(rows)].sum()) if rows else 0

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(self.index, key=self.index.get))
        # a name of this process and thread: two units on one cache (reproduce.py --jobs 2) never share a tmp file;
        # the last whole file wins, and a text missing from it is simply encoded again
        tmp = self.path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=keys, emb=self.emb, trunc=self.trunc)
        os.replace(tmp, self.path)
