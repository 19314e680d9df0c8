"""Sentence-pair sources for contrastive pre-finetuning, read through ``datasets`` (Arrow, memory-mapped).

A source spec (``pairs:`` in the config) is either a string -- a local JSONL/Parquet/Arrow file, a folder
of such files (one source per file), a folder written by ``Dataset.save_to_disk`` (one source), or
``hub:NAME[:SUBSET]`` -- or a mapping::

    {hub: NAME, subset: SUBSET|null, split: train, columns: [anchor_col, positive_col], streaming: false, name: short}
    {path: LOCAL, columns: [...], name: short}

Nothing is copied into Python lists: a ``PairSource`` holds a ``datasets.Dataset`` whose Arrow files are
memory-mapped, so a source of any size costs little RSS. Hub paths need network access and are never
used by tests.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mtpf.data.io import DataError

ANCHOR_KEYS = ("anchor", "query", "sentence1", "text1")
POSITIVE_KEYS = ("positive", "pos", "sentence2", "text2")
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".arrow")
SPEC_KEYS = {"hub", "path", "subset", "split", "columns", "streaming", "name", "rows"}
HUB_TABLE = Path("configs/paper/hub_sources.yaml")  # optional: which hub sources need a subset


@dataclass(frozen=True)
class PairSourceSpec:
    path: str | None = None
    hub: str | None = None
    subset: str | None = None
    split: str = "train"
    columns: tuple[str, str] | None = None
    streaming: bool = False
    name: str | None = None
    rows: int | None = None  # size hint of a streaming source (for proportional weights)

    @property
    def label(self) -> str:
        """How messages name the source."""
        if self.hub:
            return f"hub:{self.hub}" + (f":{self.subset}" if self.subset else "")
        return str(self.path)


def parse_pair_spec(item) -> PairSourceSpec:
    """A ``pairs:`` entry (string or mapping) -> spec; ValueError (one line) when malformed."""
    if isinstance(item, (str, os.PathLike)):
        item = str(item)
        if item.startswith("hub:"):
            parts = item[len("hub:"):].split(":")
            if not parts[0] or len(parts) > 2:
                raise ValueError(f"pair source {item!r}: use hub:NAME or hub:NAME:SUBSET")
            return PairSourceSpec(hub=parts[0], subset=parts[1] if len(parts) > 1 and parts[1] else None)
        return PairSourceSpec(path=item)
    if not isinstance(item, dict):
        raise ValueError(f"pair source {item!r} must be a path, hub:NAME[:SUBSET] or a mapping")
    unknown = set(item) - SPEC_KEYS
    if unknown:
        raise ValueError(f"pair source {item!r}: unknown key {sorted(unknown)[0]!r} (known: {sorted(SPEC_KEYS)})")
    if bool(item.get("hub")) == bool(item.get("path")):
        raise ValueError(f"pair source {item!r} needs exactly one of 'hub' or 'path'")
    cols = item.get("columns")
    if cols is not None and (not isinstance(cols, (list, tuple)) or len(cols) != 2
                             or not all(isinstance(c, str) for c in cols)):
        raise ValueError(f"pair source {item!r}: columns must be [anchor_column, positive_column]")
    if item.get("rows") is not None and (not isinstance(item["rows"], int) or item["rows"] < 1):
        raise ValueError(f"pair source {item!r}: rows must be a positive integer")
    return PairSourceSpec(path=str(item["path"]) if item.get("path") else None, hub=item.get("hub"),
                          subset=item.get("subset"), split=str(item.get("split") or "train"),
                          columns=tuple(cols) if cols else None, streaming=bool(item.get("streaming", False)),
                          name=item.get("name"), rows=item.get("rows"))


@dataclass
class PairSource:
    """One source: ``data`` has the columns ``anchor`` and ``positive`` (strings), memory-mapped."""

    name: str
    data: object  # datasets.Dataset (IterableDataset for streaming hub sources)
    spec: PairSourceSpec
    files: list[str]  # local files behind it (fingerprinted in run.json); [] for hub sources

    def __len__(self) -> int:
        if not self.streaming:
            return self.data.num_rows
        if self.spec.rows:
            return self.spec.rows
        splits = getattr(self.data.info, "splits", None) or {}
        split = splits.get(self.spec.split) if hasattr(splits, "get") else None
        if split is None or not split.num_examples:
            raise DataError(self.spec.label, None, "streaming source of unknown size; give rows: N (approximate "
                            "row count) in its mapping, or explicit pair_weights")
        return split.num_examples

    @property
    def streaming(self) -> bool:
        return self.spec.streaming


def local_cache_dir(path: str | os.PathLike) -> str | None:
    """``.mtpf_cache/`` beside a local file when that folder is writable; else None (HF_DATASETS_CACHE)."""
    folder = Path(path).resolve().parent
    return str(folder / ".mtpf_cache") if os.access(folder, os.W_OK) else None


def _builder(path: Path) -> str:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    return "arrow"


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file()


def expand_specs(items: list) -> list[PairSourceSpec]:
    """Parse every entry; a folder of files becomes one spec per file."""
    out = []
    for item in items:
        spec = parse_pair_spec(item)
        if spec.path and Path(spec.path).is_dir() and not _is_saved_dataset(Path(spec.path)):
            files = sorted(f for f in Path(spec.path).rglob("*") if f.is_file() and f.name.endswith(LOCAL_SUFFIXES)
                           and ".mtpf_cache" not in f.parts)
            if not files:
                raise DataError(spec.path, None, f"folder holds no {'/'.join(LOCAL_SUFFIXES)} pair files")
            if spec.rows:
                raise DataError(spec.path, None, "rows: is the size of one streaming source, but a folder becomes "
                                "one source per file: list the files with a rows: each, or drop rows:")
            out += [PairSourceSpec(path=str(f), columns=spec.columns, split=spec.split, streaming=spec.streaming)
                    for f in files]
        else:
            out.append(spec)
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _load_local(spec: PairSourceSpec):
    from datasets import load_dataset, load_from_disk

    path = Path(spec.path)
    if not path.exists():
        raise DataError(path, None, "no such file or folder")
    try:
        if _is_saved_dataset(path):
            ds = load_from_disk(str(path))
            if hasattr(ds, "keys"):  # a DatasetDict
                ds = ds[spec.split]
        else:
            kind = _builder(path)
            if kind == "json":
                _check_json_streams(path)
            # json: 64 MB read chunks -> 2 MB Arrow record batches, few batch headers to fault in when reopened
            extra = {"chunksize": 64 << 20} if kind == "json" else {}
            extra["writer_batch_size"] = 20_000
            ds = load_dataset(kind, data_files=str(path), split="train", cache_dir=local_cache_dir(path),
                              streaming=spec.streaming, **extra)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one line naming the file
        if _builder(path) == "json" and _raise_jsonl_problem(path) == 0:
            raise DataError(path, None, "pair source is empty (no anchor/positive pairs)") from None
        raise DataError(path, None, f"cannot read as {_builder(path)}: {_one_line(exc)}") from None
    return ds


JSON_ARRAY_LIMIT = 256 << 20  # bytes: a .json file holding one top-level array is read whole, as datasets does


def _check_json_streams(path: Path) -> None:
    """Refuse, before ``datasets`` reads it, a JSON pair file that it would read whole into memory.

    datasets' json builder falls back to ``pandas.read_json`` on the WHOLE file when any chunk fails to parse
    (a truncated last line, the usual trace of an interrupted write) and reads a top-level JSON array whole by
    design, so a large file ends in an out-of-memory kill instead of a one-line error. It has no public option
    against that, hence this pass: pyarrow's incremental JSON reader (C++, memory bounded by its block size);
    on its first parse error our line-by-line scan names the bad line. A file that passed is remembered by size
    and mtime in ``.mtpf_cache/``, so the pass runs once per file version."""
    import codecs

    import pyarrow as pa
    import pyarrow.json as paj

    stat = path.stat()
    cache = local_cache_dir(path)
    marker = Path(cache) / f"{path.name}.{stat.st_size}.{stat.st_mtime_ns}.streams" if cache else None
    if marker is not None and marker.is_file():
        return
    try:
        with pa.input_stream(str(path), compression="detect") as f:
            head = f.read(1 << 12)
        if head.startswith(codecs.BOM_UTF8):
            head = head[len(codecs.BOM_UTF8):]
        if head.lstrip().startswith(b"["):
            if stat.st_size > JSON_ARRAY_LIMIT:
                raise DataError(path, 1, f"a top-level JSON array ({stat.st_size / 2**20:,.1f} MB) is read whole "
                                "into memory; write it as JSON Lines (one object per line, .jsonl)")
            return
        with pa.input_stream(str(path), compression="detect") as f:
            for _ in paj.open_json(f, read_options=paj.ReadOptions(block_size=16 << 20)):
                pass
    except DataError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError):
        # names the malformed line; returns when every line parses, e.g. a column whose type changes, which the
        # incremental reader refuses and datasets handles chunk by chunk
        _raise_jsonl_problem(path)
    if marker is not None:
        marker.parent.mkdir(exist_ok=True)
        marker.touch()


def _raise_jsonl_problem(path: Path) -> int:
    """The json builder names no line: on its failure only, rescan the file to name the bad line; returns
    the number of records when every line parses."""
    from mtpf.data.io import iter_jsonl

    return sum(1 for _ in iter_jsonl(path))


def _required_subsets(hub: str) -> list[str]:
    """Subsets listed for ``hub`` in configs/paper/hub_sources.yaml, when that table exists."""
    if not HUB_TABLE.is_file():
        return []
    import yaml

    table = yaml.safe_load(HUB_TABLE.read_text()) or {}
    entries = table.get("sources", table) if isinstance(table, dict) else table
    if isinstance(entries, dict):
        entries = [{"hub": k, **(v if isinstance(v, dict) else {"subsets": v})} for k, v in entries.items()]
    for e in entries or []:
        if isinstance(e, dict) and e.get("hub") == hub:
            subs = e.get("subsets") or ([e["subset"]] if e.get("subset") else [])
            return [str(s) for s in subs]
    return []


def _load_hub(spec: PairSourceSpec):  # pragma: no cover - needs network
    from datasets import load_dataset

    needed = _required_subsets(spec.hub)
    if needed and spec.subset is None:
        raise DataError(spec.label, None, f"this hub dataset has several subsets; name one ({', '.join(needed)}) "
                        f"as hub:{spec.hub}:SUBSET or subset: in the mapping form")
    try:
        # 20k-row record batches, as for local files: fewer batch headers to fault in when the cache is reopened
        extra = {} if spec.streaming else {"writer_batch_size": 20_000}
        return load_dataset(spec.hub, spec.subset, split=spec.split, streaming=spec.streaming, **extra)
    except Exception as exc:  # noqa: BLE001 - datasets' own message, on one line, naming the source
        raise DataError(spec.label, None, f"cannot load from the hub: {_one_line(exc)}") from None


def _columns(ds, spec: PairSourceSpec) -> tuple[str, str]:
    names = ds.column_names
    if names is None:  # a streaming source whose features are unknown until read: peek at the first row
        first = next(iter(ds), None)
        if first is None:
            raise DataError(spec.label, None, "pair source is empty (no anchor/positive pairs)")
        names = list(first)
    names = list(names)
    if spec.columns:
        missing = [c for c in spec.columns if c not in names]
        if missing:
            raise DataError(spec.label, None, f"has no column {missing[0]!r} (columns: {names}); "
                            "fix columns: [anchor_column, positive_column]")
        return spec.columns
    a = next((k for k in ANCHOR_KEYS if k in names), None)
    p = next((k for k in POSITIVE_KEYS if k in names), None)
    if a and p:
        return a, p
    if spec.hub:  # sentence-transformers pair sets: the first two string columns
        feats = ds.features or {}
        texts = [c for c in names if getattr(feats.get(c), "dtype", None) in ("string", "large_string")]
        if len(texts) >= 2:
            return texts[0], texts[1]
    raise DataError(spec.label, None, f"needs an anchor and a positive column (found {names}); name them with "
                    "{path: ..., columns: [anchor_column, positive_column]} or use anchor/positive")


def open_pair_source(spec: PairSourceSpec) -> PairSource:
    ds = _load_hub(spec) if spec.hub else _load_local(spec)
    a, p = _columns(ds, spec)
    ds = ds.select_columns([a, p])  # not remove_columns(names - {a, p}): a stream may not know its names
    if (a, p) != ("anchor", "positive"):
        ds = ds.rename_columns({a: "anchor", p: "positive"})
    if not spec.streaming and ds.num_rows == 0:
        raise DataError(spec.label, None, "pair source is empty (no anchor/positive pairs)")
    name = spec.name or (spec.hub.split("/")[-1] + (f"-{spec.subset}" if spec.subset else "") if spec.hub
                         else Path(spec.path).name.split(".")[0])
    return PairSource(name, ds, spec, [] if spec.hub else _files_of(Path(spec.path)))


def _files_of(path: Path) -> list[str]:
    if path.is_dir():
        return sorted(str(f) for f in path.glob("*.arrow"))
    return [str(path)]


def load_pair_sources(items: list) -> list[PairSource]:
    sources = [open_pair_source(s) for s in expand_specs(items)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(sources[0].spec.label, None, f"two pair sources share a name: {names}; "
                        "give one a name: in the mapping form")
    return sources


def source_fingerprint(source: PairSource) -> str:
    """sha256 of a source's pairs in order (identifies hub data, which has no local file to hash). Streams
    the Arrow table in record batches: bounded memory whatever the size."""
    import hashlib

    if source.streaming:
        return f"streaming:{source.spec.label}"
    h = hashlib.sha256()
    if len(source) > 1_000_000:  # hashing every text of a huge source would take hours: its Arrow files
        for f in source.data.cache_files:  # (named by the hub revision) and row count identify it instead
            h.update(f"{f.get('filename')}|{os.path.getsize(f['filename'])}".encode())
        h.update(str(len(source)).encode())
        return f"arrow-files:{h.hexdigest()}"
    from mtpf.data import mapped_pages

    for k, batch in enumerate(source.data.with_format("arrow").iter(batch_size=10_000)):
        for a, p in zip(batch.column("anchor").to_pylist(), batch.column("positive").to_pylist()):
            h.update((a or "").encode("utf-8") + b"\x00" + (p or "").encode("utf-8") + b"\x01")
        if k % 10 == 9:  # read pages stay mapped in this process: drop them, or a 1.5 GB source ends in its RSS
            mapped_pages.release(source.data)
    mapped_pages.release(source.data)
    return f"sha256:{h.hexdigest()}"
