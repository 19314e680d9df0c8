"""mtpf.data.mapped_pages: the pages a batch faulted in from a memory-mapped Arrow cache leave the process's
RSS after ``release``; the data stays readable and nothing else is touched."""
import os
import sys

import numpy as np
import pytest

from mtpf.data import mapped_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux page-table advice")


def _mapped_rss_kb(path: str) -> int:
    """Resident kB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
                inside = len(head) == 6 and head[5] == path
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def test_release_drops_the_mapped_pages_and_keeps_the_data(tmp_path):
    from datasets import Dataset

    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 30_000, rng.integers(5, 40)).tolist() for _ in range(60_000)]
    Dataset.from_dict({"ids": rows}).save_to_disk(str(tmp_path / "ds"))
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "ds"))  # memory-mapped
    (path,) = mapped_pages.dataset_files(ds)
    anon = np.arange(1_000_000)  # anonymous memory that must survive the advice
    picks = rng.integers(0, len(rows), 200).tolist()
    got = ds[picks]["ids"]
    assert _mapped_rss_kb(path) > 0
    assert mapped_pages.release(ds) > 0
    assert _mapped_rss_kb(path) == 0
    assert ds[picks]["ids"] == got == [rows[i] for i in picks]  # re-faulted from the page cache
    assert anon.sum() == 999_999 * 1_000_000 // 2
    assert mapped_pages.release(Dataset.from_dict({"ids": [[1]]})) == 0  # in memory: nothing mapped


def test_fingerprinting_a_hub_source_leaves_none_of_it_resident(tmp_path):
    """``source_fingerprint`` reads every text of a (non-streamed) hub source at export: the pages it read must
    not stay in the run's RSS (a 1.5 GB ccnews would)."""
    from datasets import Dataset, load_from_disk

    from mtpf.data.pairs import PairSource, PairSourceSpec, source_fingerprint

    rng = np.random.default_rng(1)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
    texts = [" ".join(rng.choice(words, 12)) for _ in range(60_000)]
    Dataset.from_dict({"anchor": texts, "positive": texts[::-1]}).save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    (path,) = mapped_pages.dataset_files(ds)
    source = PairSource("hubsrc", ds, PairSourceSpec(hub="org/hubsrc"), [])
    fp = source_fingerprint(source)
    assert fp.startswith("sha256:") and fp == source_fingerprint(source)
    assert _mapped_rss_kb(path) == 0


def test_label_fit_sample_leaves_no_pages_of_its_vector_file_resident(tiny_bert, tmp_path, monkeypatch):
    """`mtpf label` writes the fit sample's vectors to a float16 memmap and k-means reads random rows of it: the
    pages written and read are unmapped again, so the fit sample (1.5 GB at NuNER's size) never sits in RSS."""
    from mtpf.teacher import cluster
    from mtpf.teacher.label import LabelConfig, label_corpus

    words = ["the", "man", "Paris", "Berlin", "visited", "said", "on", "Monday", "company", "new"]
    rng = np.random.default_rng(0)
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(400)) + "\n")
    seen = {}
    real_fit = cluster.fit_kmeans

    def fit(vectors, *args, **kw):
        path = str(vectors.filename)
        seen["after pass 1"] = _mapped_rss_kb(path)
        out = real_fit(vectors, *args, **kw)
        seen["after k-means"] = _mapped_rss_kb(path)
        return out

    monkeypatch.setattr(cluster, "fit_kmeans", fit)
    label_corpus(LabelConfig(teacher=tiny_bert, corpus=[str(tmp_path / "corpus.txt")], out=str(tmp_path / "out"),
                             clusters=5, fit_words=4000, kmeans_batch=256, chunk_words=500, progress=False,
                             device="cpu"), log=lambda *_: None)
    assert seen == {"after pass 1": 0, "after k-means": 0}


def test_release_by_a_relative_path(tmp_path, monkeypatch):
    """/proc/self/maps names resolved absolute paths: a relative --out (``labels/``) must still be released."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    mm = np.lib.format.open_memmap("rel/v.f16", mode="w+", dtype=np.float16, shape=(200_000, 16))
    mm[:] = 1
    assert _mapped_rss_kb(str(tmp_path / "rel" / "v.f16")) > 0
    assert mapped_pages.release_files(("rel/v.f16",)) > 0
    assert _mapped_rss_kb(str(tmp_path / "rel" / "v.f16")) == 0
    del mm


def test_pretrain_setup_leaves_no_pages_of_the_pair_data_resident(tiny_bert, toy_data, tmp_path):
    """Opening the pair sources and tokenising them faults in pages of their Arrow files; with DataLoader
    workers the main process never gathers a batch (nor releases), so setup must unmap them itself."""
    from conftest import tiny_run_overrides

    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

    cfg = load_config(PretrainConfig, None, tiny_run_overrides(tiny_bert, toy_data, tmp_path / "run", strategy="tc"))
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    datasets = [s.data for s in recipe.pair_sources.values()] + list(recipe.pair_tokens.values())
    files = {f for ds in datasets for f in mapped_pages.dataset_files(ds)}
    assert len(files) >= 4  # two sources, two token caches
    assert {f: _mapped_rss_kb(f) for f in files} == {f: 0 for f in files}


def test_reading_an_arrow_corpus_keeps_only_a_batch_of_it_resident(tmp_path):
    """`mtpf label` reads a local .arrow corpus (memory-mapped) front to back, twice: the pages of the rows
    already read must leave the process, or a 24M-word corpus ends up whole in RSS."""
    from datasets import Dataset

    from mtpf.teacher.corpus import iter_sentences

    rng = np.random.default_rng(2)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "Paris", "Monday"])
    texts = [" ".join(rng.choice(words, 16)) for _ in range(200_000)]
    Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    (path,) = [str(p) for p in (tmp_path / "ds").glob("*.arrow")]
    size_kb = os.path.getsize(path) // 1024
    seen = {}
    for i, sentence in enumerate(iter_sentences([path])):
        if i == 150_000:
            seen["resident"] = _mapped_rss_kb(os.path.realpath(path))
    assert i == len(texts) - 1 and size_kb > 15_000
    assert seen["resident"] < size_kb // 4, (seen, size_kb)
