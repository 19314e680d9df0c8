#!/usr/bin/env python
"""Quality check: do a teacher's word clusters carry entity-type information?

Embeds every word of a CoNLL-style NER file (``{"tokens", "tags"}`` JSONL) with the teacher exactly as
``mtpf label`` does (mean of sub-token vectors, L2-normalised), fits mini-batch k-means for each K on those
vectors (same seeded fit as ``mtpf label``), assigns every word, and scores cluster ids against the gold
entity types with purity and V-measure -- over entity words only (``O`` excluded) and over all words
(``O`` as a class). The gold tags are never seen by the clustering.

    .venv/bin/python scripts/teacher_quality.py                       # packaged MiniLM, CoNLL-2003 train
    .venv/bin/python scripts/teacher_quality.py --teacher numind/NuNER-v2.0 --layers -1 -7 --clusters 200
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "ner" / "conll2003" / "train.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="packaged")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--clusters", default="20,50,200", help="comma-separated K values")
    ap.add_argument("--layers", nargs="+", default=["-1"], help="e.g. -1 or -1 -4")
    ap.add_argument("--limit", type=int, default=None, help="first N sentences only")
    ap.add_argument("--fit-words", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    import numpy as np

    from mtpf.data.io import iter_jsonl
    from mtpf.teacher.cluster import Assigner, fit_kmeans
    from mtpf.teacher.embed import Teacher, l2_normalize
    from mtpf.teacher.label import _chunks
    from mtpf.teacher.quality import score_labels

    tokens, tags = [], []
    for _, obj in iter_jsonl(args.data):
        if obj["tokens"]:
            tokens.append(obj["tokens"])
            tags.append(obj["tags"])
        if args.limit and len(tokens) >= args.limit:
            break
    args.layers = ",".join(args.layers)
    teacher = Teacher.load(args.teacher, layers=args.layers)
    t0 = time.perf_counter()
    vecs = np.concatenate([l2_normalize(teacher.embed(c)).numpy() for c in _chunks(tokens, 16384)])
    embed_s = time.perf_counter() - t0
    n = len(vecs)
    fit_rows = np.random.default_rng(args.seed).permutation(n)[: args.fit_words]
    results = {"teacher": args.teacher, "layers": args.layers, "data": str(args.data), "sentences": len(tokens),
               "words": n, "embed_words_per_s": round(n / embed_s, 1), "by_k": {}}
    print(f"{args.teacher} layers={args.layers}: {n:,} words of {args.data} embedded at {n / embed_s:,.0f} words/s")
    for k in (int(x) for x in args.clusters.split(",")):
        centroids, _ = fit_kmeans(vecs[np.sort(fit_rows)], k, seed=args.seed)
        labels, _ = Assigner(centroids).assign(vecs)
        per_sent, pos = [], 0
        for t in tokens:
            per_sent.append(labels[pos : pos + len(t)].tolist())
            pos += len(t)
        scores = score_labels(tags, per_sent, seed=args.seed)
        results["by_k"][k] = scores
        for view in ("entities", "all"):
            s = scores[view]
            print(f"  K={k:<5} {view:<9} words={s['words']:>7,}  purity={s['purity']:.3f} "
                  f"(random {s['purity_random']:.3f}, majority {s['majority_baseline']:.3f})  "
                  f"V={s['v_measure']:.3f} (h={s['homogeneity']:.3f} c={s['completeness']:.3f}; "
                  f"random {s['v_measure_random']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
