"""``mtpf label``: two streamed passes over a corpus, bounded memory, resumable.

Pass 1 (fit): read the corpus once as text to count it and draw a seeded, uniform sample of whole sentences
up to ``fit_words`` words (priority sampling, so only the sample is held); embed the sample into a
disk-backed float16 matrix and fit mini-batch k-means on it; save ``centroids.npy``.

Pass 2 (label): read the corpus again in order, ``shard_sentences`` sentences a shard, embed chunk by chunk,
assign nearest centroids and stream ``{"tokens", "labels"}`` lines into ``shard-NNNNN.jsonl[.gz]``. A shard is
written to a temporary name and renamed when whole, then its bookkeeping file ``.progress/shard-NNNNN.json``
is written: a shard counts as done only when both exist, so a re-run skips exactly the finished shards.

Finally ``clusters.json`` records K, the teacher, layers, the centroid file, per-cluster counts and inertia;
``mtpf.data.ner_pseudo.load_pseudo_label_dataset([DIR], tokenizer, max_length)`` reads the folder as it is,
memory-mapped (``load_pseudo_labels`` holds it in Python lists: small folders only).
"""
from __future__ import annotations

import gzip
import heapq
import itertools
import json
import os
import random
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtpf.data.io import DataError
from mtpf.stages import fsync_file, write_text_durable
from mtpf.teacher.corpus import SPLIT_RULE, CorpusStats, corpus_files, iter_sentences

CLUSTERS_FILE = "clusters.json"
CENTROIDS_FILE = "centroids.npy"
CONFIG_FILE = "label_config.json"
FIT_FILE = "fit.json"
PROGRESS_DIR = ".progress"


@dataclass
class LabelConfig:
    teacher: str | None
    corpus: list[str]
    out: str
    clusters: int = 200
    layers: tuple[int, ...] = (-1,)
    normalize: bool = True
    max_length: int | None = None
    fit_words: int = 500_000
    fit_epochs: int = 3
    kmeans_batch: int = 4096
    seed: int = 0
    shard_sentences: int = 20_000
    chunk_words: int | None = None  # None: 16384 words on CPU, 131072 on CUDA
    batch_tokens: int | None = None  # None: 8192 padded tokens on CPU, 65536 on CUDA
    compress: bool = True
    device: str = "auto"
    dtype: str = "auto"  # bfloat16 on CUDA, float32 on CPU
    reuse_clusters: str | None = None
    overwrite: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def signature(self, sources: list[str], teacher_name: str) -> dict:
        """Settings whose change makes earlier shards or centroids wrong."""
        return {
            "teacher": teacher_name, "corpus": sources, "clusters": self.clusters, "layers": list(self.layers),
            "normalize": self.normalize, "max_length": self.max_length, "fit_words": self.fit_words,
            "fit_epochs": self.fit_epochs, "kmeans_batch": self.kmeans_batch, "seed": self.seed,
            "shard_sentences": self.shard_sentences, "compress": self.compress, "split_rule": SPLIT_RULE,
            "reuse_clusters": self.reuse_clusters,
        }


def shard_name(i: int, compress: bool) -> str:
    return f"shard-{i:05d}.jsonl" + (".gz" if compress else "")


def label_corpus(cfg: LabelConfig, teacher=None, log=print) -> dict:
    """Run both passes (skipping finished work) and return the ``clusters.json`` content."""

    from mtpf.teacher.cluster import Assigner, load_centroids, save_centroids
    from mtpf.teacher.embed import Teacher

    out = Path(cfg.out)
    sources = corpus_files(cfg.corpus)
    reuse = _read_reused(cfg.reuse_clusters) if cfg.reuse_clusters else None
    if reuse is not None:
        cfg.teacher = cfg.teacher or reuse["teacher"]
        cfg.layers = tuple(reuse["layers"])
        cfg.normalize = bool(reuse["normalize"])
        cfg.clusters = int(reuse["K"])
    if cfg.teacher is None:
        raise DataError(out, None, "no teacher given (--teacher MODEL)")
    if teacher is None:
        teacher = Teacher.load(cfg.teacher, layers=cfg.layers, max_length=cfg.max_length, device=cfg.device,
                               dtype=cfg.dtype, batch_tokens=cfg.batch_tokens)
    teacher_name = str(cfg.teacher)
    if reuse is not None and not _same_teacher(reuse["teacher"], teacher_name, teacher.name):
        raise DataError(cfg.reuse_clusters, None, f"centroids come from teacher {reuse['teacher']!r}, "
                        f"not {teacher_name!r}: word vectors of another teacher cannot use them")
    _prepare_out(out, cfg.signature(sources, teacher_name), cfg.overwrite)
    if cfg.chunk_words is None:
        cfg.chunk_words = 131_072 if str(teacher.device).startswith("cuda") else 16_384

    # -- pass 1: fit (or reuse) centroids --------------------------------------------------------------
    fit_path = out / FIT_FILE
    if (out / CENTROIDS_FILE).is_file() and fit_path.is_file():
        fit = json.loads(fit_path.read_text())
        log(f"label: reusing the fit in {out} ({fit['corpus']['words']:,} words in corpus)")
    else:
        t0 = time.perf_counter()
        stats = CorpusStats()
        if reuse is not None:
            for _ in iter_sentences(sources, stats):
                pass
            centroids = load_centroids(reuse["centroids_path"])
            fit = {"reused_from": str(cfg.reuse_clusters)}
        else:
            sample = _sample_sentences(iter_sentences(sources, stats), cfg.fit_words, cfg.seed)
            log(f"label: corpus {stats.words:,} words in {stats.sentences:,} sentences "
                f"({stats.empty_lines:,} empty lines skipped); fitting K={cfg.clusters} on {sum(map(len, sample)):,} words")
            centroids, fit = _fit(teacher, sample, cfg, out)
        fit["corpus"] = {"sentences": stats.sentences, "words": stats.words, "empty_lines": stats.empty_lines}
        fit["seconds"] = round(time.perf_counter() - t0, 2)
        save_centroids(out / CENTROIDS_FILE, centroids)
        _write_json(fit_path, fit)
    centroids = load_centroids(out / CENTROIDS_FILE)
    if centroids.shape != (cfg.clusters, teacher.dim):
        raise DataError(out / CENTROIDS_FILE, None, f"centroids have shape {centroids.shape}, expected "
                        f"({cfg.clusters}, {teacher.dim}) for this teacher and layers")
    assigner = Assigner(centroids, device=teacher.device)
    pool = ThreadPoolExecutor(1, thread_name_prefix="mtpf-label-read")

    # -- pass 2: assign and write shards -----------------------------------------------------------------
    progress_dir = out / PROGRESS_DIR
    progress_dir.mkdir(exist_ok=True)
    totals = {"sentences": 0, "words": 0, "sq_dist": 0.0, "windowed_sentences": 0, "words_without_pieces": 0}
    counts = np.zeros(cfg.clusters, dtype=np.int64)
    shards, skipped = [], 0
    made_with: dict[tuple, list[int]] = {}  # (device, dtype) -> shard indices (None: made before it was recorded)
    stats = CorpusStats()
    it = iter_sentences(sources, stats)
    bar = _bar(fit["corpus"]["words"], "label", cfg.progress)
    t0 = time.perf_counter()
    embed_s = 0.0
    for index in itertools.count():
        name = shard_name(index, cfg.compress)
        meta_path = progress_dir / f"shard-{index:05d}.json"
        block = itertools.islice(it, cfg.shard_sentences)
        if (out / name).is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            n = sum(1 for _ in block)
            if n == 0:
                break
            if n != meta["sentences"]:
                raise DataError(out / name, None, f"finished shard holds {meta['sentences']} sentences but the "
                                f"corpus now gives {n} there: the corpus changed; use --overwrite or a new --out")
            skipped += 1
            bar.update(meta["words"])
        else:
            meta, seconds = _label_shard(block, teacher, assigner, cfg, out / name, bar, pool)
            embed_s += seconds
            if meta is None:
                break
            _write_json(meta_path, meta)
        shards.append(name)
        made_with.setdefault((meta.get("device"), meta.get("dtype")), []).append(index)
        for key in ("sentences", "words", "sq_dist", "windowed_sentences", "words_without_pieces"):
            totals[key] += meta[key]
        counts += np.asarray(meta["counts"], dtype=np.int64)
    bar.close()
    pool.shutdown()
    if not shards:
        raise DataError(sources[0], None, "the corpus holds no sentence with words")
    elapsed = time.perf_counter() - t0
    if skipped:
        log(f"label: skipped {skipped} finished shard(s)")
    if len(made_with) > 1:
        log("label: the shards were made on " + "; ".join(
            f"{d or '?'} in {t or '?'} ({len(idx)} shard(s))" for (d, t), idx in made_with.items())
            + ": nearest-centroid labels, equivalent up to rounding (clusters.json 'made_with')")
    info = {
        "K": cfg.clusters,
        "teacher": teacher_name,
        "layers": list(cfg.layers),
        "normalize": cfg.normalize,
        "dim": teacher.dim,
        "max_length": teacher.max_length,
        "centroids": CENTROIDS_FILE,
        "counts": counts.tolist(),
        "inertia": float(totals["sq_dist"]),
        "mean_sq_distance": float(totals["sq_dist"] / max(totals["words"], 1)),
        "sentences": totals["sentences"],
        "words": totals["words"],
        "empty_lines": stats.empty_lines,
        "windowed_sentences": totals["windowed_sentences"],
        "words_without_pieces": totals["words_without_pieces"],
        "empty_clusters": int((counts == 0).sum()),
        "shards": shards,
        "made_with": [{"device": d, "dtype": t, "shards": idx} for (d, t), idx in made_with.items()],
        "format": "jsonl",
        "split_rule": SPLIT_RULE,
        "seed": cfg.seed,
        "corpus": sources,
        "fit": fit,
        "label_seconds": round(elapsed, 2),
        "label_words_per_s": round(totals["words"] / elapsed, 1) if elapsed > 0 and not skipped else None,
    }
    info.update(cfg.extra)
    _write_json(out / CLUSTERS_FILE, info)
    log(f"label: {totals['words']:,} words in {len(shards)} shard(s) -> {out} "
        f"(K={cfg.clusters}, {info['empty_clusters']} empty clusters, mean sq. distance {info['mean_sq_distance']:.4f})")
    return info


# -- pass 1 helpers -------------------------------------------------------------------------------------------
def _sample_sentences(sentences, fit_words: int, seed: int) -> list[list[str]]:
    """Uniform sample of whole sentences holding at most ``fit_words`` words, in random (seeded) order.

    Every sentence gets a seeded random key; the sentences with the smallest keys that fit the word budget
    are kept (a max-heap of keys), so memory is bounded by the sample, not by the corpus.
    """
    rng = random.Random(seed)
    heap: list[tuple[float, int, list[str]]] = []
    total = 0
    for seq, sent in enumerate(sentences):
        key = rng.random()
        if total + len(sent.words) <= fit_words or (heap and key < -heap[0][0]):
            heapq.heappush(heap, (-key, seq, sent.words))
            total += len(sent.words)
            while total > fit_words and len(heap) > 1:
                total -= len(heapq.heappop(heap)[2])
    return [words for _, _, words in sorted(heap, key=lambda e: -e[0])]


def _fit(teacher, sample: list[list[str]], cfg: LabelConfig, out: Path):
    import torch

    from mtpf.teacher.cluster import fit_kmeans
    from mtpf.teacher.embed import l2_normalize

    n_words = sum(len(s) for s in sample)
    if n_words < cfg.clusters:
        raise DataError(cfg.corpus[0], None, f"the corpus sample has {n_words} words, fewer than the "
                        f"{cfg.clusters} clusters asked for")
    from mtpf.data.mapped_pages import release_files

    # float16 on disk keeps pass 1 at one chunk of RAM even for a multi-million-word sample (500k words of
    # NuNER's 1536-d vectors: 1.5 GB), provided the pages written or read are unmapped again: ``release``.
    mm_path = out / ".fit_vectors.f16"
    mm = np.lib.format.open_memmap(mm_path, mode="w+", dtype=np.float16, shape=(n_words, teacher.dim))

    def release():  # a shared file mapping: written pages stay in the page cache, unmapping loses nothing
        release_files((str(mm_path),))

    bar = _bar(n_words, "fit: embed sample", cfg.progress)
    t0 = time.perf_counter()
    row = 0
    for chunk in _chunks(sample, cfg.chunk_words):
        vec = teacher.embed(chunk, on_device=True)
        if cfg.normalize:
            vec = l2_normalize(vec)
        mm[row : row + len(vec)] = vec.to(torch.float16).cpu().numpy()
        row += len(vec)
        release()
        bar.update(len(vec))
    bar.close()
    embed_s = time.perf_counter() - t0
    mm.flush()
    t1 = time.perf_counter()
    steps_bar = _bar(None, "fit: k-means", cfg.progress)
    centroids, info = fit_kmeans(mm, cfg.clusters, seed=cfg.seed, batch_size=cfg.kmeans_batch,
                                 epochs=cfg.fit_epochs, progress=steps_bar, release=release)
    steps_bar.close()
    info["embed_seconds"] = round(embed_s, 2)
    info["kmeans_seconds"] = round(time.perf_counter() - t1, 2)
    del mm
    mm_path.unlink(missing_ok=True)
    return centroids, info


# -- pass 2 helpers -------------------------------------------------------------------------------------------
def _label_shard(block, teacher, assigner, cfg: LabelConfig, path: Path, bar, pool=None):
    from mtpf.teacher.embed import l2_normalize

    tmp = path.with_name(f".{path.name}.tmp")
    fh = None
    meta = {"sentences": 0, "words": 0, "sq_dist": 0.0, "counts": [0] * cfg.clusters}
    before = (teacher.stats.windowed_sentences, teacher.stats.words_without_pieces)
    counts = np.zeros(cfg.clusters, dtype=np.int64)
    seconds = 0.0
    try:
        chunks = _chunks((s.words for s in block), cfg.chunk_words)
        for chunk, prepared in _prefetched(chunks, getattr(teacher, "prepare", None), pool):
            if fh is None:
                fh = gzip.open(tmp, "wt", encoding="utf-8", compresslevel=5) if cfg.compress \
                    else open(tmp, "w", encoding="utf-8")
            t0 = time.perf_counter()
            # vectors, normalising and assignment stay on the device
            vec = teacher.embed(chunk, on_device=True, **({"prepared": prepared} if prepared is not None else {}))
            if cfg.normalize:
                vec = l2_normalize(vec)
            labels, dist = assigner.assign(vec)
            seconds += time.perf_counter() - t0
            counts += np.bincount(labels, minlength=cfg.clusters)
            meta["sq_dist"] += float(dist.sum())
            pos = 0
            for words in chunk:
                fh.write(json.dumps({"tokens": words, "labels": labels[pos : pos + len(words)].tolist()},
                                    ensure_ascii=False) + "\n")
                pos += len(words)
            meta["sentences"] += len(chunk)
            meta["words"] += pos
            bar.update(pos)
    except BaseException:
        if fh is not None:
            fh.close()
            tmp.unlink(missing_ok=True)
        raise
    if fh is None:
        return None, seconds
    fh.close()
    fsync_file(tmp)  # the shard's bytes reach the disk before the rename makes it count as finished
    os.replace(tmp, path)
    meta["counts"] = counts.tolist()
    # provenance: a resumed run may continue on another device or dtype (a CPU run finished on a GPU); the
    # labels stay valid (nearest centroid), and clusters.json says which shards were made how
    meta["device"] = str(teacher.device)
    meta["dtype"] = str(next(teacher.model.parameters()).dtype).removeprefix("torch.")
    meta["windowed_sentences"] = teacher.stats.windowed_sentences - before[0]
    meta["words_without_pieces"] = teacher.stats.words_without_pieces - before[1]
    return meta, seconds


def _prefetched(chunks, prepare, pool):
    """``(chunk, prepare(chunk))`` pairs, the next one read (decoding, word splitting) and tokenised in
    ``pool``'s thread while the current one is on the device; errors surface in order."""
    def step(it):
        chunk = next(it, None)
        return None if chunk is None else (chunk, prepare(chunk) if prepare is not None else None)

    it = iter(chunks)
    if pool is None:
        while (item := step(it)) is not None:
            yield item
        return
    nxt = pool.submit(step, it)
    while True:
        item = nxt.result()
        if item is None:
            return
        nxt = pool.submit(step, it)
        yield item


def _chunks(sentences, chunk_words: int):
    """Consecutive lists of sentences holding about ``chunk_words`` words (at least one sentence)."""
    chunk, n = [], 0
    for words in sentences:
        chunk.append(words)
        n += len(words)
        if n >= chunk_words:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


# -- files ------------------------------------------------------------------------------------------------------
def _prepare_out(out: Path, signature: dict, overwrite: bool) -> None:
    cfg_path = out / CONFIG_FILE
    if out.exists() and overwrite:
        # the settings file goes last: an --overwrite killed half-way leaves the old settings in place, so a
        # re-run with the new ones still needs --overwrite instead of skipping old shards as finished
        shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
        for p in [out / CLUSTERS_FILE, out / CENTROIDS_FILE, out / FIT_FILE, *out.glob("shard-*.jsonl*"), cfg_path]:
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        if old != signature:
            diff = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
            raise DataError(out, None, f"already holds labels made with other settings ({', '.join(diff)}); "
                            "use a new --out, or --overwrite to start again")
    else:
        _write_json(cfg_path, signature)


def _read_reused(ref: str) -> dict:
    path = Path(ref)
    if path.is_dir():
        path = path / CLUSTERS_FILE
    if not path.is_file():
        raise DataError(path, None, "no clusters.json to reuse")
    try:
        info = json.loads(path.read_text())
        info["centroids_path"] = str(path.parent / info["centroids"])
        for key in ("K", "teacher", "layers", "normalize"):
            info[key]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:  # TypeError: valid JSON of another shape
        raise DataError(path, None, f"not a clusters.json written by mtpf label ({exc})") from None
    return info


def _same_teacher(saved: str, given: str, resolved: str | None) -> bool:
    return saved in {given, resolved} or Path(saved).resolve() == Path(resolved or given).resolve()


def _write_json(path: Path, obj) -> None:
    write_text_durable(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _bar(total, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="word", unit_scale=True, disable=not enabled, dynamic_ncols=True,
                smoothing=0.1)


class PseudoLabeller:
    """Label new text with the ids of an existing ``mtpf label`` output folder."""

    def __init__(self, teacher, centroids: np.ndarray, normalize: bool):
        from mtpf.teacher.cluster import Assigner

        self.teacher, self.normalize = teacher, normalize
        self.assigner = Assigner(centroids, device=teacher.device)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, teacher=None, device: str = "auto") -> PseudoLabeller:
        from mtpf.teacher.cluster import load_centroids
        from mtpf.teacher.embed import Teacher

        info = _read_reused(str(directory))
        if teacher is None:
            teacher = Teacher.load(info["teacher"], layers=info["layers"], max_length=info.get("max_length"),
                                   device=device)
        return cls(teacher, load_centroids(info["centroids_path"]), bool(info["normalize"]))

    def label(self, sentences: Iterable[list[str]], chunk_words: int = 16_384) -> list[list[int]]:
        """Cluster ids of every word; embeds ``chunk_words`` words at a time, so device memory is bounded by the
        chunk, not by how many sentences are given."""
        from mtpf.teacher.embed import l2_normalize

        out = []
        for chunk in _chunks(sentences, chunk_words):
            vec = self.teacher.embed(chunk)
            if self.normalize:
                vec = l2_normalize(vec)
            labels, _ = self.assigner.assign(vec)
            pos = 0
            for words in chunk:
                out.append(labels[pos : pos + len(words)].tolist())
                pos += len(words)
        return out
