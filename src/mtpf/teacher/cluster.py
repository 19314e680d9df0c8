"""Mini-batch k-means over word vectors: a seeded streamed fit, and assignment with saved centroids.

The fit reads vectors through a callable that returns rows by index (an in-memory array or a disk-backed
``np.memmap``), so memory stays at one mini-batch however large the fitting sample is, provided the pages a
memmap faults in are dropped again (``release``, called every 50 steps). Assignment is a plain
nearest-centroid search (one matmul per chunk), identical during labelling and when new text is labelled
later from ``centroids.npy``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def fit_kmeans(vectors, n_clusters: int, *, seed: int = 0, batch_size: int = 4096, epochs: int = 3,
               init_size: int | None = None, progress=None, release=None) -> tuple[np.ndarray, dict]:
    """Fit ``n_clusters`` centroids on the rows of ``vectors`` (array-like ``(n, d)``, e.g. a memmap).

    Each step draws ``batch_size`` random rows (seeded) and calls ``MiniBatchKMeans.partial_fit``; the first
    call initialises with k-means++ on ``init_size`` rows (default ``max(3 * batch_size, 10 * K)``).
    ``epochs`` is the number of passes' worth of steps (``ceil(epochs * n / batch_size)``). ``release``: called
    every 50 steps and at the end, e.g. to unmap the pages a memmap's random reads left in the process's RSS.
    """
    from sklearn.cluster import MiniBatchKMeans

    n = len(vectors)
    if n < n_clusters:
        raise ValueError(f"only {n} words to fit {n_clusters} clusters: use fewer clusters or a larger sample")
    rng = np.random.default_rng(seed)
    init_size = min(n, init_size or max(3 * batch_size, 10 * n_clusters))
    first = np.asarray(vectors[np.sort(rng.choice(n, size=init_size, replace=False))], dtype=np.float32)
    init = kmeans_plusplus(first, n_clusters, seed=seed)
    # float64 batches: sklearn upcasts float32 distance blocks chunk by chunk, which is several times slower.
    km = MiniBatchKMeans(n_clusters=n_clusters, batch_size=batch_size, random_state=seed, n_init=1,
                         init=init.astype(np.float64), reassignment_ratio=0.01)
    km.partial_fit(first.astype(np.float64))
    steps = max(1, int(np.ceil(epochs * n / batch_size)))
    for step in range(steps):
        idx = np.sort(rng.choice(n, size=min(batch_size, n), replace=False))
        km.partial_fit(np.asarray(vectors[idx], dtype=np.float64))
        if progress is not None:
            progress.update(len(idx))
        if release is not None and step % 50 == 49:
            release()
    if release is not None:
        release()
    info = {"steps": steps + 1, "batch_size": batch_size, "init_size": init_size, "epochs": epochs,
            "fit_words": n, "seed": seed}
    return km.cluster_centers_.astype(np.float32), info


def kmeans_plusplus(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn's, ``2 + log k`` candidates a step) in float32 torch.

    scikit-learn's own version computes its distances in upcast float64 blocks and took most of the fit time
    (minutes for K=200 on 12k x 384 rows here); this is the same algorithm with one matmul per step.
    """
    threads = torch.get_num_threads()
    # Each step is a thin (trials x d) @ (d x n) product: threading it costs more than it saves, and much
    # more when the cores are shared.
    torch.set_num_threads(1)
    try:
        return _kmeans_plusplus(x, k, seed)
    finally:
        torch.set_num_threads(threads)


def _kmeans_plusplus(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    n = xt.shape[0]
    sq = (xt * xt).sum(1)
    trials = 2 + int(np.log(k))
    centers = torch.empty(k, xt.shape[1])
    first = int(torch.randint(n, (1,), generator=gen))
    centers[0] = xt[first]
    closest = (sq - 2 * xt @ xt[first] + sq[first]).clamp(min=0)
    for c in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: any remaining point will do
            cand = torch.randint(n, (trials,), generator=gen)
        else:
            cand = torch.multinomial(closest / total, trials, replacement=True, generator=gen)
        d = (sq[None, :] - 2 * xt[cand] @ xt.T + sq[cand][:, None]).clamp(min=0)
        d = torch.minimum(d, closest[None, :])
        best = int(d.sum(1).argmin())
        centers[c] = xt[cand[best]]
        closest = d[best]
    return centers.numpy()


class Assigner:
    """Nearest-centroid labels by squared Euclidean distance (ties -> lowest id)."""

    def __init__(self, centroids: np.ndarray | torch.Tensor, device: str = "cpu"):
        c = torch.as_tensor(np.asarray(centroids, dtype=np.float32)).to(device)
        self.centroids = c
        self.half_sq = 0.5 * (c * c).sum(1)
        self.device = device

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @torch.inference_mode()
    def assign(self, x, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """``(labels int64, squared distances float64)`` for the rows of ``x``."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
        labels, dists = [], []
        for s in range(0, x.shape[0], chunk):
            xb = x[s : s + chunk].to(self.device, torch.float32)
            # argmin ||x - c||^2 == argmax (x.c - ||c||^2 / 2); the ||x||^2 term is added back for inertia.
            score = xb @ self.centroids.T - self.half_sq
            best, lab = score.max(1)
            d = ((xb * xb).sum(1) - 2 * best).clamp(min=0)
            labels.append(lab.cpu())
            dists.append(d.double().cpu())
        if not labels:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return torch.cat(labels).numpy(), torch.cat(dists).numpy()


def save_centroids(path: str | os.PathLike, centroids: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(centroids, dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())  # on disk before fit.json (written next) marks the fit as done
    os.replace(tmp, path)


def load_centroids(path: str | os.PathLike) -> np.ndarray:
    return np.load(path).astype(np.float32, copy=False)
