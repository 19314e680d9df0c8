"""Deterministic, resumable batch samplers.

Every batch is a pure function of (seed, sampler state), and the state is a few integers, so a run that
resumes from a checkpoint draws exactly the batches an uninterrupted run would have drawn.
"""
from __future__ import annotations

import numpy as np

from mtpf.data.io import DataError


class HierarchicalPairSampler:
    """Pick a source, then a whole batch from that source (Appendix B of the paper).

    Source probabilities: ``"proportional"`` to size (default), ``"uniform"``, or explicit weights per source
    name. Inside a source, pairs are drawn without replacement along a per-epoch permutation; a pair whose
    anchor or positive text is already in the batch is skipped (in-batch duplicates would be false negatives).
    """

    def __init__(self, sources, batch_size: int, seed: int = 0, weights="proportional"):
        self.sources = sources
        self.batch_size = batch_size
        self.seed = seed
        self.probs = self._probabilities(weights)
        self.step = 0
        self.cursors = {s.name: [0, 0] for s in sources}  # name -> [epoch, position]
        for s in sources:
            distinct = min(len(set(s.anchors)), len(set(s.positives)))
            if distinct < batch_size:
                raise DataError(f"pair source {s.name}", None,
                                f"only {distinct} distinct texts ({len(s.anchors)} pairs), fewer than the batch "
                                f"size {batch_size}; lower tc_batch_size or drop the source")

    def _probabilities(self, weights) -> np.ndarray:
        names = [s.name for s in self.sources]
        if weights == "proportional":
            w = np.array([len(s.anchors) for s in self.sources], dtype=float)
        elif weights == "uniform":
            w = np.ones(len(self.sources))
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

    def _perm(self, source_index: int, epoch: int) -> np.ndarray:
        n = len(self.sources[source_index].anchors)
        return np.random.default_rng([self.seed, 1 + source_index, epoch]).permutation(n)

    def next_batch(self) -> tuple[str, list[int]]:
        rng = np.random.default_rng([self.seed, 0, self.step])
        si = int(rng.choice(len(self.sources), p=self.probs))
        source = self.sources[si]
        epoch, pos = self.cursors[source.name]
        perm = self._perm(si, epoch)
        chosen, seen, tried = [], set(), 0
        while len(chosen) < self.batch_size:
            tried += 1
            if tried > 2 * len(perm) + self.batch_size:
                # a DataError, so the CLI prints one clean line (checkpoints so far stay on disk)
                raise DataError(f"pair source {source.name}", None,
                                f"cannot fill a batch of {self.batch_size} pairs without repeating a text; "
                                "lower tc_batch_size")
            if pos >= len(perm):
                epoch, pos = epoch + 1, 0
                perm = self._perm(si, epoch)
            i = int(perm[pos])
            pos += 1
            a, p = source.anchors[i], source.positives[i]
            if a in seen or p in seen:
                continue
            seen.add(a)
            seen.add(p)
            chosen.append(i)
        self.cursors[source.name] = [epoch, pos]
        self.step += 1
        return source.name, chosen

    def state_dict(self) -> dict:
        return {"step": self.step, "cursors": {k: list(v) for k, v in self.cursors.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.cursors = {k: [int(v[0]), int(v[1])] for k, v in state["cursors"].items()}


class BucketBatchSampler:
    """Fixed-size batches of similar length: shuffle, cut into windows of ``batch_size * bucket_factor``,
    sort each window by length, split into batches, shuffle the batches. Padding waste is the main cost on
    CPU, and this keeps each batch's lengths close while the order stays random."""

    def __init__(self, lengths, batch_size: int, seed: int = 0, bucket_factor: int = 50):
        if len(lengths) < batch_size:
            raise ValueError(f"only {len(lengths)} sequences for a batch size of {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_factor = max(1, bucket_factor)
        self.epoch, self.index = 0, 0
        self._batches = None

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

    def next_batch(self) -> list[int]:
        if self._batches is None:
            self._batches = self._epoch_batches(self.epoch)
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        batch = self._batches[self.index]
        self.index += 1
        return [int(i) for i in batch]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = None


def pad_batch(seqs: list[list[int]], pad_id: int, labels: list[list[int]] | None = None):
    """Dynamic padding to the longest sequence of the batch."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        lab = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, l in enumerate(labels):
            lab[i, : len(l)] = torch.tensor(l, dtype=torch.long)
        out["labels"] = lab
    return out
