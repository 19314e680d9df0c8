"""Reading an unlabelled corpus as sentences of words.

Inputs: one-sentence-a-line ``.txt``/``.txt.gz``; JSONL (``.jsonl``/``.jsonl.gz``) whose records hold
``tokens`` (kept exactly as given) or ``text`` (split by :func:`split_words`); folders of those (sorted, recursive);
or, for online users, a hub dataset name such as ``numind/NuNER``.

Word-split rule for plain text (:data:`WORD_RE`), applied left to right, first match wins:

1. ``\\d+(?:[.,]\\d+)+`` -- numbers with inner separators stay one word (``3.5``, ``1,000``);
2. ``\\w+(?:[-'\u2019]\\w+)*`` -- a run of letters/digits/underscore, with inner hyphens or apostrophes
   (``New``, ``long-term``, ``don't``);
3. ``[^\\w\\s]`` -- any other non-space character is a word on its own (punctuation, symbols, emoji).

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

from mtpf.data.io import DataError

WORD_RE = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:[-'\u2019]\w+)*|[^\w\s]")
SPLIT_RULE = r"\d+(?:[.,]\d+)+|\w+(?:[-'’]\w+)*|[^\w\s]"
CORPUS_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
HUB_TEXT_FIELDS = ("tokens", "text", "sentence", "input")


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
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.name.endswith(CORPUS_SUFFIXES))
            if not found:
                raise DataError(path, None, f"folder holds no {'/'.join(CORPUS_SUFFIXES)} files")
            out.extend(found)
        elif path.is_file():
            if not path.name.endswith(CORPUS_SUFFIXES):
                raise DataError(path, None, f"unsupported corpus file (expected {'/'.join(CORPUS_SUFFIXES)})")
            out.append(str(path))
        elif _looks_like_hub_name(str(p)):
            out.append(f"hub:{p}")
        else:
            raise DataError(path, None, "no such file or folder")
    return out


def _looks_like_hub_name(ref: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", ref)) and not ref.startswith((".", "/"))


def iter_sentences(sources: list[str], stats: CorpusStats | None = None) -> Iterator[Sentence]:
    """Every non-empty sentence of ``sources`` (from :func:`corpus_files`) in a fixed order.

    Empty lines (and records with no words) are skipped and counted in ``stats.empty_lines``; an undecodable
    or malformed line raises :class:`DataError` naming its file and line.
    """
    stats = stats if stats is not None else CorpusStats()
    for src in sources:
        if src.startswith("hub:"):
            it = _iter_hub(src[4:])
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


def _iter_hub(name: str) -> Iterator[tuple[int, list[str]]]:  # pragma: no cover - needs the network
    from datasets import load_dataset

    name, _, split = name.partition(":")
    try:
        ds = load_dataset(name, split=split or "train", streaming=True)
    except Exception as exc:  # offline, unknown name, or a mistyped local path that looked like a hub name
        raise DataError(f"hub:{name}", None, f"cannot load as a local path or hub dataset: {exc}") from None
    for i, row in enumerate(ds, 1):
        present = [k for k in HUB_TEXT_FIELDS if k in row]
        if not present:
            raise DataError(f"hub:{name}", i, f"row has none of the fields {HUB_TEXT_FIELDS}")
        key = present[0]
        yield i, words_of_record({"tokens" if key == "tokens" else "text": row[key]}, f"hub:{name}", i)
