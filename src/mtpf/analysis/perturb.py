"""Entity-perturbed sentences (paper Section 5, Finding 1; Figure 5).

Every entity of the split is collected per type; a variant of a sentence replaces *every* entity span with a
randomly drawn entity of the same type (a different surface form whenever the pool has one). ``O`` words are
never touched, so a variant's length in words is the original length minus the replaced spans plus the new
ones. Draws are seeded per (seed, sentence, variant): the same seed gives the same variants, whatever subset
of sentences is asked for.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from mtpf.data.io import DataError, iter_jsonl, require_str_list

Span = tuple[int, int, str]  # [start, end) in words, entity type

_CONTINUE = {"I", "E", "L"}
_SINGLE = {"S", "U"}


def entity_spans(
    tags: list[str], path: str | os.PathLike = "<tags>", lineno: int | None = None
) -> list[Span]:
    """Entity spans of one sentence; reads IOB2, IOB1 and BIOES/BILOU alike.

    ``B-X`` opens a span; ``I-X`` continues an open ``X`` span or opens one (IOB1, or a stray ``I`` in IOB2);
    ``E-X``/``L-X`` closes one; ``S-X``/``U-X`` is a one-word span. Any other tag raises ``DataError``.
    """
    spans: list[Span] = []
    start, typ = None, None

    def close(end: int) -> None:
        nonlocal start, typ
        if start is not None:
            spans.append((start, end, typ))
        start, typ = None, None

    for i, tag in enumerate(tags):
        if tag == "O":
            close(i)
            continue
        prefix, sep, kind = tag.partition("-")
        if not sep or not kind or prefix not in {"B", "I", "E", "L", "S", "U"}:
            raise DataError(
                path,
                lineno,
                f"unknown tag {tag!r}: expected O, B-TYPE, I-TYPE (IOB2/IOB1) "
                "or E-/S-/L-/U-TYPE (BIOES/BILOU)",
            )
        if prefix == "B" or prefix in _SINGLE or (prefix in _CONTINUE and (start is None or typ != kind)):
            close(i)
            start, typ = i, kind
        if prefix in _SINGLE or prefix in ("E", "L"):
            close(i + 1)
    close(len(tags))
    return spans


@dataclass
class NerSentences:
    """The sentences of one NER split with their entity spans."""

    tokens: list[list[str]]
    spans: list[list[Span]]
    path: str

    def __len__(self) -> int:
        return len(self.tokens)


def ner_split_path(ref: str | os.PathLike, split: str = "test") -> Path:
    """A JSONL file as given, or ``split``.jsonl[.gz] inside a dataset folder."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.is_dir():
        for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
            if (p / name).is_file():
                return p / name
        raise DataError(p, None, f"no {split}.jsonl[.gz] in this NER dataset folder")
    raise DataError(p, None, "no such NER dataset folder or file")


def read_ner_sentences(ref: str | os.PathLike, split: str = "test") -> NerSentences:
    """Read ``{"tokens", "tags"}`` lines; tag problems are reported with file and line."""
    path = ner_split_path(ref, split)
    tokens, spans = [], []
    for lineno, obj in iter_jsonl(path):
        toks = require_str_list(path, lineno, obj, "tokens")
        tags = require_str_list(path, lineno, obj, "tags")
        if len(toks) != len(tags):
            raise DataError(path, lineno, f"{len(toks)} tokens but {len(tags)} tags (need one tag per token)")
        if not toks:
            continue
        spans.append(entity_spans(tags, path, lineno))
        tokens.append(toks)
    if not tokens:
        raise DataError(path, None, "no sentences in this file")
    return NerSentences(tokens, spans, str(path))


def entity_pool(data: NerSentences) -> dict[str, list[tuple[str, ...]]]:
    """Distinct surface forms per entity type, in order of first occurrence (deterministic)."""
    pool: dict[str, dict[tuple[str, ...], None]] = {}
    for toks, spans in zip(data.tokens, data.spans):
        for s, e, typ in spans:
            pool.setdefault(typ, {})[tuple(toks[s:e])] = None
    return {typ: list(forms) for typ, forms in pool.items()}


@dataclass
class Perturbation:
    tokens: list[str]
    tags: list[str]  # IOB2 tags of the variant
    replacements: list[tuple[Span, tuple[str, ...]]] = field(
        default_factory=list
    )  # (original span, new words)


def perturb_sentence(
    tokens: list[str], spans: list[Span], pool: dict[str, list[tuple[str, ...]]], rng: random.Random
) -> Perturbation:
    """Replace every entity span with a random same-type entity (another form when the pool allows)."""
    out_toks: list[str] = []
    out_tags: list[str] = []
    replacements = []
    pos = 0
    for s, e, typ in sorted(spans):
        out_toks.extend(tokens[pos:s])
        out_tags.extend(["O"] * (s - pos))
        old = tuple(tokens[s:e])
        forms = pool.get(typ) or [old]
        new = forms[rng.randrange(len(forms))]
        if new == old and len(forms) > 1:
            # Redraw among the other forms (forms are distinct): uniform over every form but ``old``.
            k = rng.randrange(len(forms) - 1)
            new = forms[k] if forms[k] != old else forms[-1]
        out_toks.extend(new)
        out_tags.extend([f"B-{typ}"] + [f"I-{typ}"] * (len(new) - 1))
        replacements.append(((s, e, typ), new))
        pos = e
    out_toks.extend(tokens[pos:])
    out_tags.extend(["O"] * (len(tokens) - pos))
    return Perturbation(out_toks, out_tags, replacements)


def sentence_rng(seed: int, sentence: int, variant: int) -> random.Random:
    """Independent, reproducible stream per (seed, sentence, variant) (str seeds hash with sha512)."""
    return random.Random(f"mtpf-perturb:{seed}:{sentence}:{variant}")


def make_variants(
    data: NerSentences,
    indices: list[int] | None = None,
    n_variants: int = 4,
    seed: int = 0,
    pool: dict[str, list[tuple[str, ...]]] | None = None,
) -> tuple[list[int], list[list[Perturbation]]]:
    """``n_variants`` perturbations of each sentence in ``indices`` (default all) that has an entity.

    Sentences without entities are skipped (nothing to replace); returns the kept indices and their variants.
    The pool defaults to every entity of ``data``.
    """
    pool = entity_pool(data) if pool is None else pool
    kept, variants = [], []
    for i in range(len(data)) if indices is None else indices:
        if not data.spans[i]:
            continue
        kept.append(i)
        variants.append(
            [
                perturb_sentence(data.tokens[i], data.spans[i], pool, sentence_rng(seed, i, v))
                for v in range(n_variants)
            ]
        )
    return kept, variants
