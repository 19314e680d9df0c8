"""Teacher labelling units: word splitting, corpus reading, sub-token -> word averaging, k-means."""
import gzip
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mtpf.data.io import DataError
from mtpf.teacher.cluster import Assigner, fit_kmeans, load_centroids, save_centroids
from mtpf.teacher.corpus import CorpusStats, corpus_files, iter_sentences, split_words
from mtpf.teacher.embed import Teacher, parse_layers
from mtpf.teacher.label import _sample_sentences


# -- word splitting and corpus reading ----------------------------------------------------------------------
def test_split_words_rule():
    assert split_words("Apple Inc. earned $3.5 billion (1,000 units) in long-term deals, didn't it?") == [
        "Apple", "Inc", ".", "earned", "$", "3.5", "billion", "(", "1,000", "units", ")", "in", "long-term",
        "deals", ",", "didn't", "it", "?"]
    assert split_words("  ") == []
    assert split_words("Zürich—naïve 😀!") == ["Zürich", "—", "naïve", "😀", "!"]


def test_corpus_formats_empty_lines_and_order(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("Hello world.\n\n   \nSecond line here\n")
    with gzip.open(tmp_path / "d" / "a.txt.gz", "wt") as f:
        f.write("Gzipped text\n")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"tokens": ["New York", "is", "big"]}) + "\n\n" + json.dumps({"text": "It's 3.5 km."}) + "\n"
        + json.dumps({"tokens": []}) + "\n")
    stats = CorpusStats()
    sents = list(iter_sentences(corpus_files([tmp_path / "d", tmp_path / "c.jsonl"]), stats))
    assert [s.words for s in sents] == [
        ["Gzipped", "text"], ["Hello", "world", "."], ["Second", "line", "here"],
        ["New York", "is", "big"],  # pre-tokenised words kept as given, spaces and all
        ["It's", "3.5", "km", "."]]
    assert [(s.source.endswith("b.txt"), s.line) for s in sents[1:3]] == [(True, 1), (True, 4)]
    assert stats.empty_lines == 4 and stats.sentences == 5 and stats.words == 15
    # the token caches mtpf keeps beside data it trained on (e.g. a pseudo-label folder) are not corpus
    cache = tmp_path / "d" / ".mtpf_cache" / "ner-x"
    cache.mkdir(parents=True)
    (cache / "data.arrow").write_bytes(b"not text")
    assert corpus_files([tmp_path / "d"]) == [str(tmp_path / "d" / "a.txt.gz"), str(tmp_path / "d" / "b.txt")]


@pytest.mark.parametrize("content,problem", [
    (b'{"tokens": ["a"]}\n{"tokens": ["b"\n', "malformed JSON"),
    (b'{"tokens": ["a"]}\n{"tokens": "a b"}\n', "'tokens' must be a list of strings"),
    (b'{"tokens": ["a"]}\n{"words": ["a"]}\n', "neither 'tokens'"),
    (b'{"tokens": ["a"]}\n{"tokens": ["a", " "]}\n', "empty or whitespace"),
    (b'{"tokens": ["a"]}\n[1, 2]\n', "expected a JSON object"),
])
def test_corrupt_jsonl_line_reported_with_file_and_line(tmp_path, content, problem):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(iter_sentences(corpus_files([f])))
    assert err.value.line == 2 and err.value.path == str(f) and problem in str(err.value)


def test_bad_utf8_and_missing_paths(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine\nbro\xffken\n")
    with pytest.raises(DataError, match=r"bad.txt:2: not valid UTF-8"):
        list(iter_sentences(corpus_files([f])))
    with pytest.raises(DataError, match="no such file"):
        corpus_files([tmp_path / "nope.txt"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match="unsupported"):
        corpus_files([tmp_path / "x.csv"])
    assert corpus_files(["numind/NuNER"]) == ["hub:numind/NuNER"]


def test_sample_is_bounded_uniform_and_seeded():
    sents = [SimpleNamespace(words=[f"w{i}"] * (1 + i % 7)) for i in range(3000)]
    a = _sample_sentences(iter(sents), 2000, seed=1)
    b = _sample_sentences(iter(sents), 2000, seed=1)
    assert a == b and 1900 <= sum(map(len, a)) <= 2000
    ids = [int(s[0][1:]) for s in a]
    assert min(ids) < 300 and max(ids) > 2700  # drawn from the whole corpus, not its head
    assert _sample_sentences(iter(sents), 2000, seed=2) != a


# -- word averaging -------------------------------------------------------------------------------------------
class ContextFreeEncoder(nn.Module):
    """Hidden state of token t at layer l = (l + 1) * [t, t mod 7, 1]: word means are known by hand."""

    def __init__(self, model_type="bert", pad_token_id=0, n_layers=2, max_pos=512):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=3, num_hidden_layers=n_layers, max_position_embeddings=max_pos,
                                      model_type=model_type, pad_token_id=pad_token_id)
        self.n_layers = n_layers
        self.calls = []

    def forward(self, input_ids, attention_mask, output_hidden_states=False):
        self.calls.append(tuple(input_ids.shape))
        base = torch.stack([input_ids.float(), (input_ids % 7).float(), torch.ones_like(input_ids).float()], -1)
        hs = tuple(base * (layer + 1) for layer in range(self.n_layers + 1))
        return SimpleNamespace(last_hidden_state=hs[-1], hidden_states=hs if output_hidden_states else None)


def vec(tok, pieces, layer_scale=3.0):
    ids = tok.convert_tokens_to_ids(pieces)
    return np.mean([[t * layer_scale, (t % 7) * layer_scale, layer_scale] for t in ids], axis=0)


@pytest.fixture(scope="module")
def wordpiece():
    from mtpf.encoder import load_tokenizer

    return load_tokenizer("packaged")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from mtpf.encoder import load_tokenizer
    from mtpf.testing import make_tiny_encoder

    return load_tokenizer(make_tiny_encoder(tmp_path_factory.mktemp("tiny-roberta"), "roberta"))


def test_wordpiece_word_means_by_hand(wordpiece):
    teacher = Teacher(ContextFreeEncoder(), wordpiece)
    out = teacher.embed([["Kickbacks", "AWB", ".", "paid"], ["3.5", "!"]]).numpy()
    assert out.shape == (6, 3)
    expected = [vec(wordpiece, ["kick", "##backs"]), vec(wordpiece, ["aw", "##b"]), vec(wordpiece, ["."]),
                vec(wordpiece, ["paid"]), vec(wordpiece, ["3", ".", "5"]), vec(wordpiece, ["!"])]
    np.testing.assert_allclose(out, np.stack(expected), rtol=1e-6)
    # Specials ([CLS]=101, [SEP]=102) never enter a word's mean.
    assert not np.isclose(out[:, 0], 101 * 3).any()


def test_bpe_leading_space_pieces(bpe):
    assert bpe.convert_ids_to_tokens(bpe(["Obama", "!", "zebra"], is_split_into_words=True)["input_ids"]) == [
        "<s>", "ĠOb", "am", "a", "Ġ", "!", "Ġ", "z", "e", "b", "r", "a", "</s>"]
    teacher = Teacher(ContextFreeEncoder("roberta", bpe.pad_token_id), bpe)
    out = teacher.embed([["Obama", "!", "zebra"]]).numpy()
    # A bare "Ġ" boundary piece is not part of the word's meaning: "!" is just "!", "zebra" is z,e,b,r,a.
    np.testing.assert_allclose(out, np.stack([vec(bpe, ["ĠOb", "am", "a"]), vec(bpe, ["!"]),
                                              vec(bpe, ["z", "e", "b", "r", "a"])]), rtol=1e-6)


def test_layers_are_concatenated(wordpiece):
    teacher = Teacher(ContextFreeEncoder(), wordpiece, layers="-1,-3")
    assert teacher.dim == 6 and parse_layers("-1, -7") == (-1, -7)
    out = teacher.embed([["paid"]]).numpy()[0]
    np.testing.assert_allclose(out, np.concatenate([vec(wordpiece, ["paid"], 3.0), vec(wordpiece, ["paid"], 1.0)]))
    with pytest.raises(ValueError, match="out of range"):
        Teacher(ContextFreeEncoder(), wordpiece, layers="-5")


def test_long_sentences_are_windowed_not_cut(wordpiece):
    words = ["Kickbacks", "AWB", "paid", ".", "the", "Kickbacks", "AWB", "wheat", "sales", "Iraq", "to"] * 3
    full = Teacher(ContextFreeEncoder(), wordpiece).embed([words]).numpy()
    model = ContextFreeEncoder()
    small = Teacher(model, wordpiece, max_length=6)  # 4 word pieces a window
    windowed = small.embed([["short"], words]).numpy()
    assert small.stats.windowed_sentences == 1 and len(windowed) == 1 + len(words)
    np.testing.assert_allclose(windowed[1:], full, rtol=1e-6)  # every word, complete
    assert max(shape[1] for shape in model.calls) <= 6
    # A word longer than a whole window keeps its first pieces rather than vanishing.
    tiny = Teacher(ContextFreeEncoder(), wordpiece, max_length=3)
    np.testing.assert_allclose(tiny.embed([["Kickbacks", "paid"]]).numpy(),
                               np.stack([vec(wordpiece, ["kick"]), vec(wordpiece, ["paid"])]), rtol=1e-6)


def test_word_without_pieces_gets_context_vector(wordpiece):
    teacher = Teacher(ContextFreeEncoder(), wordpiece)
    out = teacher.embed([["paid", "\u200b"], ["\u200b"]]).numpy()
    assert out.shape == (3, 3) and np.isfinite(out).all() and teacher.stats.words_without_pieces == 2
    # the mean of the window's word pieces, not of its [CLS] / [SEP]; with no word piece at all, of the specials
    np.testing.assert_allclose(out[1], vec(wordpiece, ["paid"]), rtol=1e-6)
    np.testing.assert_allclose(out[2], vec(wordpiece, ["[CLS]", "[SEP]"]), rtol=1e-6)


def test_length_buckets_do_not_change_vectors(tmp_path):
    from mtpf.testing import make_tiny_encoder

    sents = [["The", "quick", "brown", "fox"], ["Obama", "visited", "Berlin", "and", "Paris", "last", "week"] * 3,
             ["Hi"], ["Apple", "Inc", ".", "reported", "earnings"]]
    for arch in ("bert", "distilbert", "roberta"):
        teacher = Teacher.load(make_tiny_encoder(tmp_path / arch, arch), device="cpu", batch_tokens=64)
        together = teacher.embed(sents)
        alone = torch.cat([teacher.embed([s]) for s in sents])
        assert together.shape == (sum(map(len, sents)), 32)
        torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)


# -- clustering -------------------------------------------------------------------------------------------------
def planted(n=3000, k=6, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 5
    truth = rng.integers(0, k, n)
    return (centers[truth] + rng.normal(scale=0.5, size=(n, d))).astype(np.float32), truth


def test_kmeans_recovers_planted_clusters():
    from sklearn.metrics import adjusted_rand_score

    x, truth = planted()
    centroids, info = fit_kmeans(x, 6, seed=0, batch_size=256)
    labels, dist = Assigner(centroids).assign(x)
    assert adjusted_rand_score(truth, labels) > 0.99
    assert info["steps"] > 1 and dist.mean() < 0.5 ** 2 * 32 * 1.5


def test_kmeans_seeded_reruns_and_memmap_are_identical(tmp_path):
    x, _ = planted(seed=3)
    a, _ = fit_kmeans(x, 8, seed=7, batch_size=512)
    b, _ = fit_kmeans(x, 8, seed=7, batch_size=512)
    np.testing.assert_array_equal(a, b)
    mm = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    c, _ = fit_kmeans(mm, 8, seed=7, batch_size=512)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="fewer clusters"):
        fit_kmeans(x[:5], 8)


def test_saved_centroids_assign_like_brute_force(tmp_path):
    x, _ = planted(n=500, seed=1)
    centroids, _ = fit_kmeans(x, 6, seed=0, batch_size=128)
    save_centroids(tmp_path / "c.npy", centroids)
    loaded = load_centroids(tmp_path / "c.npy")
    np.testing.assert_array_equal(loaded, centroids)
    labels, dist = Assigner(loaded).assign(x, chunk=64)
    d2 = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d2.argmin(1))
    np.testing.assert_allclose(dist, d2.min(1), rtol=1e-3, atol=1e-3)


def test_quality_scores():
    from mtpf.teacher.quality import score_labels

    s = score_labels([["B-PER", "I-PER", "O", "B-LOC", "O"]], [[1, 1, 0, 2, 0]])
    assert s["entities"]["words"] == 3 and s["entities"]["purity"] == 1.0 and s["entities"]["v_measure"] == 1.0
    assert s["all"]["words"] == 5
    bad = score_labels([["B-PER", "B-LOC", "B-PER", "B-LOC"]], [[0, 0, 1, 1]])
    assert bad["entities"]["purity"] == 0.5 and bad["entities"]["v_measure"] < 1e-9


# -- corpora through `datasets`: Parquet, Arrow, text.gz, hub specs -------------------------------------------
def test_parquet_and_arrow_corpora_read_like_jsonl(tmp_path):
    import datasets

    rows = [{"text": "Apple Inc. earned $3.5 billion."}, {"text": ""}, {"text": "Second  line"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    toks = datasets.Dataset.from_list([{"tokens": ["New York", "is", "big"], "id": 1}])
    toks.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    stats = CorpusStats()
    sents = list(iter_sentences(corpus_files([tmp_path / "c.parquet", arrow]), stats))
    assert [s.words for s in sents] == [["Apple", "Inc", ".", "earned", "$", "3.5", "billion", "."],
                                        ["Second", "line"], ["New York", "is", "big"]]
    assert [s.line for s in sents] == [1, 3, 1] and stats.empty_lines == 1 and stats.words == 13
    datasets.Dataset.from_list([{"label": 3}]).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad.parquet: has none of the columns"):
        list(iter_sentences(corpus_files([tmp_path / "bad.parquet"])))


def test_text_gz_corpus(tmp_path):
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("Zürich is big.\n\nIt rains 3.5 days.\n")
    sents = list(iter_sentences(corpus_files([tmp_path / "c.txt.gz"])))
    assert [(s.line, s.words) for s in sents] == [(1, ["Zürich", "is", "big", "."]),
                                                   (3, ["It", "rains", "3.5", "days", "."])]


def test_hub_spec_parsing_and_a_missing_split_is_one_clear_line(monkeypatch):
    import datasets

    from mtpf.teacher.corpus import parse_hub_spec, resolve_hub_split

    assert parse_hub_spec("hub:numind/NuNER@full") == ("numind/NuNER", None, "full")
    assert parse_hub_spec("org/set:sub@train[:10%]") == ("org/set", "sub", "train[:10%]")
    assert corpus_files(["numind/NuNER@full", "hub:org/set:sub"]) == ["hub:numind/NuNER@full", "hub:org/set:sub"]
    calls = []
    monkeypatch.setattr(datasets, "get_dataset_split_names",
                        lambda name, subset=None: calls.append((name, subset)) or ["entity", "full"])
    assert resolve_hub_split("numind/NuNER@full") == "full" and not calls  # a named split needs no look-up
    with pytest.raises(DataError) as err:
        list(iter_sentences(corpus_files(["numind/NuNER"])))
    msg = str(err.value)
    assert "\n" not in msg and "entity, full" in msg and "numind/NuNER@SPLIT" in msg
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name, subset=None: ["only"])
    assert resolve_hub_split("org/set:sub") == "only"

    def offline(*a, **k):
        raise ConnectionError("no network\nmore detail")

    monkeypatch.setattr(datasets, "get_dataset_split_names", offline)
    with pytest.raises(DataError, match=r"cannot list the splits .*no network\); name one as org/set:sub@SPLIT"):
        resolve_hub_split("org/set:sub")


def test_hub_rows_are_streamed_by_record_batch(monkeypatch):
    import datasets

    table = datasets.Dataset.from_list([{"input": f"row {i} here", "output": "x"} for i in range(2500)])
    seen = {}

    def fake_load(name, subset=None, split=None, streaming=False):
        seen.update(name=name, subset=subset, split=split, streaming=streaming)
        return table.to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    sents = list(iter_sentences(corpus_files(["numind/NuNER@full"])))
    assert seen == {"name": "numind/NuNER", "subset": None, "split": "full", "streaming": True}
    assert len(sents) == 2500 and sents[-1].words == ["row", "2499", "here"] and sents[-1].line == 2500


# -- device path equals a plain reference ------------------------------------------------------------------------
def _reference_word_means(model, tok, sentences):
    """One sentence at a time, full attention, the mean of each word's sub-token vectors (no batching, padding,
    sinks or boundary-piece rule: a WordPiece teacher has none)."""
    out = []
    for words in sentences:
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
        wids = enc.word_ids()
        for w in range(len(words)):
            out.append(hidden[[i for i, x in enumerate(wids) if x == w]].mean(0))
    return torch.stack(out)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_batched_word_averaging_equals_a_per_sentence_reference(tmp_path, device):
    from mtpf.testing import make_tiny_encoder

    sents = [["The", "quick", "Kickbacks", "fox"], ["Obama", "visited", "Berlin", "and", "Paris"] * 4, ["Hi"],
             ["Apple", "Inc", ".", "reported", "AWB", "earnings"]] * 3
    teacher = Teacher.load(make_tiny_encoder(tmp_path / "bert", "bert"), device=device, dtype="float32",
                           batch_tokens=96)
    with torch.inference_mode():
        expected = _reference_word_means(teacher.model.cpu(), teacher.tokenizer, sents)
    teacher.model.to(device)
    got = teacher.embed(sents, on_device=True)
    assert got.device.type == device and got.shape == expected.shape
    torch.testing.assert_close(got.cpu(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_assignment_equals_sklearn_predict(device):
    from sklearn.cluster import KMeans

    x, _ = planted(n=4000, k=8, d=24, seed=3)
    km = KMeans(n_clusters=8, n_init=1, random_state=0).fit(x[:1000])
    labels, dist = Assigner(km.cluster_centers_, device=device).assign(torch.from_numpy(x).to(device), chunk=999)
    np.testing.assert_array_equal(labels, km.predict(x))
    np.testing.assert_allclose(dist, ((x - km.cluster_centers_[labels]) ** 2).sum(1), rtol=1e-4, atol=1e-4)


def test_plain_rust_tokenizer_is_used_only_where_it_matches_transformers(wordpiece):
    from mtpf.teacher.embed import _plain_backend

    class Shifted:  # a tokenizer whose Python layer changes what the Rust tokenizer gives
        backend_tokenizer = wordpiece.backend_tokenizer

        def __call__(self, *args, **kwargs):
            enc = wordpiece(*args, **kwargs)
            enc["input_ids"] = [[i + 1 for i in ids] for ids in enc["input_ids"]]
            return enc

    assert _plain_backend(wordpiece) is not None and _plain_backend(Shifted()) is None


def test_prefetched_chunks_keep_order_and_raise_reader_errors_in_order():
    from concurrent.futures import ThreadPoolExecutor

    from mtpf.teacher.label import _prefetched

    def chunks():
        yield [["a"]]
        yield [["b", "c"]]
        raise DataError("corpus.txt", 7, "not valid UTF-8")

    with ThreadPoolExecutor(1) as pool:
        it = _prefetched(chunks(), lambda c: sum(map(len, c)), pool)
        assert next(it) == ([["a"]], 1) and next(it) == ([["b", "c"]], 2)
        with pytest.raises(DataError, match="corpus.txt:7"):
            next(it)
    assert list(_prefetched(iter([[["x"]]]), None, None)) == [([["x"]], None)]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_vectorised_windows_equal_the_per_sentence_layout(kind, request):
    """Teacher.prepare lays out ordinary sentences with numpy over the whole chunk; every window (ids and word
    index per token) equals what the per-sentence path (_window) builds, boundary pieces included, and the
    sentences that need the per-sentence path (too long, a word without pieces) still take it."""
    tok = request.getfixturevalue(kind)
    enc = ContextFreeEncoder("roberta", tok.pad_token_id) if kind == "bpe" else ContextFreeEncoder()
    teacher = Teacher(enc, tok, max_length=12)
    sentences = [["Obama", "!", "zebra"], ["Kickbacks", "AWB", ".", "paid"], ["\u200b", "paid"], ["a"] * 14,
                 ["3.5", "!", "Zürich"], ["didn't", "go"], ["x"]]
    prep = teacher.prepare(sentences)
    bounds = np.cumsum(prep.lens) - prep.lens
    got = sorted((tuple(prep.ids[s:s + n]), tuple(prep.word_index[s:s + n])) for s, n in zip(bounds, prep.lens))
    want, base, n_long = [], 0, 0
    for words in sentences:
        e = tok(words, is_split_into_words=True, add_special_tokens=False)
        ids, wids = e["input_ids"], e.word_ids()
        if len(ids) <= teacher.max_length - teacher.n_special:
            full, windex, _ = teacher._window(ids, wids, base, [])
            want.append((tuple(full), tuple(windex)))
        else:
            n_long += 1
        base += len(words)
    assert n_long >= 1 and teacher.stats.windowed_sentences == n_long
    assert sorted(set(want) - set(got)) == [] and len(got) >= len(want) + 2 * n_long  # long ones: >= 2 windows
    assert prep.n_words == sum(map(len, sentences))
    if kind == "wordpiece":  # WordPiece gives the zero-width word no piece (byte-level BPE does)
        assert list(prep.missing.values()) == [[7]]  # sentence 3 starts at word 3 + 4


def test_a_none_word_id_sends_only_its_sentence_the_slow_way(wordpiece):
    """A None among the word ids (a piece of no word; not produced without special tokens, but a custom backend
    may) takes prepare's fallback flattening: that sentence goes the per-sentence way, every other sentence's
    windows are the same as without it."""
    from types import SimpleNamespace

    teacher = Teacher(ContextFreeEncoder(), wordpiece, max_length=12)
    if teacher._backend is None:
        pytest.skip("the tokenizer has no plain backend")
    sentences = [["Obama", "!", "zebra"], ["didn't", "go"], ["x", "paid"]]
    real = teacher._backend

    class WithNone:
        def encode_batch(self, *args, **kwargs):
            encs = real.encode_batch(*args, **kwargs)
            e = encs[1]
            encs[1] = SimpleNamespace(ids=[*e.ids, wordpiece.unk_token_id], word_ids=[*e.word_ids, None])
            return encs

    def windows(prep):
        bounds = np.cumsum(prep.lens) - prep.lens
        return sorted((tuple(prep.ids[s:s + n]), tuple(prep.word_index[s:s + n])) for s, n in zip(bounds, prep.lens))

    plain = windows(teacher.prepare(sentences))
    teacher._backend = WithNone()
    odd = windows(teacher.prepare(sentences))
    other = [w for w in plain if not set(w[1]) & {3, 4}]  # sentence 1 holds words 3 and 4
    assert len(other) == 2 and set(other) <= set(odd)
