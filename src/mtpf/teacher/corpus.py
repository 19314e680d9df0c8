"""Reading an unlabelled corpus as sentences of words.

Inputs: one-sentence-a-line ``.txt``/``.txt.gz``; JSONL (``.jsonl``/``.jsonl.gz``) whose records hold
``tokens`` (kept exactly as given) or ``text`` (split by :func:`split_words`); Parquet (``.parquet``) and Arrow
(``.arrow``, e.g. a ``datasets`` cache/``save_to_disk`` file) tables with one of those columns; folders of those
(sorted, recursive); or, for online users, a hub dataset ``[hub:]NAME[:SUBSET][@SPLIT]`` such as
``numind/NuNER@full``.

Parquet, Arrow and hub sources are read through ``datasets`` in record batches (Parquet streamed batch by
batch, Arrow memory-mapped, hub sources streamed), never whole into Python objects. Text and JSONL keep a
plain line reader: it streams just as well and, unlike the ``datasets`` text builder, names the line of a
bad byte or a malformed record.

Word-split rule for plain text (:data:`WORD_RE`), applied left to right, first match wins:

1. ``\\d+(?:[.,]\\d+)+`` -- numbers with inner separators stay one word (``3.5``, ``1,000``);
2. a run of letters/digits/underscore and combining marks (with soft hyphens and zero-width joiners inside),
   with inner hyphens or apostrophes (``New``, ``long-term``, ``don't``, a decomposed ``José``, ``मनुष्य``);
3. any other visible non-space character is a word on its own (punctuation, symbols, emoji); invisible format
   and control characters (a byte-order mark, zero-width space) are no words.

Whitespace only separates. The rule is deterministic and close to CoNLL-style tokenisation, except that
abbreviations lose their final dot (``Inc.`` -> ``Inc``, ``.``).
"""
from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import regex

from mtpf.data.io import DataError
from mtpf.runtime.app import WORD_RE as APP_WORD_RE

# the runtime's word characters (re's \w plus combining marks and in-word joiners) after the number rule
WORD_RE = regex.compile(rf"\d+(?:[.,]\d+)+|{APP_WORD_RE.pattern}")
SPLIT_RULE = WORD_RE.pattern  # recorded in label_config.json / clusters.json (a changed rule needs --overwrite)
CORPUS_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet", ".arrow")
HUB_TEXT_FIELDS = ("tokens", "text", "sentence", "input")
TABLE_BATCH = 1024  # rows per record batch read from Parquet/Arrow/hub tables


def split_words(text: str) -> list[str]:
    """Plain text -> words by :data:`WORD_RE` (see the module docstring)."""
    return WORD_RE.findall(text)


@dataclass
class Sentence:
    source: str
    line: int
    words: list[str]


@dataclass
class CorpusStats:
    sentences: int = 0
    words: int = 0
    empty_lines: int = 0
    per_source: dict = field(default_factory=dict)


def corpus_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Local files (folders expanded, sorted) and hub dataset names, in the order given."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.name.endswith(CORPUS_SUFFIXES)
                           and ".mtpf_cache" not in f.relative_to(path).parts)  # mtpf's token caches: not text
            if not found:
                raise DataError(path, None, f"folder holds no {'/'.join(CORPUS_SUFFIXES)} files")
            out.extend(found)
        elif path.is_file():
            if not path.name.endswith(CORPUS_SUFFIXES):
                raise DataError(path, None, f"unsupported corpus file (expected {'/'.join(CORPUS_SUFFIXES)})")
            out.append(str(path))
        elif _looks_like_hub_name(str(p)):
            out.append(str(p) if str(p).startswith("hub:") else f"hub:{p}")
        else:
            raise DataError(path, None, "no such file or folder")
    return out


def _looks_like_hub_name(ref: str) -> bool:
    return bool(re.fullmatch(r"(hub:)?[\w.-]+/[\w.-]+(:[\w.-]+)?(@\S+)?", ref)) and not ref.startswith((".", "/"))


def parse_hub_spec(ref: str) -> tuple[str, str | None, str | None]:
    """``[hub:]NAME[:SUBSET][@SPLIT]`` -> ``(NAME, SUBSET or None, SPLIT or None)``.

    SPLIT may be any ``datasets`` split expression (``full``, ``full[:10%]``).
    """
    ref = ref.removeprefix("hub:")
    ref, _, split = ref.partition("@")
    name, _, subset = ref.partition(":")
    return name, subset or None, split or None


def resolve_hub_split(ref: str) -> str:
    """The split to read for a hub spec: the one named, else the only one the dataset has.

    A dataset with several splits and none named is refused with one line listing them (e.g. numind/NuNER has
    ``entity`` and ``full``, no ``train``).
    """
    name, subset, split = parse_hub_spec(ref)
    if split:
        return split
    from datasets import get_dataset_split_names

    try:
        splits = list(get_dataset_split_names(name, subset))
    except Exception as exc:  # offline, unknown name, unknown subset
        raise DataError(f"hub:{name}", None, f"no such local path, and cannot list the splits of this hub "
                        f"dataset ({_short(exc)}); name one as {name}{':' + subset if subset else ''}@SPLIT") from None
    if len(splits) == 1:
        return splits[0]
    raise DataError(f"hub:{name}", None, f"no split named and the dataset has {len(splits)}: {', '.join(splits)}; "
                    f"name one as {name}{':' + subset if subset else ''}@SPLIT")


def _short(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def iter_sentences(sources: list[str], stats: CorpusStats | None = None) -> Iterator[Sentence]:
    """Every non-empty sentence of ``sources`` (from :func:`corpus_files`) in a fixed order.

    Empty lines (and records with no words) are skipped and counted in ``stats.empty_lines``; an undecodable
    or malformed line raises :class:`DataError` naming its file and line.
    """
    stats = stats if stats is not None else CorpusStats()
    for src in sources:
        if src.startswith("hub:"):
            it = _iter_hub(src)
        elif src.endswith((".parquet", ".arrow")):
            it = _iter_table(src)
        elif src.endswith((".jsonl", ".jsonl.gz")):
            it = _iter_jsonl(src)
        else:
            it = _iter_txt(src)
        for lineno, words in it:
            if not words:
                stats.empty_lines += 1
                continue
            stats.sentences += 1
            stats.words += len(words)
            yield Sentence(src, lineno, words)


def _iter_lines(path: str) -> Iterator[tuple[int, str]]:
    # Bytes, decoded per line, so a bad byte is reported with its line instead of a bare UnicodeDecodeError.
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(path, lineno, f"not valid UTF-8 (byte {exc.start})") from None
    except (OSError, EOFError) as exc:  # truncated/corrupt gzip
        raise DataError(path, None, f"cannot read: {exc}") from None


def _iter_txt(path: str) -> Iterator[tuple[int, list[str]]]:
    for lineno, line in _iter_lines(path):
        yield lineno, split_words(line)


def _iter_jsonl(path: str) -> Iterator[tuple[int, list[str]]]:
    for lineno, line in _iter_lines(path):
        if not line.strip():
            yield lineno, []
            continue
        try:
            obj = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise DataError(path, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        yield lineno, words_of_record(obj, path, lineno)


def words_of_record(obj, path: str, lineno: int) -> list[str]:
    if not isinstance(obj, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    if "tokens" in obj:
        toks = obj["tokens"]
        if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
            raise DataError(path, lineno, "'tokens' must be a list of strings")
        # A token with no visible character gives the teacher nothing to embed and the student no piece
        # to carry its label.
        for i, t in enumerate(toks):
            if not t.strip():
                raise DataError(path, lineno, f"token {i} is empty or whitespace")
        return list(toks)
    for key in ("text", "sentence", "input"):
        if key in obj:
            if not isinstance(obj[key], str):
                raise DataError(path, lineno, f"'{key}' must be a string")
            return split_words(obj[key])
    raise DataError(path, lineno, "record has neither 'tokens' (list of words) nor 'text' (string)")


def _iter_rows(ds, src: str) -> Iterator[tuple[int, list[str]]]:
    """Rows of a ``datasets`` table, a record batch at a time; the first of ``HUB_TEXT_FIELDS`` it has is read."""
    columns = list(ds.column_names or next(iter(ds.take(1)), {}).keys())
    present = [k for k in HUB_TEXT_FIELDS if k in columns]
    if not present:
        raise DataError(src, None, f"has none of the columns {HUB_TEXT_FIELDS} (columns: {', '.join(columns)})")
    key = present[0]
    row = 0
    from mtpf.data import mapped_pages

    files = mapped_pages.dataset_files(ds)  # a memory-mapped .arrow corpus: unmap what each batch read
    for batch in ds.select_columns([key]).iter(batch_size=TABLE_BATCH):
        mapped_pages.release_files(files)
        for value in batch[key]:
            row += 1
            if isinstance(value, list):
                yield row, words_of_record({"tokens": value}, src, row)
            elif isinstance(value, str) or value is None:
                yield row, split_words(value or "")
            else:
                raise DataError(src, row, f"column '{key}' must hold text or a list of words, got {type(value).__name__}")


def _iter_table(path: str) -> Iterator[tuple[int, list[str]]]:
    import datasets

    try:
        if path.endswith(".arrow"):
            ds = datasets.Dataset.from_file(path)  # memory-mapped, no copy
        else:  # streamed record batches: no Arrow cache copy of the whole file
            ds = datasets.load_dataset("parquet", data_files=[path], split="train", streaming=True)
    except Exception as exc:
        raise DataError(path, None, f"cannot read as a {'Arrow' if path.endswith('.arrow') else 'Parquet'} "
                        f"table: {_short(exc)}") from None
    yield from _iter_rows(ds, path)


def _iter_hub(src: str) -> Iterator[tuple[int, list[str]]]:
    from datasets import load_dataset

    name, subset, _ = parse_hub_spec(src)
    split = resolve_hub_split(src)
    try:  # streamed: the corpus is read twice (fit sample, then labels) and never stored whole
        ds = load_dataset(name, subset, split=split, streaming=True)
    except Exception as exc:  # offline, unknown name/subset/split
        raise DataError(src, None, f"cannot load this hub dataset: {_short(exc)}") from None
    yield from _iter_rows(ds, src)
