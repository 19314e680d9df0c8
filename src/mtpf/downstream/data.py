"""Downstream datasets: NER (``ner/<name>/{train,dev,test}.jsonl[.gz]``) and text classification
(``cls/<name>/{train,dev,test}.jsonl``), from a local folder of the ``../shared/data`` layout or, for users
who are online, from a Hugging Face hub name.

Every problem is reported as a :class:`mtpf.data.io.DataError` naming the file (and line where there is one):
a missing split, an unknown tag scheme, a label that occurs only in the test split, an empty file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtpf.data.io import DataError, iter_jsonl, require_str_list

SPLITS = ("train", "dev", "test")
_SUFFIXES = (".jsonl", ".jsonl.gz")
# hub split names -> ours
_HUB_SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "valid": "dev", "test": "test"}


@dataclass
class NerSplit:
    tokens: list[list[str]]
    tags: list[list[str]]
    source: str

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class NerDataset:
    name: str
    splits: dict[str, NerSplit]
    fingerprint: str
    entity_types: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Class ids of the token classifier: ``O`` then ``B-X``, ``I-X`` for every entity type of train."""
        out = ["O"]
        for t in self.entity_types:
            out += [f"B-{t}", f"I-{t}"]
        return out


@dataclass
class ClsSplit:
    texts: list[str]
    labels: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class ClsDataset:
    name: str
    splits: dict[str, ClsSplit]
    fingerprint: str
    label_names: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- helpers
def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in _SUFFIXES:
        f = folder / f"{split}{suffix}"
        if f.is_file():
            return f
    return None


def _fingerprint_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def _local_splits(folder: Path, required: tuple[str, ...]) -> dict[str, Path]:
    found = {s: f for s in SPLITS if (f := _split_file(folder, s)) is not None}
    for s in required:
        if s not in found:
            present = ", ".join(sorted(found)) or "none"
            raise DataError(folder, None, f"no {s} split: expected {s}.jsonl or {s}.jsonl.gz "
                                          f"(splits present: {present})")
    return found


def is_local(ref: str) -> bool:
    return Path(ref).exists()


def dataset_name(ref: str) -> str:
    p = Path(ref)
    return p.name if p.exists() else ref.replace("/", "__")


# ----------------------------------------------------------------------------------------------- NER
def check_tags(path, lineno, tags: list[str]) -> None:
    """IOB2/IOB1 tags only (``O``, ``B-X``, ``I-X``); anything else is an unknown scheme."""
    for t in tags:
        if t == "O":
            continue
        prefix, sep, typ = t.partition("-")
        if sep and typ and prefix in ("B", "I"):
            continue
        if sep and prefix in ("E", "S", "L", "U"):
            raise DataError(path, lineno, f"tag {t!r} looks like the BIOES/BILOU scheme; mtpf expects IOB2 "
                                          "(O, B-TYPE, I-TYPE): convert the tags first")
        raise DataError(path, lineno, f"unknown tag {t!r}: mtpf expects the IOB2 scheme (O, B-TYPE, I-TYPE)")


def read_ner_split(path: Path) -> NerSplit:
    tokens, tags = [], []
    for lineno, obj in iter_jsonl(path):
        toks = require_str_list(path, lineno, obj, "tokens")
        tg = require_str_list(path, lineno, obj, "tags")
        if len(toks) != len(tg):
            raise DataError(path, lineno, f"{len(toks)} tokens but {len(tg)} tags (need one tag per token)")
        if not toks:
            continue
        check_tags(path, lineno, tg)
        tokens.append(toks)
        tags.append(tg)
    if not tokens:
        raise DataError(path, None, "no sentences in this split")
    return NerSplit(tokens, tags, str(path))


def entity_types(tag_lists) -> set[str]:
    return {t[2:] for tags in tag_lists for t in tags if t != "O"}


def load_ner_dataset(ref: str, allow_unseen_labels: bool = False) -> NerDataset:
    """Local folder ``{train,dev,test}.jsonl[.gz]`` or a hub name (``name`` or ``name:config``)."""
    if is_local(ref):
        folder = Path(ref)
        if not folder.is_dir():
            raise DataError(folder, None, "an NER dataset must be a folder holding train/dev/test.jsonl[.gz]")
        files = _local_splits(folder, ("train", "test"))
        splits = {s: read_ner_split(f) for s, f in files.items()}
        fp = _fingerprint_files([files[s] for s in sorted(files)])
    else:
        splits, fp = _hub_ner(ref)
    train_types = entity_types(splits["train"].tags)
    for s in ("dev", "test"):
        if s in splits:
            unseen = sorted(entity_types(splits[s].tags) - train_types)
            if unseen and not allow_unseen_labels:
                raise DataError(splits[s].source, None,
                                f"entity type(s) {unseen} occur in {s} but never in train: the model cannot "
                                "learn them. Fix the data, or pass --allow-unseen-labels to score them as misses")
    if not train_types:
        raise DataError(splits["train"].source, None, "the train split has no entities (every tag is O)")
    return NerDataset(dataset_name(ref), splits, fp, sorted(train_types))


def _check_hub(ref: str) -> None:
    """Fail in seconds, not after minutes of retries, when the name is no local folder and the hub is unreachable
    (offline mode is left to ``datasets``, which answers from its cache at once)."""
    from mtpf.encoder import HUB_ID, hub_endpoint, hub_offline, hub_reachable

    if not HUB_ID.match(_hub_name(ref)[0]):  # a path, not a hub name: say so instead of asking the hub
        raise DataError(ref, None, "not a local folder (no such folder), nor a hub name; a dataset is a folder "
                                   "holding {train,dev,test}.jsonl[.gz] or a hub name")
    if not hub_offline() and not hub_reachable():
        raise DataError(ref, None, f"not a local folder, and {hub_endpoint()} is not reachable to load it from "
                                   "the hub; check the path")


def _hub_name(ref: str) -> tuple[str, str | None]:
    name, _, config = ref.partition(":")
    return name, config or None


def _hub_load(ref: str):  # pragma: no cover - needs the network
    """``datasets.load_dataset`` of a ``name[:config]`` reference, failing with one line."""
    name, config = _hub_name(ref)
    _check_hub(ref)
    try:
        from datasets import load_dataset

        return load_dataset(name, config)
    except Exception as exc:
        raise DataError(ref, None, "not a local folder, and loading it from the hub failed: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None


def _hub_result(ref: str, ds, splits: dict):  # pragma: no cover - needs the network
    """The splits read from hub dataset ``ds`` (train and test required) and its fingerprint."""
    for s in ("train", "test"):
        if s not in splits:
            raise DataError(ref, None, f"hub dataset has no {s} split (has {list(ds)})")
    return splits, _content_fingerprint(ref, splits)


def _content_fingerprint(ref: str, splits: dict) -> str:
    """The rows read from a hub dataset, hashed (a local dataset hashes its files): datasets has no public
    fingerprint of a loaded dataset, and a changed hub dataset must not reuse the cells of the old one."""
    h = hashlib.sha256(ref.encode())
    for name in sorted(splits):
        split = splits[name]
        rows = zip(split.tokens, split.tags) if isinstance(split, NerSplit) else zip(split.texts, split.labels)
        h.update(f"\0{name}\0".encode())
        for row in rows:
            h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def _hub_ner(ref: str):  # pragma: no cover - needs the network
    ds = _hub_load(ref)
    splits = {}
    for hub_split, ours in _HUB_SPLITS.items():
        if hub_split not in ds:
            continue
        d = ds[hub_split]
        tok_col = next((c for c in ("tokens", "words") if c in d.column_names), None)
        tag_col = next((c for c in ("ner_tags", "tags", "labels") if c in d.column_names), None)
        if tok_col is None or tag_col is None:
            raise DataError(ref, None, f"hub split {hub_split} has no tokens/ner_tags columns ({d.column_names})")
        feat = d.features[tag_col]
        names = getattr(getattr(feat, "feature", None), "names", None)
        tags = [[names[t] if names else str(t) for t in row] for row in d[tag_col]]
        for i, tg in enumerate(tags):
            check_tags(f"{ref}[{hub_split}]", i + 1, tg)
        splits[ours] = NerSplit([list(t) for t in d[tok_col]], tags, f"{ref}[{hub_split}]")
    return _hub_result(ref, ds, splits)


def subsample(n: int, fraction: float, seed: int) -> list[int]:
    """Seeded random subset of ``round(fraction * n)`` (at least 1) indices, in original order."""
    if not 0 < fraction <= 1:
        from mtpf.config import ConfigError

        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if fraction >= 1:
        return list(range(n))
    k = max(1, int(round(fraction * n)))
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


# ----------------------------------------------------------------------------------------------- TC
def read_cls_split(path: Path) -> ClsSplit:
    texts, labels = [], []
    for lineno, obj in iter_jsonl(path):
        text, label = obj.get("text"), obj.get("label")
        if not isinstance(text, str):
            raise DataError(path, lineno, "'text' must be a string")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(path, lineno, "'label' must be a string (or an integer class id)")
        texts.append(text)
        labels.append(str(label))
    if not texts:
        raise DataError(path, None, "no rows in this split")
    return ClsSplit(texts, labels, str(path))


def load_cls_dataset(ref: str, allow_unseen_labels: bool = False) -> ClsDataset:
    if is_local(ref):
        folder = Path(ref)
        if not folder.is_dir():
            raise DataError(folder, None, "a classification dataset must be a folder holding train/test.jsonl")
        files = _local_splits(folder, ("train", "test"))
        splits = {s: read_cls_split(f) for s, f in files.items()}
        fp = _fingerprint_files([files[s] for s in sorted(files)])
    else:
        splits, fp = _hub_cls(ref)
    train_labels = set(splits["train"].labels)
    if len(train_labels) < 2:
        raise DataError(splits["train"].source, None, f"the train split has {len(train_labels)} label(s); "
                                                      "classification needs at least 2")
    for s in ("dev", "test"):
        if s in splits:
            unseen = sorted(set(splits[s].labels) - train_labels)
            if unseen and not allow_unseen_labels:
                raise DataError(splits[s].source, None,
                                f"label(s) {unseen[:10]} occur in {s} but never in train: no classifier can "
                                "predict them. Fix the data, or pass --allow-unseen-labels to score them as errors")
    return ClsDataset(dataset_name(ref), splits, fp, sorted(train_labels))


def _hub_cls(ref: str):  # pragma: no cover - needs the network
    ds = _hub_load(ref)
    splits = {}
    for hub_split, ours in _HUB_SPLITS.items():
        if hub_split not in ds:
            continue
        d = ds[hub_split]
        if "text" not in d.column_names or "label" not in d.column_names:
            raise DataError(ref, None, f"hub split {hub_split} needs text and label columns ({d.column_names})")
        names = getattr(d.features["label"], "names", None)
        labels = [names[x] if names else str(x) for x in d["label"]]
        splits[ours] = ClsSplit(list(d["text"]), labels, f"{ref}[{hub_split}]")
    return _hub_result(ref, ds, splits)
