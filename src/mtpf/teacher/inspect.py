"""``mtpf label inspect DIR``: what each cluster holds -- its size and its most frequent words."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mtpf.data.io import DataError, expand_paths, iter_jsonl


def cluster_summary(directory: str | Path, top: int = 10, max_words: int = 2_000_000,
                    lowercase: bool = False) -> dict:
    """Per-cluster size and top words, read from at most ``max_words`` labelled words (memory stays bounded
    by the vocabulary seen in that many words)."""
    directory = Path(directory)
    meta_path = directory / "clusters.json"
    if not meta_path.is_file():
        raise DataError(directory, None, "no clusters.json here: not an `mtpf label` output folder")
    try:
        meta = json.loads(meta_path.read_text())
        k = int(meta["K"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise DataError(meta_path, None, f"cannot read the number of clusters 'K': {exc}") from None
    words: list[Counter] = [Counter() for _ in range(k)]
    seen = 0
    for f in expand_paths([directory], (".jsonl", ".jsonl.gz")):
        for lineno, obj in iter_jsonl(f):
            toks, labs = obj.get("tokens"), obj.get("labels")
            if not isinstance(toks, list) or not isinstance(labs, list) or len(toks) != len(labs):
                raise DataError(f, lineno, "expected 'tokens' and 'labels' lists of equal length")
            for t, lab in zip(toks, labs):
                if not isinstance(lab, int) or not 0 <= lab < k:
                    raise DataError(f, lineno, f"label {lab!r} outside 0..{k - 1}")
                words[lab][t.lower() if lowercase else t] += 1
            seen += len(toks)
            if seen >= max_words:
                break
        if seen >= max_words:
            break
    counts = meta.get("counts") or [sum(c.values()) for c in words]
    total = max(sum(counts), 1)
    clusters = []
    for cid in range(k):
        sampled = sum(words[cid].values())
        clusters.append({
            "cluster": cid,
            "size": int(counts[cid]),
            "share": counts[cid] / total,
            "distinct_words": len(words[cid]),
            "top_words": [(w, n) for w, n in words[cid].most_common(top)],
            "top_share": (sum(n for _, n in words[cid].most_common(top)) / sampled) if sampled else 0.0,
        })
    return {"K": k, "teacher": meta.get("teacher"), "layers": meta.get("layers"), "words": meta.get("words"),
            "words_read": seen, "inertia": meta.get("inertia"), "clusters": clusters}


def format_summary(summary: dict, sort: str = "size", limit: int | None = None) -> str:
    rows = sorted(summary["clusters"], key=lambda c: (-c["size"], c["cluster"]) if sort == "size" else c["cluster"])
    if limit:
        rows = rows[:limit]
    lines = [f"K={summary['K']}  teacher={summary['teacher']}  layers={summary['layers']}  "
             f"words={summary['words']}  (top words from {summary['words_read']:,} words)",
             f"{'id':>5} {'size':>10} {'share':>7}  top words (count)"]
    for c in rows:
        top = ", ".join(f"{w} ({n})" for w, n in c["top_words"])
        lines.append(f"{c['cluster']:>5} {c['size']:>10,} {100 * c['share']:>6.2f}%  {top}")
    empty = sum(1 for c in summary["clusters"] if c["size"] == 0)
    if empty:
        lines.append(f"{empty} empty cluster(s)")
    return "\n".join(lines)
