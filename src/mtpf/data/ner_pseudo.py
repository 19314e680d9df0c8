"""Word-level pseudo-labels for NER pre-finetuning: JSONL ``{"tokens": [...], "labels": [int, ...]}``.

The teacher-labelling step (``mtpf label``) writes these shards; the engine reads them here and puts each
word's label on its first sub-token only (other sub-tokens and special tokens get -100), as the HF
token-classification examples do.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mtpf.data.io import DataError, expand_paths, iter_jsonl, require_str_list

IGNORE = -100


@dataclass
class LabelledSentences:
    tokens: list[list[str]]
    labels: list[list[int]]
    num_labels: int
    sources: list[str]


def label_files(paths) -> list[Path]:
    """The shard files of ``paths``. A folder written by ``mtpf label`` (it holds ``label_config.json``) counts
    only once finished, i.e. once its ``clusters.json`` is written, and then gives exactly the shards that file
    lists: an interrupted labelling is refused instead of pre-finetuning on part of the corpus (with K guessed
    from the labels seen). Other files and folders are read as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not (p.is_dir() and (p / "label_config.json").is_file()):
            out += expand_paths([p], (".jsonl", ".jsonl.gz"))
            continue
        meta = p / "clusters.json"
        if not meta.is_file():
            raise DataError(p, None, "unfinished `mtpf label` output (no clusters.json yet): re-run the same "
                            "`mtpf label` command to finish it (it resumes)")
        try:
            shards = json.loads(meta.read_text())["shards"]
        except (KeyError, ValueError) as exc:
            raise DataError(meta, None, f"cannot read the list of 'shards': {exc}") from None
        missing = [name for name in shards if not (p / name).is_file()]
        if missing:
            raise DataError(p / missing[0], None, "listed in clusters.json but missing: re-run `mtpf label` "
                            "with --overwrite")
        out += [p / name for name in shards]
    return out


def load_pseudo_labels(paths, num_labels: int | None = None) -> LabelledSentences:
    """The whole folder as Python lists of words and cluster ids, checked line by line: for looking at a small
    folder and for tests. It holds every sentence in memory (~80 bytes per word: ~2 GB at NuNER's 24.4M words);
    training reads through :func:`load_pseudo_label_dataset` (memory-mapped Arrow, tokenised once)."""
    files = label_files(paths)
    tokens, labels = [], []
    max_label = -1
    for f in files:
        for lineno, obj in iter_jsonl(f):
            toks = require_str_list(f, lineno, obj, "tokens")
            labs = obj.get("labels")
            if not isinstance(labs, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in labs):
                raise DataError(f, lineno, "'labels' must be a list of integer cluster ids")
            if len(toks) != len(labs):
                raise DataError(f, lineno, f"{len(toks)} tokens but {len(labs)} labels (need one label per word)")
            if any(x < 0 for x in labs):
                raise DataError(f, lineno, "labels must be >= 0")
            if not toks:
                continue
            max_label = max(max_label, max(labs))
            tokens.append(toks)
            labels.append(labs)
    if not tokens:
        raise DataError(files[0] if files else Path("."), None, "no labelled sentences found")
    declared = num_labels if num_labels is not None else _declared_clusters(files)
    if declared is not None and max_label >= declared:
        raise DataError(files[0], None, f"label id {max_label} found but only {declared} clusters declared")
    return LabelledSentences(tokens, labels, declared or max_label + 1, [str(f) for f in files])


def _declared_clusters(files: list[Path]) -> int | None:
    for folder in {f.parent for f in files}:
        meta = folder / "clusters.json"
        if meta.is_file():
            try:
                return int(json.loads(meta.read_text())["K"])
            except (KeyError, ValueError, json.JSONDecodeError) as exc:
                raise DataError(meta, None, f"cannot read the number of clusters 'K': {exc}") from None
    return None


def align_first_subtoken(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label of each sub-token: the word's label on its first piece, -100 elsewhere."""
    out, previous = [], None
    for wid in word_ids:
        if wid is None or wid == previous:
            out.append(IGNORE)
        else:
            out.append(word_labels[wid])
        previous = wid
    return out


def tokenize_labelled(tokenizer, sentences: LabelledSentences, max_length: int):
    """Pre-tokenise once (fast tokenizer, batched); returns parallel lists of ids and aligned labels.

    Sentences longer than ``max_length`` are split into consecutive windows of whole words so that no word
    loses its label to truncation.
    """
    ids_out, labels_out = [], []
    step = 2048
    for start in range(0, len(sentences.tokens), step):
        chunk_tokens = sentences.tokens[start : start + step]
        chunk_labels = sentences.labels[start : start + step]
        enc = tokenizer(chunk_tokens, is_split_into_words=True, truncation=False, add_special_tokens=True)
        for i in range(len(chunk_tokens)):
            ids = enc["input_ids"][i]
            if len(ids) <= max_length:
                ids_out.append(ids)
                labels_out.append(align_first_subtoken(enc.word_ids(i), chunk_labels[i]))
            else:
                for w_ids, w_labels in _windows(tokenizer, chunk_tokens[i], chunk_labels[i], max_length):
                    ids_out.append(w_ids)
                    labels_out.append(w_labels)
    return ids_out, labels_out


def _windows(tokenizer, words, labels, max_length):
    enc = tokenizer(words, add_special_tokens=False, is_split_into_words=True)
    pieces = [0] * len(words)
    for wid in enc.word_ids():
        if wid is not None:
            pieces[wid] += 1
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    cur_words, cur_len = [], 0
    for i, n_pieces in enumerate(pieces):
        p_len = min(n_pieces, budget)
        if cur_words and cur_len + p_len > budget:
            yield _encode_window(tokenizer, words, labels, cur_words, max_length)
            cur_words, cur_len = [], 0
        cur_words.append(i)
        cur_len += p_len
    if cur_words:
        yield _encode_window(tokenizer, words, labels, cur_words, max_length)


def _encode_window(tokenizer, words, labels, idx, max_length):
    enc = tokenizer([words[i] for i in idx], is_split_into_words=True, truncation=True, max_length=max_length)
    return enc["input_ids"], align_first_subtoken(enc.word_ids(), [labels[i] for i in idx])


# ----------------------------------------------------------------------------------- datasets-backed reader
@dataclass
class PseudoLabelData:
    """Tokenised pseudo-labels, memory-mapped: columns ``input_ids``, ``labels`` (aligned, -100 elsewhere),
    ``length``; one row per window of ``max_length`` tokens."""

    data: object  # datasets.Dataset
    num_labels: int
    sources: list[str]


def load_pseudo_label_dataset(paths, tokenizer, max_length: int, num_labels: int | None = None,
                              num_proc: int | None = None) -> PseudoLabelData:
    """Every shard through ``datasets`` (``load_dataset("json")``, Arrow cache beside the data), tokenised
    once and cached (``mtpf.data.token_cache``); never held as Python lists."""
    import pyarrow.compute as pc
    from datasets import Features, Sequence, Value, concatenate_datasets, load_dataset

    from mtpf.data.pairs import _one_line, _raise_jsonl_problem, local_cache_dir
    from mtpf.data.token_cache import cached_map

    files = label_files(paths)
    feats = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")),
                      "length": Value("int32"), "max_label": Value("int32")})
    parts = []
    for f in files:
        try:
            raw = load_dataset("json", data_files=str(f), split="train", cache_dir=local_cache_dir(f),
                               chunksize=64 << 20, writer_batch_size=20_000)  # large Arrow record batches
        except Exception as exc:  # noqa: BLE001 - one line naming the file (and the line, for bad JSON)
            if _raise_jsonl_problem(f) == 0:
                continue  # an empty shard
            raise DataError(f, None, f"cannot read as JSONL: {_one_line(exc)}") from None
        if raw.num_rows == 0:
            continue
        missing = [c for c in ("tokens", "labels") if c not in raw.column_names]
        if missing:
            raise DataError(f, None, f"no '{missing[0]}' field; pseudo-label rows are {{\"tokens\": [...], "
                            '"labels": [...]} as written by `mtpf label`')
        parts.append(cached_map(raw, _ner_map_fn(f, tokenizer, max_length), kind="ner", name=f.name.split(".")[0],
                                files=[str(f)], label=str(f), tokenizer=tokenizer, max_length=max_length,
                                features=feats, num_proc=num_proc))
    parts = [p for p in parts if p.num_rows]
    if not parts:
        raise DataError(files[0] if files else Path("."), None, "no labelled sentences found")
    data = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    max_label = int(pc.max(data.data.column("max_label")).as_py())
    if max_label < 0:
        raise DataError(files[0], None, f"no word keeps a label within max_length {max_length} tokens; raise "
                        "max_length")
    declared = num_labels if num_labels is not None else _declared_clusters(files)
    if declared is not None and max_label >= declared:
        raise DataError(files[0], None, f"label id {max_label} found but only {declared} clusters declared")
    return PseudoLabelData(data, declared or max_label + 1, [str(f) for f in files])


def _ner_map_fn(path, tokenizer, max_length):
    def fn(batch, indices):
        tokens, labels = [], []
        for row, toks, labs in zip(indices, batch["tokens"], batch["labels"]):
            problem = _row_problem(toks, labs)
            if problem:
                # Arrow types a column from all its rows (one 2.5 makes every label a float): the file as written
                # says which line is wrong; error path only
                first = next(((n, q) for n, obj in iter_jsonl(path)
                              if (q := _row_problem(obj.get("tokens"), obj.get("labels")))), None)
                raise DataError(path, *(first or (_line_of_record(path, row), problem)))
            if toks:
                tokens.append(toks)
                labels.append(labs)
        if not tokens:
            return {"input_ids": [], "labels": [], "length": [], "max_label": []}
        ids, labs = tokenize_labelled(tokenizer, LabelledSentences(tokens, labels, 0, []), max_length)
        return {"input_ids": ids, "labels": labs, "length": [len(x) for x in ids],
                "max_label": [max(x) for x in labs]}

    return fn


def _row_problem(toks, labs) -> str | None:
    if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
        return "'tokens' must be a list of strings"
    if not isinstance(labs, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in labs):
        return "'labels' must be a list of integer cluster ids"
    if len(toks) != len(labs):
        return f"{len(toks)} tokens but {len(labs)} labels (need one label per word)"
    if any(x < 0 for x in labs):
        return "labels must be >= 0"
    return None


def _line_of_record(path, row: int) -> int | None:
    """Line number of the ``row``-th JSON record (blank lines skipped); error path only."""
    for k, (lineno, _) in enumerate(iter_jsonl(path)):
        if k == row:
            return lineno
    return None
