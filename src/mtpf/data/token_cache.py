"""Tokenise each source once into an Arrow cache keyed by the tokenizer's fingerprint, reused by every run.

Cache folder: ``.mtpf_cache/tok-<source>-<data key>-<tokenizer fingerprint>-L<max_length>/`` beside a local
file (when that folder is writable), else under ``HF_DATASETS_CACHE``. Written by ``Dataset.map`` (batched,
``num_proc`` workers) then ``save_to_disk`` into a temporary folder renamed when complete, read back with
``load_from_disk`` (memory-mapped). Training then only gathers int ids.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from mtpf.data.io import DataError

PAIR_COLUMNS = ("a_ids", "p_ids")


def _fingerprint(key: str) -> str:
    """``datasets`` refuses fingerprints over 64 characters (a source named paraphrase_msrp_sts_pairs made the
    key 65): the key itself when it fits, else its first 31 characters and a hash of the whole."""
    return key if len(key) <= 64 else f"{key[:31]}-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the ids: the fast tokenizer's full JSON (vocab, normaliser, pre-tokeniser,
    post-processor) or, for slow tokenizers, the vocabulary and class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # call-time settings, changed by every tokenizer(..., truncation=True)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, getattr(tokenizer, "add_prefix_space", None)])
    return hashlib.sha256((text + extra).encode()).hexdigest()[:16]


def _data_key(files: list[str], label: str, ds) -> str:
    """Local files: path, size and mtime (a changed file invalidates); hub: name, split and Arrow files."""
    h = hashlib.sha256(label.encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}".encode())
    if not files:
        h.update(json.dumps([c.get("filename") for c in getattr(ds, "cache_files", [])] + [len(ds)]).encode())
    return h.hexdigest()[:12]


def cache_root(files: list[str]) -> Path:
    if files:
        folder = Path(files[0]).resolve().parent
        if os.access(folder, os.W_OK):
            return folder / ".mtpf_cache"
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "mtpf_tokens"


def cached_map(ds, fn, *, kind: str, name: str, files: list[str], label: str, tokenizer, max_length: int,
               features, num_proc: int | None = None):
    """``ds.map(fn, batched=True)`` once per (data, tokenizer, max_length); later calls load the cache.

    ``map`` writes its Arrow file(s) straight into a temporary folder that is renamed when complete, with a
    ``files.json`` listing them; no second copy (``save_to_disk`` would re-read every row, and the pages it
    touches count in the run's RSS)."""
    from datasets import Dataset, concatenate_datasets

    key = f"{kind}-{name}-{_data_key(files, label, ds)}-{tokenizer_fingerprint(tokenizer)}-L{max_length}"
    folder = cache_root(files) / key
    if folder.exists():
        try:
            names = json.loads((folder / "files.json").read_text())
            parts = [Dataset.from_file(str(folder / f)) for f in names]
            out = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
            if set(out.column_names) != set(features):
                raise ValueError(f"columns {out.column_names}")
            return out
        except Exception as exc:  # noqa: BLE001 - any unreadable cache: one line, what to delete
            raise DataError(label, None, f"tokenisation cache {folder} is unreadable "
                            f"({type(exc).__name__}); delete that folder and rerun") from None
    if num_proc is None and len(ds) > 200_000:
        num_proc = min(8, os.cpu_count() or 1)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    from mtpf.data import mapped_pages

    source_files = mapped_pages.dataset_files(ds)

    def fn_bounded(batch, idx):
        out = fn(batch, idx)
        mapped_pages.release_files(source_files)  # RSS bounded by the map batch, not the source's size
        return out

    try:
        # Few, large record batches (map writes one per call of fn): opening an Arrow stream file walks every
        # batch header, and each page fault maps ~64 KB around it into RSS (1000-row batches: 40% of the file).
        mapped = ds.map(fn_bounded, batched=True, batch_size=20_000, writer_batch_size=20_000, with_indices=True,
                        remove_columns=ds.column_names,
                        features=features, num_proc=num_proc if num_proc and num_proc > 1 else None,
                        cache_file_name=str(tmp / "data.arrow"), new_fingerprint=_fingerprint(key),
                        desc=f"tokenising {name}")
    except UnicodeDecodeError:
        # Arrow's JSON reader keeps invalid UTF-8; it only fails here, without a line: rescan to name it.
        from mtpf.data.io import iter_jsonl

        for f in files:
            if str(f).endswith((".jsonl", ".jsonl.gz")):
                for _ in iter_jsonl(f):
                    pass
        raise DataError(label, None, "input is not UTF-8 text; re-save it as UTF-8") from None
    else:
        names = sorted(Path(c["filename"]).name for c in mapped.cache_files)
        del mapped
        (tmp / "files.json").write_text(json.dumps(names))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "files.json").is_file():
                raise
            # another process (a concurrent run on the same data) completed this cache first: read theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached_map(ds, fn, kind=kind, name=name, files=files, label=label, tokenizer=tokenizer,
                      max_length=max_length, features=features)


def tokenize_pairs(source, tokenizer, max_length: int, num_proc: int | None = None):
    """Pair source -> Dataset ``{a_ids, p_ids}`` (int32 lists, truncated to ``max_length``); pairs with an
    empty text are dropped."""
    from datasets import Features, Sequence, Value

    def fn(batch, _idx):
        keep = [i for i, (a, p) in enumerate(zip(batch["anchor"], batch["positive"]))
                if isinstance(a, str) and isinstance(p, str) and a.strip() and p.strip()]
        if not keep:
            return {"a_ids": [], "p_ids": []}
        a = tokenizer([batch["anchor"][i] for i in keep], truncation=True, max_length=max_length)["input_ids"]
        p = tokenizer([batch["positive"][i] for i in keep], truncation=True, max_length=max_length)["input_ids"]
        return {"a_ids": a, "p_ids": p}

    feats = Features({c: Sequence(Value("int32")) for c in PAIR_COLUMNS})
    # what picks the rows and columns besides the files: another `columns:` mapping or hub split of the same
    # data is another cache entry (unchanged keys for the default columns of a local file)
    spec, label = source.spec, source.spec.label
    if spec.columns:
        label += f"|columns={','.join(spec.columns)}"
    if spec.hub:
        label += f"|split={spec.split}"
    out = cached_map(source.data, fn, kind="pairs", name=source.name, files=source.files, label=label,
                     tokenizer=tokenizer, max_length=max_length, features=feats, num_proc=num_proc)
    if out.num_rows == 0:
        raise DataError(source.spec.label, None, "pair source is empty (no anchor/positive pairs with text)")
    return out
