"""`mtpf label` end to end: shards the engine reads, same ids from saved centroids, resume, CLI, real data."""
import gzip
import itertools
import json
import os
from pathlib import Path

import pytest

from mtpf.data.io import DataError
from mtpf.data.ner_pseudo import load_pseudo_labels, tokenize_labelled
from mtpf.teacher.label import LabelConfig, PseudoLabeller, label_corpus

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WORDS = ["the", "a", "man", "woman", "Paris", "Berlin", "Obama", "Merkel", "Apple", "Google", "visited", "bought", "city", "company", "said", "on", "Monday", "in", "York", "new", "talks"]


def quiet(*_):
    pass


@pytest.fixture()
def corpus(tmp_path):
    import random

    rng = random.Random(0)
    (tmp_path / "corpus").mkdir()
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "." for _ in range(90)]
    lines[10] = ""
    (tmp_path / "corpus" / "a.txt").write_text("\n".join(lines) + "\n")
    with open(tmp_path / "corpus" / "b.jsonl", "w") as f:
        f.writelines(json.dumps({"tokens": [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]}) + "\n" for _ in range(40))
    return tmp_path / "corpus"


def cfg(teacher, corpus, out, **kw):
    base = dict(teacher=teacher, corpus=[str(corpus)], out=str(out), clusters=5, fit_words=600, kmeans_batch=256,
                shard_sentences=40, chunk_words=200, progress=False, device="cpu")
    base.update(kw)
    return LabelConfig(**base)


def read_shards(out):
    rows = []
    for f in sorted(Path(out).glob("shard-*.jsonl*")):
        with (gzip.open(f, "rt") if f.name.endswith(".gz") else open(f)) as fh:
            rows.extend(json.loads(line) for line in fh)
    return rows


def test_label_writes_what_the_engine_reads(tiny_bert, corpus, tmp_path):
    out = tmp_path / "out"
    info = label_corpus(cfg(tiny_bert, corpus, out), log=quiet)
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-0000{i}.jsonl.gz" for i in range(4)]
    meta = json.loads((out / "clusters.json").read_text())
    assert meta["K"] == 5 and meta["teacher"] == tiny_bert and meta["layers"] == [-1]
    assert meta["centroids"] == "centroids.npy" and (out / "centroids.npy").is_file()
    assert meta["sentences"] == 129 and meta["empty_lines"] == 1 and sum(meta["counts"]) == meta["words"]
    assert meta["inertia"] > 0 and len(meta["counts"]) == 5 and info == meta
    data = load_pseudo_labels([out])
    assert data.num_labels == 5 and len(data.tokens) == 129
    assert data.tokens[-1] == read_shards(out)[-1]["tokens"]
    assert not list(out.glob("*.tmp")) and not (out / ".fit_vectors.f16").exists()


def test_saved_centroids_give_the_same_ids(tiny_bert, corpus, tmp_path):
    out = tmp_path / "out"
    label_corpus(cfg(tiny_bert, corpus, out), log=quiet)
    rows = read_shards(out)
    labeller = PseudoLabeller.from_dir(out, device="cpu")
    assert labeller.label([r["tokens"] for r in rows]) == [r["labels"] for r in rows]
    assert labeller.label((r["tokens"] for r in rows), chunk_words=40) == [r["labels"] for r in rows]  # chunked
    # and through the CLI path: --reuse-clusters on the same text -> identical shards, no refit
    again = tmp_path / "again"
    label_corpus(cfg(None, corpus, again, reuse_clusters=str(out), clusters=999), log=quiet)
    assert read_shards(again) == rows
    assert json.loads((again / "clusters.json").read_text())["K"] == 5


def test_reruns_are_seeded_and_resume_skips_finished_shards(tiny_bert, corpus, tmp_path):
    out, twin = tmp_path / "out", tmp_path / "twin"
    label_corpus(cfg(tiny_bert, corpus, out), log=quiet)
    label_corpus(cfg(tiny_bert, corpus, twin), log=quiet)
    assert read_shards(out) == read_shards(twin)  # same seed, same labels
    first = read_shards(out)
    (out / "shard-00002.jsonl.gz").unlink()
    kept = os.stat(out / "shard-00001.jsonl.gz").st_mtime_ns
    messages = []
    label_corpus(cfg(tiny_bert, corpus, out), log=messages.append)
    assert os.stat(out / "shard-00001.jsonl.gz").st_mtime_ns == kept
    assert read_shards(out) == first
    assert any("reusing the fit" in m for m in messages) and any("skipped 3 finished" in m for m in messages)


def test_clusters_json_says_which_shards_were_made_on_which_device_and_dtype(tiny_bert, corpus, tmp_path):
    out = tmp_path / "out"
    info = label_corpus(cfg(tiny_bert, corpus, out), log=quiet)
    assert info["made_with"] == [{"device": "cpu", "dtype": "float32", "shards": [0, 1, 2, 3]}]
    assert json.loads((out / ".progress" / "shard-00001.json").read_text())["dtype"] == "float32"
    # a resumed run that finishes on another dtype (as a CPU run finished on a GPU in bfloat16 would) is allowed
    # and recorded, shard by shard, with one line saying so
    (out / "shard-00002.jsonl.gz").unlink()
    messages = []
    info = label_corpus(cfg(tiny_bert, corpus, out, dtype="float64"), log=messages.append)
    assert info["made_with"] == [{"device": "cpu", "dtype": "float32", "shards": [0, 1, 3]},
                                 {"device": "cpu", "dtype": "float64", "shards": [2]}]
    assert any("cpu in float32 (3 shard(s)); cpu in float64 (1 shard(s))" in m for m in messages)


def test_interrupted_run_resumes_to_the_same_result(tiny_bert, corpus, tmp_path):
    from mtpf.teacher.embed import Teacher

    clean = tmp_path / "clean"
    label_corpus(cfg(tiny_bert, corpus, clean), log=quiet)

    class Crash(Teacher):
        calls = 0

        def embed(self, sentences, **kw):
            Crash.calls += 1
            if Crash.calls == 8:  # after the fit and a couple of shards
                raise KeyboardInterrupt
            return super().embed(sentences, **kw)

    t = Teacher.load(tiny_bert, device="cpu")
    crashing = Crash(t.model, t.tokenizer, name=tiny_bert)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        label_corpus(cfg(tiny_bert, corpus, out), teacher=crashing, log=quiet)
    assert not (out / "clusters.json").exists() and not list(out.glob("*.tmp"))
    done = sorted(p.name for p in out.glob("shard-*"))
    assert 0 < len(done) < 4
    # pre-finetuning refuses the unfinished folder instead of training on part of the corpus
    with pytest.raises(DataError, match="unfinished `mtpf label` output"):
        load_pseudo_labels([out])
    label_corpus(cfg(tiny_bert, corpus, out), log=quiet)
    assert read_shards(out) == read_shards(clean)
    # finished: exactly the shards clusters.json lists (a stray file beside them is not read)
    n = len(load_pseudo_labels([out]).tokens)
    (out / "shard-00099.jsonl").write_text(json.dumps({"tokens": ["x"], "labels": [0]}) + "\n")
    assert len(load_pseudo_labels([out]).tokens) == n == len(read_shards(clean))


def test_an_interrupted_overwrite_still_needs_overwrite(tiny_bert, corpus, tmp_path, monkeypatch):
    """`mtpf label --overwrite` killed while deleting the old shards keeps the old settings file, so a re-run
    with the new settings is refused (instead of skipping the old shards as finished under the new seed)."""
    out = tmp_path / "out"
    label_corpus(cfg(tiny_bert, corpus, out), log=quiet)
    real = Path.unlink

    def killed_at_shards(self, *a, **kw):
        if self.name.startswith("shard-"):
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "unlink", killed_at_shards)
    with pytest.raises(KeyboardInterrupt):
        label_corpus(cfg(tiny_bert, corpus, out, seed=1, overwrite=True), log=quiet)
    monkeypatch.setattr(Path, "unlink", real)
    with pytest.raises(DataError, match="other settings.*seed"):
        label_corpus(cfg(tiny_bert, corpus, out, seed=1), log=quiet)
    with pytest.raises(DataError, match="unfinished"):
        load_pseudo_labels([out])


def test_changed_settings_need_overwrite(tiny_bert, corpus, tmp_path):
    out = tmp_path / "out"
    label_corpus(cfg(tiny_bert, corpus, out), log=quiet)
    with pytest.raises(DataError, match="other settings.*clusters"):
        label_corpus(cfg(tiny_bert, corpus, out, clusters=4), log=quiet)
    info = label_corpus(cfg(tiny_bert, corpus, out, clusters=4, overwrite=True), log=quiet)
    assert info["K"] == 4 and max(max(r["labels"]) for r in read_shards(out)) <= 3


def test_bpe_teacher_long_sentence_and_layers(tmp_path):
    from mtpf.testing import make_tiny_encoder

    teacher = make_tiny_encoder(tmp_path / "rob", "roberta")
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as f:
        f.write(json.dumps({"tokens": (WORDS * 8)[:150]}) + "\n")  # > 128 teacher tokens
        f.writelines(json.dumps({"text": " ".join(WORDS[i % 5 : i % 5 + 6])}) + "\n" for i in range(30))
    info = label_corpus(cfg(teacher, corpus, tmp_path / "out", layers=(-1, -3), compress=False), log=quiet)
    rows = read_shards(tmp_path / "out")
    assert info["windowed_sentences"] == 1 and info["dim"] == 64 and len(rows[0]["labels"]) == 150
    assert (tmp_path / "out" / "shard-00000.jsonl").is_file()


def test_cli_label_and_inspect(tiny_bert, corpus, tmp_path, capsys):
    from mtpf.cli import main

    out = tmp_path / "out"
    rc = main(["label", "--teacher", tiny_bert, "--corpus", str(corpus / "a.txt"), str(corpus / "b.jsonl"),
               "--clusters", "4", "--out", str(out), "--fit-words", "500", "--kmeans-batch", "128", "--quiet",
               "--device", "cpu"])
    assert rc == 0 and json.loads((out / "clusters.json").read_text())["K"] == 4
    capsys.readouterr()
    assert main(["label", "inspect", str(out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "K=4" in text and text.count("%") == 4
    assert main(["label", "inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(c["size"] for c in summary["clusters"]) == summary["words"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["ok"]}\n{"tokens": ["broken"\n')
    assert main(["label", "--teacher", tiny_bert, "--corpus", str(bad), "--out", str(tmp_path / "o2"), "-k", "2",
                 "--quiet"]) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err
    assert main(["label", "--corpus", str(bad)]) == 2
    assert main(["label", "inspect", str(tmp_path)]) == 2


# -- real data -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_slice(tmp_path_factory):
    if not (DATA / "raw").is_dir():
        pytest.skip(f"{DATA} not present")
    root = tmp_path_factory.mktemp("raw-slice")
    with open(DATA / "raw" / "abc_news.txt", encoding="utf-8") as f:
        (root / "abc.txt").write_text("".join(itertools.islice(f, 60)))
    with gzip.open(DATA / "raw" / "brown_corpus.txt.gz", "rt", encoding="utf-8") as f:
        (root / "brown.txt").write_text("".join(itertools.islice(f, 60)))
    return root


@pytest.fixture(scope="module")
def real_labels(raw_slice, tmp_path_factory):
    from mtpf.encoder import packaged_model_path

    out = tmp_path_factory.mktemp("real-labels")
    label_corpus(LabelConfig(teacher=packaged_model_path(), corpus=[str(raw_slice)], out=str(out), clusters=20,
                             fit_words=2000, kmeans_batch=512, shard_sentences=50, progress=False, device="cpu"),
                 log=quiet)
    return out


def test_real_slice_with_packaged_teacher_is_engine_ready(real_labels):
    from mtpf.encoder import load_tokenizer

    data = load_pseudo_labels([real_labels])
    assert data.num_labels == 20 and len(data.tokens) == 120
    meta = json.loads((real_labels / "clusters.json").read_text())
    assert meta["empty_clusters"] <= 2 and meta["words"] == sum(map(len, data.tokens))
    ids, labels = tokenize_labelled(load_tokenizer("packaged"), data, max_length=512)
    assert len(ids) >= len(data.tokens) and all(len(i) == len(lab) <= 512 for i, lab in zip(ids, labels))
    assert {x for lab in labels for x in lab if x >= 0} <= set(range(20))


def _pretrain_ner(model, labels, out, max_length):
    from mtpf.cli import main

    return main(["pretrain", "strategy=ner", f"model={model}", f"output_dir={out}", f"ner_data=[{labels}]",
                 "max_steps=2", "ner_batch_size=8", f"max_length={max_length}", "save_every=1", "log_every=1",
                 "tensorboard=false", "progress=false", "warmup_ratio=0.0"])


@pytest.mark.slow
def test_pretrain_strategy_ner_reads_the_labels(tiny_bert, corpus, tmp_path):
    labels = tmp_path / "labels"
    label_corpus(cfg(tiny_bert, corpus, labels), log=quiet)
    assert _pretrain_ner(tiny_bert, labels, tmp_path / "run", 64) == 0
    assert (tmp_path / "run").is_dir()


@pytest.mark.slow
def test_pretrain_strategy_ner_on_real_labels(real_labels, tiny_bert, tmp_path):
    # Brown sentences exceed the tiny model's 128 positions, so this also exercises the engine's windowing.
    assert _pretrain_ner(tiny_bert, real_labels, tmp_path / "run", 128) == 0


@pytest.mark.slow
def test_conll_clusters_carry_entity_information():
    """A slice of the quality check in scripts/teacher_quality.py (the full run is in docs/teacher.md)."""
    import numpy as np

    from mtpf.data.io import iter_jsonl
    from mtpf.teacher.cluster import Assigner, fit_kmeans
    from mtpf.teacher.embed import Teacher, l2_normalize
    from mtpf.teacher.quality import score_labels

    path = DATA / "ner" / "conll2003" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    rows = [obj for _, obj in itertools.islice(iter_jsonl(path), 600) if obj["tokens"]]
    teacher = Teacher.load("packaged", device="cpu")
    vecs = l2_normalize(teacher.embed([r["tokens"] for r in rows])).numpy()
    centroids, _ = fit_kmeans(vecs, 20, seed=0, batch_size=1024)
    labels, _ = Assigner(centroids).assign(vecs)
    per, pos = [], 0
    for r in rows:
        per.append(labels[pos : pos + len(r["tokens"])].tolist())
        pos += len(r["tokens"])
    scores = score_labels([r["tags"] for r in rows], per)
    ent = scores["entities"]
    assert ent["v_measure"] > 2 * ent["v_measure_random"] and ent["purity"] > ent["purity_random"]
    assert np.isfinite(scores["all"]["v_measure"])


def test_parquet_corpus_labels_like_the_same_text_file(tiny_bert, corpus, tmp_path):
    import datasets

    lines = (corpus / "a.txt").read_text().splitlines()
    datasets.Dataset.from_list([{"text": t} for t in lines]).to_parquet(str(tmp_path / "a.parquet"))
    a = label_corpus(cfg(tiny_bert, corpus / "a.txt", tmp_path / "txt"), log=quiet)
    b = label_corpus(cfg(tiny_bert, tmp_path / "a.parquet", tmp_path / "pq"), log=quiet)
    assert read_shards(tmp_path / "txt") == read_shards(tmp_path / "pq")
    assert (a["sentences"], a["words"], a["empty_lines"]) == (b["sentences"], b["words"], b["empty_lines"]) == (
        89, a["words"], 1)
