"""Sentence-pair sources for contrastive pre-finetuning: ``pairs/<source>.jsonl`` with anchor/positive.

Hub users can name a sentence-transformers pair dataset (``hub:sentence-transformers/all-nli:pair``);
that path needs network access and is never used by tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtpf.data.io import DataError, expand_paths, iter_jsonl

ANCHOR_KEYS = ("anchor", "query", "sentence1", "text1")
POSITIVE_KEYS = ("positive", "pos", "sentence2", "text2")


@dataclass
class PairSource:
    name: str
    anchors: list[str]
    positives: list[str]


def _pick(obj: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in obj:
            return obj[k]
    return None


def load_pair_file(path: Path) -> PairSource:
    anchors, positives = [], []
    for lineno, obj in iter_jsonl(path):
        a, p = _pick(obj, ANCHOR_KEYS), _pick(obj, POSITIVE_KEYS)
        if not isinstance(a, str) or not isinstance(p, str):
            raise DataError(path, lineno, "a pair needs string fields 'anchor' and 'positive'")
        if not a.strip() or not p.strip():
            continue
        anchors.append(a)
        positives.append(p)
    if not anchors:
        raise DataError(path, None, "pair source is empty (no anchor/positive pairs)")
    name = path.name.split(".")[0]
    return PairSource(name, anchors, positives)


def source_fingerprint(source: PairSource) -> str:
    """sha256 of a source's pairs in order: identifies hub data, which has no local file to hash."""
    import hashlib

    h = hashlib.sha256()
    for a, p in zip(source.anchors, source.positives):
        h.update(a.encode("utf-8") + b"\x00" + p.encode("utf-8") + b"\x01")
    return f"sha256:{h.hexdigest()}"


def load_hub_pairs(spec: str) -> PairSource:  # pragma: no cover - needs network
    """``hub:NAME[:CONFIG]`` -> first two text columns of the dataset's train split."""
    from datasets import load_dataset

    parts = spec[len("hub:") :].split(":")
    ds = load_dataset(parts[0], parts[1] if len(parts) > 1 else None, split="train")
    cols = [c for c in ds.column_names if isinstance(ds[0][c], str)][:2]
    if len(cols) < 2:
        raise DataError(spec, None, "hub dataset has fewer than two text columns")
    return PairSource(parts[0].split("/")[-1], list(ds[cols[0]]), list(ds[cols[1]]))


def load_pair_sources(paths: list[str]) -> list[PairSource]:
    sources: list[PairSource] = []
    local = [p for p in paths if not str(p).startswith("hub:")]
    for f in expand_paths(local, (".jsonl", ".jsonl.gz")) if local else []:
        sources.append(load_pair_file(f))
    for p in paths:
        if str(p).startswith("hub:"):
            sources.append(load_hub_pairs(str(p)))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(paths[0], None, f"two pair sources share a name: {names}")
    return sources
