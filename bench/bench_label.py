#!/usr/bin/env python
"""Benchmark of `mtpf label`: words/s of teacher inference and of clustering, against a straightforward
baseline, in one run; and peak memory for 1M words.

Throughput (packaged all-MiniLM-L6-v2 teacher, the first ``--words`` words of ../shared/data/raw for ours and
the first ``--baseline-words`` for the much slower baseline, K=``-k``):
  ours      Teacher.embed: length-bucketed batches under no_grad, sub-token -> word means by index_add;
            k-means: torch k-means++ seeding + seeded MiniBatchKMeans partial_fit (3 epochs of mini-batches),
            then nearest-centroid assignment by one matmul per chunk.
  baseline  transformers pipeline("feature-extraction") called once per sentence, word means from the
            tokenizer's character offsets; sklearn KMeans (n_init=1, full batch) on all vectors, then predict
            (timed on the same ``--words`` vectors as ours).
Peak memory (fresh subprocess each, ru_maxrss):
  ours      the real `mtpf label` CLI on 1M words, K=200, default settings, with a stand-in teacher (random
            1-layer BERT with the same 384-d output as MiniLM, so every vector buffer is the same size and the
            run takes minutes, not an hour, on 2 shared cores);
  baseline  holding 1M x 384 float32 word vectors (what the baseline must keep) and fitting KMeans on them.

    .venv/bin/python bench/bench_label.py                   # results printed and written to --json

End-to-end `mtpf label` words/s (``--device`` switches to this mode): the real ``label_corpus`` (fit on a
sample, then every word embedded, normalised, assigned and written to shards) on a synthetic corpus or
``--corpus FILE``, with the current defaults ("ours": bf16 on CUDA, big chunks/batches) and, side by side in
the same process, the previous defaults ("before": float32, 16384-word chunks, 8192-token batches). Words/s is
pass 2 (``label_words_per_s``); the fit pass is reported apart.

    .venv/bin/python bench/bench_label.py --device cpu --random-init --words 5000 -k 20  # smoke run, ~1 min
    python bench/bench_label.py --device cuda --random-init --words 2000000             # GPU machine, no hub

The random teacher needs only a WordPiece tokenizer: the packaged all-MiniLM-L6-v2's by default, or
``--tokenizer DIR`` (e.g. a copy of its tokenizer.json/vocab.txt/tokenizer_config.json/special_tokens_map.json
where the 90 MB package is not installed). "before" is this code with the old defaults, not the old code.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / ".." / "shared" / "data" / "raw"


def read_words(limit: int) -> list[list[str]]:
    from mtpf.teacher.corpus import corpus_files, iter_sentences

    out, n = [], 0
    for s in iter_sentences(corpus_files([RAW])):
        out.append(s.words)
        n += len(s.words)
        if n >= limit:
            break
    return out


def bench_ours(sents, k: int) -> dict:
    import numpy as np
    import torch

    from mtpf.teacher.cluster import Assigner, fit_kmeans
    from mtpf.teacher.embed import Teacher, l2_normalize
    from mtpf.teacher.label import _chunks

    teacher = Teacher.load("packaged", device="cpu")
    teacher.embed(sents[:8])  # warm-up
    t0 = time.perf_counter()
    vecs = torch.cat([l2_normalize(teacher.embed(c)) for c in _chunks(sents, 16384)]).numpy()
    embed_s = time.perf_counter() - t0
    n = len(vecs)
    t0 = time.perf_counter()
    centroids, _ = fit_kmeans(vecs, k, seed=0)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, dist = Assigner(centroids).assign(vecs)
    assign_s = time.perf_counter() - t0
    return {"words": n, "embed_s": embed_s, "embed_wps": n / embed_s, "fit_s": fit_s, "fit_wps": n / fit_s,
            "assign_s": assign_s, "assign_wps": n / assign_s, "cluster_wps": n / (fit_s + assign_s),
            "total_wps": n / (embed_s + fit_s + assign_s), "mean_sq_dist": float(np.mean(dist)),
            "vectors": vecs}


def bench_baseline(sents, k: int, cluster_vectors) -> dict:
    import numpy as np
    from sklearn.cluster import KMeans
    from transformers import AutoModel, AutoTokenizer, pipeline

    from mtpf.encoder import packaged_model_path

    path = packaged_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    pipe = pipeline("feature-extraction", model=AutoModel.from_pretrained(path), tokenizer=tok, device="cpu")
    pipe("warm up")
    vectors = []
    t0 = time.perf_counter()
    for words in sents:
        text = " ".join(words)
        spans, pos = [], 0
        for w in words:
            spans.append((pos, pos + len(w)))
            pos += len(w) + 1
        feats = np.asarray(pipe(text)[0])  # (tokens incl. specials, dim)
        offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
        for a, b in spans:
            rows = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
            v = feats[rows].mean(0) if rows else feats.mean(0)
            vectors.append(v / max(np.linalg.norm(v), 1e-12))
    embed_s = time.perf_counter() - t0
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    # Clustering is timed on the same vectors (and as many words) as ours, so the rates compare like for like.
    xc = cluster_vectors
    t0 = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(xc)
    labels = km.predict(xc)
    cluster_s = time.perf_counter() - t0
    dist = ((xc - km.cluster_centers_[labels]) ** 2).sum(1)
    return {"words": n, "embed_s": embed_s, "embed_wps": n / embed_s, "cluster_words": len(xc),
            "cluster_s": cluster_s, "cluster_wps": len(xc) / cluster_s, "iterations": int(km.n_iter_),
            "total_wps": 1 / (1 / (n / embed_s) + 1 / (len(xc) / cluster_s)),
            "mean_sq_dist": float(dist.mean()), "vectors": x}


MEM_BASELINE = """
import json, resource, numpy as np
from sklearn.cluster import KMeans
x = np.random.default_rng(0).standard_normal((N, 384), dtype=np.float32)
KMeans(n_clusters=K, n_init=1, max_iter=5, random_state=0).fit(x).predict(x)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

MEM_OURS = """
import json, resource, sys
from mtpf.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_memory(words: int, k: int, work: Path, baseline: bool = True) -> dict:
    from mtpf.testing import make_tiny_encoder

    corpus = work / "corpus.txt.gz"
    n = 0
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        for s in read_words(words):
            f.write(" ".join(s) + "\n")
            n += len(s)
    teacher = make_tiny_encoder(work / "standin", "bert", layers=1, hidden=384)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", MEM_OURS, "label", "--teacher", teacher, "--corpus", str(corpus),
                          "--clusters", str(k), "--out", str(work / "labels"), "--quiet", "--device", "cpu"],
                         capture_output=True, text=True, env=env, check=False)
    ours_s = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    ours = json.loads(res.stdout.strip().splitlines()[-1])
    meta = json.loads((work / "labels" / "clusters.json").read_text())
    out = {"words": n, "ours_peak_rss_mb": ours["peak_rss_mb"], "ours_seconds": ours_s,
           "ours_label_wps_standin": meta["label_words_per_s"], "ours_fit_seconds_standin": meta["fit"]["seconds"]}
    print(json.dumps(out), flush=True)
    if not baseline:
        return out
    res = subprocess.run([sys.executable, "-c", MEM_BASELINE.replace("N,", f"{n},").replace("K,", f"{k},")],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    base = json.loads(res.stdout.strip().splitlines()[-1])
    out["baseline_peak_rss_mb"] = base["peak_rss_mb"]
    return out


SYNTH_WORDS = ("the a of to in and for on said was is by with new city company market year government police "
               "week people time first would could after before between under Monday Tuesday Paris Berlin London "
               "Obama Merkel Apple Google Microsoft visited bought reported talks percent million billion shares "
               "Kickbacks AWB wheat sales Iraq 3.5 1,000 long-term didn't , . ( ) $ %").split()


def synthetic_corpus(path: Path, words: int, seed: int = 0) -> int:
    """A .txt.gz of sentences of 5-45 words (NuNER passages average ~24) drawn Zipf-like from SYNTH_WORDS."""
    import numpy as np

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(SYNTH_WORDS) + 1)
    p /= p.sum()
    n = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        while n < words:
            k = int(rng.integers(5, 46))
            f.write(" ".join(SYNTH_WORDS[i] for i in rng.choice(len(SYNTH_WORDS), size=k, p=p)) + "\n")
            n += k
    return n


def random_bert(out: Path, tokenizer: str | None = None, hidden: int = 384, layers: int = 6, heads: int = 12) -> str:
    """A random-weight BERT with ``tokenizer`` (default: the packaged MiniLM's). The defaults are
    all-MiniLM-L6-v2's shape (6 layers, 384 hidden, 12 heads, 4 x 384 FFN)."""
    from transformers import AutoModel, AutoTokenizer, BertConfig

    if tokenizer is None:
        from mtpf.encoder import packaged_model_path

        tokenizer = packaged_model_path()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=512)
    AutoModel.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def bench_label_run(args) -> dict:
    import torch

    from mtpf.teacher.label import LabelConfig, label_corpus

    work = Path(tempfile.mkdtemp(prefix="bench-label-"))
    if args.corpus:
        corpus = before_corpus = args.corpus
        n = None
    else:
        corpus = str(work / "corpus.txt.gz")
        n = synthetic_corpus(Path(corpus), args.words)
        # the previous defaults are much slower: time them on a prefix-sized corpus of the same kind
        before_corpus = str(work / "corpus-before.txt.gz")
        synthetic_corpus(Path(before_corpus), min(args.words, args.before_words))
    teacher = random_bert(work / "minilm-l6-random", args.tokenizer) if args.random_init else args.teacher
    if args.host_ceiling:  # a 1-layer 32-d teacher with MiniLM's tokenizer: the model costs ~nothing, so the
        # words/s is what the host side (reading, splitting, tokenising, windows, JSON + gzip) can feed a device
        teacher = random_bert(work / "tiny-teacher", args.tokenizer, hidden=32, layers=1, heads=2)
    runs = {"ours": {"chunk_words": 131_072} if args.host_ceiling else {}}
    if not args.no_before:
        runs["before"] = {"dtype": "float32", "chunk_words": 16_384, "batch_tokens": 8192}
    result = {"device": args.device, "teacher": "1-layer 32-d (host ceiling)" if args.host_ceiling else
              "random MiniLM-L6 shape" if args.random_init else teacher,
              "corpus": args.corpus or f"synthetic, {n} words", "K": args.clusters,
              "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
              "cpu_threads": torch.get_num_threads()}
    for name, overrides in runs.items():
        cfg = LabelConfig(teacher=teacher, corpus=[corpus if name == "ours" else before_corpus],
                          out=str(work / f"labels-{name}"), clusters=args.clusters,
                          fit_words=min(args.fit_words, max(args.words // 2, 10 * args.clusters)),
                          device=args.device, progress=False, **overrides)
        t0 = time.perf_counter()
        info = label_corpus(cfg, log=lambda *_: None)
        total = time.perf_counter() - t0
        result[name] = {"settings": overrides or "defaults", "words": info["words"],
                        "label_words_per_s": info["label_words_per_s"], "fit_seconds": info["fit"]["seconds"],
                        "total_seconds": round(total, 2), "end_to_end_words_per_s": round(info["words"] / total, 1)}
        print(name, json.dumps(result[name]), flush=True)
    if "before" in result:
        result["speedup_label"] = round(result["ours"]["label_words_per_s"] / result["before"]["label_words_per_s"], 2)
    print(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu | cuda: end-to-end `mtpf label` words/s mode")
    ap.add_argument("--random-init", action="store_true", help="(with --device) random MiniLM-L6-shaped teacher")
    ap.add_argument("--teacher", default="packaged", help="(with --device) teacher when not --random-init")
    ap.add_argument("--host-ceiling", action="store_true", help="(with --device) a 1-layer 32-d teacher with "
                    "MiniLM's tokenizer and the CUDA chunk size: the words/s the host side can feed a device")
    ap.add_argument("--tokenizer", default=None, help="(with --random-init) tokenizer folder; default: packaged")
    ap.add_argument("--corpus", default=None, help="(with --device) a text file instead of the synthetic corpus")
    ap.add_argument("--fit-words", type=int, default=100_000, help="(with --device) k-means sample")
    ap.add_argument("--no-before", action="store_true", help="(with --device) skip the previous-defaults run")
    ap.add_argument("--before-words", type=int, default=300_000,
                    help="(with --device, synthetic corpus) words for the previous-defaults run")
    ap.add_argument("--words", type=int, default=20_000, help="words for the throughput comparison")
    ap.add_argument("--baseline-words", type=int, default=3_000,
                    help="words for the (slow) baseline; rates are compared per word")
    ap.add_argument("-k", "--clusters", type=int, default=200)
    ap.add_argument("--memory-words", type=int, default=1_000_000, help="0 skips the memory runs")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only-memory", action="store_true", help="skip the throughput comparison")
    ap.add_argument("--no-baseline-memory", action="store_true",
                    help="skip the baseline's 1M-word KMeans (over an hour on 2 shared cores)")
    args = ap.parse_args(argv)
    if args.device:
        result = bench_label_run(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from sklearn.metrics import adjusted_rand_score  # noqa: F401  (import cost outside the timings)

    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), "
                         f"torch {torch.__version__}, {torch.get_num_threads()} threads",
              "K": args.clusters}
    if not args.only_memory:
        _throughput(args, result)
    if args.memory_words:
        with tempfile.TemporaryDirectory() as work:
            result["memory"] = bench_memory(args.memory_words, args.clusters, Path(work),
                                            baseline=not args.no_baseline_memory)
        print(json.dumps(result["memory"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _throughput(args, result) -> None:
    import numpy as np

    sents = read_words(args.words)
    ours = bench_ours(sents, args.clusters)
    base_sents = read_words(args.baseline_words)
    base = bench_baseline(base_sents, args.clusters, ours["vectors"])
    # Same words first: the two word-vector implementations must agree.
    diff = float(np.abs(ours.pop("vectors")[: base["words"]] - base.pop("vectors")).max())
    result.update(ours=ours, baseline=base, max_abs_vector_diff=diff,
                  speedup_embed=ours["embed_wps"] / base["embed_wps"],
                  speedup_cluster=ours["cluster_wps"] / base["cluster_wps"],
                  speedup_total=ours["total_wps"] / base["total_wps"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
