"""Pair sources through datasets (JSONL, Parquet, Arrow folders, specs) and the tokenisation cache."""
import json
from unittest import mock

import pytest

from mtpf.data.io import DataError
from mtpf.data.pairs import PairSourceSpec, expand_specs, load_pair_sources, open_pair_source, parse_pair_spec


def _rows(n=40):
    return [{"q": f"question {i}", "a": f"answer {i}", "extra": i} for i in range(n)]


def test_spec_parsing():
    assert parse_pair_spec("hub:sentence-transformers/all-nli:pair") == PairSourceSpec(
        hub="sentence-transformers/all-nli", subset="pair")
    assert parse_pair_spec("data/x.jsonl") == PairSourceSpec(path="data/x.jsonl")
    spec = parse_pair_spec({"hub": "org/ds", "subset": None, "split": "dev", "columns": ["q", "a"], "name": "d"})
    assert (spec.split, spec.columns, spec.name) == ("dev", ("q", "a"), "d")
    for bad, msg in (({"hub": "x", "path": "y"}, "exactly one of"), ({"path": "y", "colums": 1}, "unknown key"),
                     ({"path": "y", "columns": ["a"]}, "columns must be"), (3, "must be a path")):
        with pytest.raises(ValueError, match=msg):
            parse_pair_spec(bad)


def test_local_jsonl_parquet_and_saved_arrow_with_named_columns(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list(_rows())
    (tmp_path / "j.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for path in ("j.jsonl", "p.parquet", "saved"):
        src = open_pair_source(parse_pair_spec({"path": str(tmp_path / path), "columns": ["q", "a"]}))
        assert len(src) == 40 and src.data.column_names == ["anchor", "positive"]
        assert src.data[3] == {"anchor": "question 3", "positive": "answer 3"}
    # a folder: one source per file, named after the file
    folder = tmp_path / "many"
    folder.mkdir()
    for name in ("one", "two"):
        (folder / f"{name}.jsonl").write_text(json.dumps({"anchor": "x", "positive": "y"}) + "\n")
    assert [s.name for s in load_pair_sources([str(folder)])] == ["one", "two"]
    # a folder mapping passes streaming on to each file; rows: (one source's size) cannot apply to a folder
    assert [s.streaming for s in expand_specs([{"path": str(folder), "streaming": True}])] == [True, True]
    with pytest.raises(DataError, match="a folder becomes one source per file"):
        expand_specs([{"path": str(folder), "streaming": True, "rows": 10}])


def test_file_without_the_expected_columns_fails_with_one_line(tmp_path):
    from datasets import Dataset

    Dataset.from_list(_rows()).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"p\.parquet: needs an anchor and a positive column \(found \['q', 'a', "
                       r"'extra'\]\); name them with .*columns"):
        load_pair_sources([str(tmp_path / "p.parquet")])
    Dataset.from_list(_rows()).save_to_disk(str(tmp_path / "saved"))  # an Arrow folder
    with pytest.raises(DataError, match=r"saved: needs an anchor and a positive column"):
        load_pair_sources([str(tmp_path / "saved")])
    with pytest.raises(DataError, match=r"p\.parquet: has no column 'question'.*fix columns"):
        load_pair_sources([{"path": str(tmp_path / "p.parquet"), "columns": ["question", "a"]}])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl: pair source is empty"):
        load_pair_sources([str(tmp_path / "empty.jsonl")])


def test_hub_source_without_its_required_subset_fails_before_any_download(tmp_path, monkeypatch):
    table = tmp_path / "hub_sources.yaml"
    table.write_text("sources:\n  - hub: sentence-transformers/all-nli\n    subsets: [pair, triplet]\n")
    monkeypatch.setattr("mtpf.data.pairs.HUB_TABLE", table)
    with mock.patch("datasets.load_dataset", side_effect=AssertionError("no network")):
        with pytest.raises(DataError, match=r"^hub:sentence-transformers/all-nli: this hub dataset has several "
                           r"subsets; name one \(pair, triplet\)"):
            load_pair_sources(["hub:sentence-transformers/all-nli"])


def _pairs_file(tmp_path):
    path = tmp_path / "data" / "src.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"anchor": f"a cheap place {i}", "positive": f"near town {i}"}) + "\n"
                            for i in range(30)) + json.dumps({"anchor": " ", "positive": "dropped"}) + "\n")
    return path


def test_token_cache_is_reused_and_invalidated_by_another_tokenizer(tiny_bert, tmp_path):
    from mtpf.data.token_cache import tokenize_pairs
    from mtpf.encoder import load_tokenizer
    from mtpf.testing import make_tiny_encoder

    path = _pairs_file(tmp_path)
    tok = load_tokenizer(tiny_bert)
    src = load_pair_sources([str(path)])[0]
    first = tokenize_pairs(src, tok, 16)
    assert first.num_rows == 30  # the pair with an empty anchor is dropped
    assert first[4]["a_ids"] == tok("a cheap place 4", truncation=True, max_length=16)["input_ids"]
    caches = sorted(p.name for p in (path.parent / ".mtpf_cache").iterdir() if p.name.startswith("pairs-"))
    assert len(caches) == 1
    with mock.patch.object(type(tok), "__call__", side_effect=AssertionError("tokenised again")):
        again = tokenize_pairs(load_pair_sources([str(path)])[0], tok, 16)
    assert again[:] == first[:]
    other = load_tokenizer(make_tiny_encoder(tmp_path / "roberta", "roberta"))
    tokenize_pairs(src, other, 16)  # another tokenizer: another cache entry
    tokenize_pairs(src, tok, 8)  # another max_length too
    assert len([p for p in (path.parent / ".mtpf_cache").iterdir() if p.name.startswith("pairs-")]) == 3


def test_token_cache_follows_the_columns_mapping(tiny_bert, tmp_path):
    """The same file read with another `columns:` pair is another source: its cache must not be reused."""
    from mtpf.data.token_cache import tokenize_pairs
    from mtpf.encoder import load_tokenizer

    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"q": f"query {i}", "good": f"good answer {i}", "other": f"zebra {i}"}) + "\n"
                            for i in range(20)))
    tok = load_tokenizer(tiny_bert)
    good = tokenize_pairs(load_pair_sources([{"path": str(path), "columns": ["q", "good"]}])[0], tok, 16)
    other = tokenize_pairs(load_pair_sources([{"path": str(path), "columns": ["q", "other"]}])[0], tok, 16)
    assert good[3]["p_ids"] == tok("good answer 3", truncation=True, max_length=16)["input_ids"]
    assert other[3]["p_ids"] == tok("zebra 3", truncation=True, max_length=16)["input_ids"]


def test_a_cache_completed_meanwhile_by_another_process_is_used(tiny_bert, tmp_path):
    """Two runs tokenising the same data at once: the second to finish finds the folder taken and reads it."""
    import os
    from pathlib import Path

    from mtpf.data import token_cache
    from mtpf.encoder import load_tokenizer

    path = _pairs_file(tmp_path)
    tok = load_tokenizer(tiny_bert)
    real_replace, raced = os.replace, []

    def replace_after_the_other_run(src, dst):
        if not raced:  # the other run completes the same cache just before this one renames its copy
            raced.append(dst)
            real_replace(src, str(src) + ".other")
            token_cache.tokenize_pairs(load_pair_sources([str(path)])[0], tok, 16)
            real_replace(str(src) + ".other", src)
        return real_replace(src, dst)

    with mock.patch.object(token_cache.os, "replace", side_effect=replace_after_the_other_run):
        out = token_cache.tokenize_pairs(load_pair_sources([str(path)])[0], tok, 16)
    assert raced and out.num_rows == 30
    assert out[4]["a_ids"] == tok("a cheap place 4", truncation=True, max_length=16)["input_ids"]
    ours = [p.name for p in (path.parent / ".mtpf_cache").iterdir() if p.name.startswith(("pairs-", ".tmp"))]
    assert ours == [Path(raced[0]).name]  # one cache, no temporary left


def test_corrupt_cache_fails_with_what_to_delete(tiny_bert, tmp_path):
    from mtpf.data.token_cache import tokenize_pairs
    from mtpf.encoder import load_tokenizer

    path = _pairs_file(tmp_path)
    tok = load_tokenizer(tiny_bert)
    tokenize_pairs(load_pair_sources([str(path)])[0], tok, 16)
    folder = next(p for p in (path.parent / ".mtpf_cache").iterdir() if p.name.startswith("pairs-"))
    for f in folder.glob("*.arrow"):
        f.write_bytes(b"not arrow at all")
    with pytest.raises(DataError, match=rf"src\.jsonl: tokenisation cache {folder} is unreadable .*delete that "
                       "folder and rerun"):
        tokenize_pairs(load_pair_sources([str(path)])[0], tok, 16)


def test_pseudo_labels_through_datasets_match_the_list_reader(tiny_bert, toy_data, tmp_path):
    from mtpf.data.ner_pseudo import load_pseudo_label_dataset, load_pseudo_labels, tokenize_labelled
    from mtpf.encoder import load_tokenizer

    tok = load_tokenizer(tiny_bert)
    want_ids, want_labels = tokenize_labelled(tok, load_pseudo_labels([toy_data["labels"]]), 12)  # windows too
    got = load_pseudo_label_dataset([toy_data["labels"]], tok, 12)
    assert got.num_labels == 7
    assert got.data["input_ids"] == want_ids and got.data["labels"] == want_labels
    assert got.data["length"] == [len(x) for x in want_ids]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["a"], "labels": [1]}\n\n{"tokens": ["a", "b"], "labels": [1]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: 2 tokens but 1 labels"):
        load_pseudo_label_dataset([bad], tok, 12)
    bad.write_text('{"words": ["a"], "labels": [1]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: no 'tokens' field; pseudo-label rows are "
                                        r'\{"tokens": \[\.\.\.\], "labels": \[\.\.\.\]\} as written'):
        load_pseudo_label_dataset([bad], tok, 12)


def test_streaming_source_batches_are_deterministic_resumable_and_unique(tiny_bert, toy_data, tmp_path):
    import torch
    from conftest import tiny_run_overrides

    from mtpf.config import load_config
    from mtpf.data.pipeline import PairBatches, StreamWindows
    from mtpf.data.samplers import HierarchicalPairSampler
    from mtpf.encoder import load_tokenizer
    from mtpf.recipes.pretrain import PretrainConfig, run

    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"anchor": f"anchor {i % 70}", "positive": f"positive {i}"}) + "\n"
                            for i in range(100)))
    spec = {"path": str(path), "streaming": True, "rows": 100}
    src = load_pair_sources([spec])[0]
    tok = load_tokenizer(tiny_bert)

    def make():
        sampler = HierarchicalPairSampler({src.name: len(src)}, 16, seed=0)
        return PairBatches({}, sampler, None, tok.pad_token_id,
                           streams={src.name: StreamWindows(src.name, src.data, 16, 0, tok, 32)})

    a = make()
    seq = [a(k) for k in range(6)]  # 6 windows of 24 rows: past the end of the stream, into epoch 2
    for b in seq:
        ids = b["a_chunks"][0]["input_ids"].tolist() + b["p_chunks"][0]["input_ids"].tolist()
        assert len({tuple(x) for x in ids}) == 32  # 16 anchors + 16 positives, all different
    resumed = make()(4)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(resumed["a_chunks"], seq[4]["a_chunks"]))
    assert not torch.equal(seq[0]["a_chunks"][0]["input_ids"], seq[1]["a_chunks"][0]["input_ids"])
    # With DataLoader workers (4 by default on CUDA) the workers hand over placeholders and one feeder thread per
    # process reads the stream once, in order (each worker used to read past all the others' windows): the
    # same batches, and exactly the rows of the windows it made (plus the skipped ones when resuming).
    from mtpf.data.pipeline import StreamFeeder, batch_loader

    for start in (0, 2):
        pairs = make()
        pairs.deferred = True
        loader = iter(batch_loader(pairs, start, 2, False))
        feeder = StreamFeeder(pairs, start, depth=2)
        for k in range(start, start + 4):
            got = next(loader)
            assert got == {"k": k, "stream": src.name, "j": k}  # a placeholder: the worker read nothing
            got = feeder.get(k)
            assert all(torch.equal(x["input_ids"], y["input_ids"])
                       for x, y in zip(got["a_chunks"], seq[k]["a_chunks"]))
        feeder.close()
        assert 4 <= feeder.built <= 4 + 2 + 1  # read ahead by at most the queue's depth and one in hand
        assert feeder.streams[src.name].rows_read == (start + feeder.built) * 24  # each window read once
    with pytest.raises(DataError, match="streaming source of unknown size; give rows"):
        len(load_pair_sources([{"path": str(path), "streaming": True}])[0])
    # a stream that cannot fill a batch: the feeder's error reaches the training loop as the same one line
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({"anchor": "a", "positive": f"p {i}"}) + "\n" for i in range(100)))
    bad = load_pair_sources([{"path": str(same), "streaming": True, "rows": 100}])[0]
    pairs = PairBatches({}, HierarchicalPairSampler({bad.name: 100}, 16, seed=0), None, tok.pad_token_id,
                        streams={bad.name: StreamWindows(bad.name, bad.data, 16, 0, tok, 32)})
    feeder = StreamFeeder(pairs, 0)
    with pytest.raises(DataError, match="cannot fill a batch of 16 pairs"):
        feeder.get(0)
    feeder.close()
    # the recipe trains on it (no token cache for a stream: tokenised in the step's worker)
    cfg = load_config(PretrainConfig, None, tiny_run_overrides(tiny_bert, toy_data, tmp_path / "run", strategy="tc"))
    cfg.pairs = [spec]
    assert run(cfg)["backbone"]


def test_a_long_source_name_still_tokenises(tiny_bert, tmp_path):
    """datasets refuses map fingerprints over 64 characters; the cache key of a source with a long file name
    (the shared data's paraphrase_msrp_sts_pairs made it 65) must still work, and be reused."""
    from mtpf.data.token_cache import _fingerprint, tokenize_pairs
    from mtpf.encoder import load_tokenizer

    path = _pairs_file(tmp_path).rename(tmp_path / "data" / "a_rather_long_paraphrase_source_name_pairs.jsonl")
    tok = load_tokenizer(tiny_bert)
    src = load_pair_sources([str(path)])[0]
    assert tokenize_pairs(src, tok, 16).num_rows == 30
    assert tokenize_pairs(load_pair_sources([str(path)])[0], tok, 16).num_rows == 30
    assert _fingerprint("x" * 40) == "x" * 40 and len(_fingerprint("y" * 90)) == 64
    assert _fingerprint("y" * 90) != _fingerprint("y" * 89 + "z")


def test_a_float_label_is_reported_at_its_own_line(tiny_bert, tmp_path):
    """Arrow reads a column whose line 21 holds 2.5 as floats everywhere: the error still names line 21."""
    from transformers import AutoTokenizer

    from mtpf.data.io import DataError
    from mtpf.data.ner_pseudo import load_pseudo_label_dataset

    rows = ['{"tokens": ["a", "b"], "labels": [1, 2]}'] * 20 + ['{"tokens": ["a", "b"], "labels": [1, 2.5]}']
    (tmp_path / "s.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"s\.jsonl:21: 'labels' must be a list of integer"):
        load_pseudo_label_dataset([tmp_path], AutoTokenizer.from_pretrained(tiny_bert), 32)


def test_a_stream_that_does_not_know_its_columns_opens(monkeypatch):
    """Some hub streams report no features until read (column_names is None): the columns are found on the
    first row, and the others dropped, without a TypeError."""
    from datasets import IterableDataset

    from mtpf.data import pairs

    def gen():
        for i in range(40):
            yield {"id": i, "query": f"question {i}", "pos": f"answer {i}"}

    stream = IterableDataset.from_generator(gen)
    assert stream.column_names is None
    monkeypatch.setattr(pairs, "_load_local", lambda spec: stream)
    src = pairs.open_pair_source(pairs.PairSourceSpec(path="x.jsonl", streaming=True, rows=40))
    assert next(iter(src.data)) == {"anchor": "question 0", "positive": "answer 0"}


def test_a_truncated_pair_file_is_named_without_reading_it_whole(tmp_path, monkeypatch):
    """datasets' json builder reads the whole file into memory (pandas) when a chunk fails to parse: at 100 GB
    that is an out-of-memory kill, not the one-line error. The bad line must be named without that fallback."""
    import importlib

    hf_json = importlib.import_module("datasets.packaged_modules.json.json")  # the builder's module

    whole_reads = []

    def whole_file_read(*_a, **_k):
        whole_reads.append(1)
        raise ValueError("the whole file was read into memory")

    monkeypatch.setattr(hf_json, "pandas_read_json", whole_file_read)
    lines = [json.dumps({"anchor": f"a {i}", "positive": f"p {i}"}) for i in range(3000)]
    (tmp_path / "cut.jsonl").write_text("\n".join(lines) + '\n{"anchor": "a 3000", "posi')
    with pytest.raises(DataError, match=r"cut\.jsonl:3001: malformed JSON"):
        load_pair_sources([str(tmp_path / "cut.jsonl")])
    assert whole_reads == []
    (tmp_path / "ok.jsonl").write_text("\n".join(lines) + "\n")
    (source,) = load_pair_sources([str(tmp_path / "ok.jsonl")])
    assert len(source) == 3000 and list((tmp_path / ".mtpf_cache").glob("ok.jsonl.*.streams"))
    monkeypatch.setattr("mtpf.data.pairs.JSON_ARRAY_LIMIT", 100)
    (tmp_path / "arr.json").write_text(json.dumps([{"anchor": "a", "positive": "p"}] * 10))
    with pytest.raises(DataError, match=r"arr\.json:1: a top-level JSON array \(0\.0 MB\) is read whole"):
        load_pair_sources([str(tmp_path / "arr.json")])
