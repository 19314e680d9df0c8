"""``mtpf label``: teacher pseudo-labels for NER pre-finetuning; ``mtpf label inspect DIR``: what they mean."""
from __future__ import annotations

import argparse

from mtpf.config import bounded_int, positive_float, positive_int, seed_int

EPILOG = """\
examples:
  mtpf label --teacher numind/NuNER-v2.0 --layers -1 -7 --corpus corpus/ --clusters 200 --out labels/
  mtpf label --teacher packaged --corpus ../shared/data/raw --clusters 20 --out labels/ --fit-words 100000
  mtpf label --reuse-clusters labels/ --corpus new.txt --out labels-new/   # same ids on new text
  mtpf label inspect labels/ --top 15

plain text is split into words by mtpf.teacher.corpus.WORD_RE: numbers with inner . or , ; letters/digits
with combining marks and inner hyphens or apostrophes; every other visible character alone
(numbers with inner . or , ; words with inner - or ' ; any other non-space character alone);
JSONL "tokens" are kept exactly as given. Re-running with the same --out skips finished shards.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "label", help="pseudo-label words by clustering a teacher's word vectors (NER pre-finetuning data)",
        description="Embed every word of a corpus with a teacher encoder (mean of its sub-token vectors), fit "
                    "mini-batch k-means, and write {tokens, labels} JSONL shards + clusters.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="HF encoder: local folder, hub name, or 'packaged' (all-MiniLM-L6-v2)")
    p.add_argument("--corpus", nargs="+", action="extend", metavar="PATH",
                   help=".txt/.txt.gz (a sentence a line), .jsonl[.gz]/.parquet/.arrow with 'tokens' or 'text', "
                        "folders, or a hub dataset [hub:]NAME[:SUBSET][@SPLIT] (online), e.g. numind/NuNER@full")
    p.add_argument("--clusters", "-k", type=bounded_int(2), default=200, help="K (default 200, as in the paper)")
    p.add_argument("--out", help="output folder (shards, clusters.json, centroids.npy)")
    p.add_argument("--layers", nargs="+", action="extend", default=None, metavar="N",
                   help="hidden-state indices to concatenate: -1 = last (default); '-1 -7' or =-1,-7 = last + "
                        "7th from last (NuNER's suggestion)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="cluster raw word vectors instead of L2-normalised ones")
    p.add_argument("--max-length", type=bounded_int(4), default=None,
                   help="teacher window in tokens (default: the teacher's limit); longer sentences are windowed")
    p.add_argument("--fit-words", type=positive_int, default=500_000,
                   help="words in the random sample k-means is fitted on (default 500000)")
    p.add_argument("--fit-epochs", type=positive_float, default=3, help="passes over the sample in mini-batch steps")
    p.add_argument("--kmeans-batch", type=positive_int, default=4096, help="mini-batch size of k-means")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--shard-sentences", type=positive_int, default=20_000, help="sentences per output shard")
    p.add_argument("--chunk-words", type=positive_int, default=None,
                   help="words embedded per chunk (bounds memory; default 16384 on CPU, 131072 on CUDA)")
    p.add_argument("--batch-tokens", type=positive_int, default=None,
                   help="padded tokens per teacher batch (default 8192 on CPU, 65536 on CUDA)")
    p.add_argument("--no-compress", dest="compress", action="store_false", help="write .jsonl, not .jsonl.gz")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="teacher weights: auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--reuse-clusters", metavar="DIR_OR_JSON",
                   help="label with the centroids of an earlier run (same ids); skips fitting")
    p.add_argument("--overwrite", action="store_true", help="discard what --out holds and start again")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_label)

    sub = p.add_subparsers(dest="label_mode", metavar="[inspect DIR]", required=False)
    i = sub.add_parser("inspect", help="per-cluster size and most frequent words of an `mtpf label` folder")
    i.add_argument("dir", help="output folder of mtpf label")
    i.add_argument("--top", type=int, default=10, help="words shown per cluster")
    i.add_argument("--limit", type=int, default=None, help="show only this many clusters")
    i.add_argument("--sort", choices=["size", "id"], default="size")
    i.add_argument("--max-words", type=int, default=2_000_000, help="labelled words read for the word counts")
    i.add_argument("--lowercase", action="store_true", help="count words case-insensitively")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(func=_run_inspect)


def _run_label(args) -> int:
    from mtpf.data.io import DataError
    from mtpf.teacher.embed import parse_layers
    from mtpf.teacher.label import LabelConfig, label_corpus

    missing = [flag for flag, value in (("--corpus", args.corpus), ("--out", args.out)) if not value]
    if not args.teacher and not args.reuse_clusters:
        missing.insert(0, "--teacher")
    if missing:
        raise DataError(args.out or ".", None, f"mtpf label needs {', '.join(missing)} (see mtpf label --help)")
    try:
        layers = parse_layers(",".join(args.layers or ["-1"]))
    except ValueError as exc:
        raise DataError(args.out, None, str(exc)) from None
    from mtpf.device import resolve_device

    resolve_device(args.device)  # a GPU that is not there: one line now, not torch's assertion in the teacher
    cfg = LabelConfig(
        teacher=args.teacher, corpus=args.corpus, out=args.out, clusters=args.clusters, layers=layers,
        normalize=args.normalize, max_length=args.max_length, fit_words=args.fit_words, fit_epochs=args.fit_epochs,
        kmeans_batch=args.kmeans_batch, seed=args.seed, shard_sentences=args.shard_sentences,
        chunk_words=args.chunk_words, batch_tokens=args.batch_tokens, compress=args.compress, device=args.device,
        dtype=args.dtype, reuse_clusters=args.reuse_clusters, overwrite=args.overwrite, progress=not args.quiet,
    )
    try:
        label_corpus(cfg)
    except ValueError as exc:
        from mtpf.config import ConfigError

        if isinstance(exc, (DataError, ConfigError)):  # they name their own file or model (not --out)
            raise
        raise DataError(args.out, None, str(exc)) from None
    return 0


def _run_inspect(args) -> int:
    import json

    from mtpf.teacher.inspect import cluster_summary, format_summary

    summary = cluster_summary(args.dir, top=args.top, max_words=args.max_words, lowercase=args.lowercase)
    if args.json:
        print(json.dumps(summary, indent=1, ensure_ascii=False))
    else:
        print(format_summary(summary, sort=args.sort, limit=args.limit))
    return 0
