"""Deterministic, resumable batch samplers working in index space.

Batch ``k`` is a pure function of (seed, k): a DataLoader worker can build any batch without the others,
a resumed run starts at ``k = steps done x micro-batches``, and the state is one integer. Per-step work is
O(batch) whatever the source size: no permutation of a whole source, no set of all its texts.
"""
from __future__ import annotations

import math

import numpy as np

from mtpf.data.io import DataError

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a cheap, well-mixing hash of uint64s (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class IndexPermutation:
    """A seeded bijection of ``[0, n)`` evaluated per index: a 4-round Feistel network on the next even
    power of two, cycle-walked back into range. Hand-written because neither numpy nor ``datasets`` offers a
    permutation that is not materialised (``rng.permutation(n)`` costs O(n) time and memory per epoch)."""

    ROUNDS = 4

    def __init__(self, n: int, key):
        self.n = int(n)
        self.half = max(1, math.ceil(math.log2(max(self.n, 2)) / 2))
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.random.default_rng(key).integers(0, 2**63, size=self.ROUNDS, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << np.uint64(self.half)) | right

    def __call__(self, positions) -> np.ndarray:
        y = self._encrypt(np.asarray(positions, dtype=np.uint64))
        out = y >= self.n
        while out.any():  # cycle walking: the domain is < 4n, so ~1-3 extra rounds on average
            y[out] = self._encrypt(y[out])
            out = y >= self.n
        return y.astype(np.int64)


def source_probabilities(names: list[str], sizes: list[int], weights="proportional", temperature: float = 1.0,
                         size_cap: int | None = None) -> np.ndarray:
    """``proportional``: p_i ~ min(n_i, size_cap) ** (1 / temperature) (T5-style capped, temperature-scaled
    mixing; temperature > 1 flattens towards uniform), ``uniform``, or explicit ``{source: weight}``."""
    if weights == "proportional":
        if temperature <= 0:
            raise ValueError(f"pair_temperature must be > 0, got {temperature}")
        n = np.array(sizes, dtype=float)
        if size_cap:
            n = np.minimum(n, float(size_cap))
        w = n ** (1.0 / temperature)
    elif weights == "uniform":
        w = np.ones(len(names))
    elif isinstance(weights, dict):
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"pair_weights names unknown sources {sorted(unknown)}; sources are {names}")
        w = np.array([float(weights.get(n, 0.0)) for n in names])
    else:
        raise ValueError(f"pair_weights must be 'proportional', 'uniform' or a mapping, got {weights!r}")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"pair_weights must be non-negative and not all zero, got {dict(zip(names, w))}")
    return w / w.sum()


class HierarchicalPairSampler:
    """Pick a source, then a whole batch from that source (Appendix B of the paper).

    Step k's source is drawn with the source probabilities; if it is the j-th batch drawn from that source,
    its rows are positions ``j*B .. j*B+B-1`` of the source's epoch-wise seeded permutation (so a source is
    covered once per epoch). A pair whose anchor or positive repeats a text already in the batch (in-batch
    duplicates would be false negatives) is replaced by a seeded random row of the same source.
    ``keys(source_name, rows)`` returns a (anchor key, positive key) per row: texts, or token ids.
    """

    BLOCK = 1024  # steps whose sources are drawn at once

    def __init__(self, sizes: dict[str, int], batch_size: int, seed: int = 0, weights="proportional",
                 temperature: float = 1.0, size_cap: int | None = None):
        self.names = list(sizes)
        self.sizes = [int(sizes[n]) for n in self.names]
        self.batch_size = batch_size
        self.seed = seed
        for name, n in zip(self.names, self.sizes):
            if n < batch_size:
                raise DataError(f"pair source {name}", None, f"only {n} pairs, fewer than the batch size "
                                f"{batch_size}; lower tc_batch_size or drop the source")
        self.probs = source_probabilities(self.names, self.sizes, weights, temperature, size_cap)
        self.step = 0
        self._cum = [np.zeros(len(self.names), dtype=np.int64)]  # batches per source before each block
        self._blocks: dict[int, np.ndarray] = {}

    def _block(self, b: int) -> np.ndarray:
        if b not in self._blocks:
            if len(self._blocks) > 8:
                self._blocks.clear()
            rng = np.random.default_rng([self.seed, 0, b])
            self._blocks[b] = rng.choice(len(self.names), size=self.BLOCK, p=self.probs)
        return self._blocks[b]

    def plan(self, k: int) -> tuple[int, int]:
        """(source index, how many batches that source gave before step k): O(1) amortised."""
        b, r = divmod(k, self.BLOCK)
        while len(self._cum) <= b:
            last = len(self._cum) - 1
            self._cum.append(self._cum[last] + np.bincount(self._block(last), minlength=len(self.names)))
        choices = self._block(b)
        si = int(choices[r])
        return si, int(self._cum[b][si] + np.count_nonzero(choices[:r] == si))

    def _rows(self, si: int, j: int) -> np.ndarray:
        n, size = self.sizes[si], self.batch_size
        pos = np.arange(j * size, (j + 1) * size, dtype=np.int64)
        epochs, offsets = pos // n, pos % n
        out = np.empty(size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = IndexPermutation(n, [self.seed, 1 + si, int(e)])(offsets[sel])
        return out

    def batch(self, k: int, keys) -> tuple[str, list[int]]:
        si, j = self.plan(k)
        name, n = self.names[si], self.sizes[si]
        candidates = self._rows(si, j)
        rng = np.random.default_rng([self.seed, 2, k])
        chosen, seen, tried = [], set(), 0
        while True:
            for row, (ka, kp) in zip(candidates.tolist(), keys(name, candidates)):
                if ka in seen or kp in seen or ka == kp:
                    continue
                seen.add(ka)
                seen.add(kp)
                chosen.append(row)
                if len(chosen) == self.batch_size:
                    return name, chosen
            tried += len(candidates)
            if tried > 8 * self.batch_size + 64:
                raise DataError(f"pair source {name}", None, f"cannot fill a batch of {self.batch_size} pairs "
                                "without repeating a text; lower tc_batch_size or drop the source")
            candidates = rng.integers(0, n, size=self.batch_size - len(chosen) + 8)

    def next_batch(self, keys) -> tuple[str, list[int]]:
        out = self.batch(self.step, keys)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class BucketBatchSampler:
    """Fixed-size batches of similar length: shuffle, cut into windows of ``batch_size * bucket_factor``,
    sort each window by length, split into batches, shuffle the batches. Padding waste is the main cost on
    CPU, and this keeps each batch's lengths close while the order stays random. Every epoch has the same
    number of batches, so batch k is a pure function of (seed, k). Holds one int array of lengths."""

    def __init__(self, lengths, batch_size: int, seed: int = 0, bucket_factor: int = 50):
        if len(lengths) < batch_size:
            raise ValueError(f"only {len(lengths)} sequences for a batch size of {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_factor = max(1, bucket_factor)
        window = batch_size * self.bucket_factor
        n = len(self.lengths)
        self.per_epoch = (n // window) * self.bucket_factor + (n % window) // batch_size
        self.step = 0
        self._epoch, self._batches = None, None

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        window = self.batch_size * self.bucket_factor
        batches = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            for b in range(0, len(chunk) - self.batch_size + 1, self.batch_size):
                batches.append(chunk[b : b + self.batch_size])
        rng.shuffle(batches)
        return batches

    def batch(self, k: int) -> list[int]:
        epoch, i = divmod(k, self.per_epoch)
        if self._epoch != epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return [int(x) for x in self._batches[i]]

    def next_batch(self) -> list[int]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def pad_batch(seqs, pad_id: int, labels=None, multiple_of: int = 1):
    """Dynamic padding to the longest sequence of the batch, rounded up to ``multiple_of`` (8 suits tensor
    cores and bounds the number of distinct shapes). Vectorised: one numpy scatter, no per-row loop."""
    import torch

    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max())
    width = -(-width // multiple_of) * multiple_of
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    ids[mask] = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if labels is not None:
        lab = np.full((len(seqs), width), -100, dtype=np.int64)
        for i, row in enumerate(labels):  # labels may be shorter than their ids
            lab[i, : len(row)] = row
        out["labels"] = torch.from_numpy(lab)
    return out
