"""Downstream adaptation and evaluation: LoRA targets, partial init, MTEB protocol, seqeval, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtpf.config import ConfigError
from mtpf.data.io import DataError


# ----------------------------------------------------------------------------------------------- LoRA targets
def _lora_modules(peft_model) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from mtpf.testing import make_tiny_encoder

    root = tmp_path_factory.mktemp("tiny-arch")
    return {a: make_tiny_encoder(root / a, a, layers=3) for a in ("bert", "distilbert", "roberta")}


EXPECTED_PARTS = {
    "bert": ["attention.self.query", "attention.self.key", "intermediate.dense", "output.dense"],
    "roberta": ["attention.self.query", "attention.self.key", "intermediate.dense", "output.dense"],
    "distilbert": ["attention.q_lin", "attention.k_lin", "ffn.lin1", "ffn.lin2"],
}


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_lora_targets_are_exactly_query_key_mlp_of_all_layers(tiny_models, arch):
    from mtpf.downstream.ner import NerConfig, build_lora
    from mtpf.encoder import load_encoder

    model, targets = build_lora(load_encoder(tiny_models[arch]), NerConfig())
    stack = "transformer.layer" if arch == "distilbert" else "encoder.layer"
    expected = {f"{stack}.{i}.{part}" for i in range(3) for part in EXPECTED_PARTS[arch]}
    assert _lora_modules(model) == expected == set(targets)
    if arch != "distilbert":  # the suffix trap: attention.output.dense must stay untouched
        assert not any("attention.output.dense" in n for n in _lora_modules(model))
    cfg = model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha) == (32, 64)
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def _save_ner_adapter(backbone: str, out: Path, layers: int = 1, rank: int = 32, alpha: int = 64,
                      safe: bool = True) -> dict:
    """A run-style task-primary ner adapter on the last ``layers`` layers, with random (non-zero) weights."""
    from mtpf.encoder import load_encoder
    from mtpf.lora import LoraSpec, add_task_adapters

    torch.manual_seed(123)
    enc = add_task_adapters(load_encoder(backbone), {"ner": LoraSpec(layers=layers, rank=rank, alpha=alpha)}, True)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if "lora_" in n:
                p.normal_()
    enc.save_pretrained(str(out), selected_adapters=["ner"], safe_serialization=safe)
    return {n.replace(".ner.", "."): p.detach().clone() for n, p in enc.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_partial_init_copies_covered_layers_and_leaves_the_rest_fresh(tiny_models, tmp_path, safe):
    from mtpf.downstream.ner import NerConfig, build_lora, init_from_adapter
    from mtpf.encoder import load_encoder

    saved = _save_ner_adapter(tiny_models["bert"], tmp_path / "ad", layers=1, safe=safe)
    folder = tmp_path / "ad" / "ner"
    assert (folder / ("adapter_model.safetensors" if safe else "adapter_model.bin")).is_file()
    cfg = NerConfig()
    torch.manual_seed(7)
    fresh, _ = build_lora(load_encoder(tiny_models["bert"]), cfg)
    torch.manual_seed(7)
    model, _ = build_lora(load_encoder(tiny_models["bert"]), cfg)
    covered = init_from_adapter(model, folder, cfg)
    assert covered == sorted(f"encoder.layer.2.{p}" for p in EXPECTED_PARTS["bert"])
    fresh_p = dict(fresh.named_parameters())
    n_copied = n_fresh = 0
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        if ".layer.2." in name:
            assert torch.equal(p, saved[name.replace(".default.", ".")]), name
            n_copied += 1
        else:
            assert torch.equal(p, fresh_p[name]), name
            n_fresh += 1
    assert n_copied == 8 and n_fresh == 16
    # the B matrices of fresh layers are zero (standard LoRA init): the adapter starts as the covered layers only
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if "lora_B" in n and ".layer.2." not in n)


def test_partial_init_rank_mismatch_is_a_clear_error(tiny_models, tmp_path):
    from mtpf.downstream.ner import NerConfig, build_lora, init_from_adapter
    from mtpf.encoder import load_encoder

    _save_ner_adapter(tiny_models["bert"], tmp_path / "ad", rank=8, alpha=16)
    model, _ = build_lora(load_encoder(tiny_models["bert"]), NerConfig())
    with pytest.raises(ConfigError, match="rank 8"):
        init_from_adapter(model, tmp_path / "ad" / "ner", NerConfig())


# ----------------------------------------------------------------------------------------------- MTEB protocol
LABELS = ["a", "b", "c", "a", "b", "a", "c", "c", "a", "b", "b", "a", "c", "a", "b", "c", "a", "a", "b", "c"]
# mteb 2.x AbsTaskClassification._undersample_data with seed 42, samples_per_label 2, experiments 0..2
EXPECTED = [[0, 17, 15, 1, 18, 2], [0, 10, 12, 17, 18, 2], [0, 13, 9, 10, 15, 6]]


def test_undersampling_matches_fixed_indices():
    from mtpf.downstream.tc import experiment_indices

    assert experiment_indices(LABELS, 2, 3, 42) == EXPECTED


def test_undersampling_matches_mteb_itself():
    pytest.importorskip("mteb")
    datasets = pytest.importorskip("datasets")
    from mteb.abstasks.classification import AbsTaskClassification

    from mtpf.downstream.tc import undersample

    class Fake:
        seed, samples_per_label, label_column_name = 42, 2, "label"

    ds = datasets.Dataset.from_dict({"label": LABELS})
    theirs, idxs = [], None
    for i in range(3):
        _, idxs, sel = AbsTaskClassification._undersample_data(Fake(), ds, i, idxs)
        theirs.append(sel)
    ours, o_idxs = [], None
    for _ in range(3):
        o_idxs, sel = undersample(LABELS, 2, 42, o_idxs)
        ours.append(sel)
    assert ours == theirs == EXPECTED
    assert o_idxs == idxs


def test_accuracy_is_one_on_a_separable_toy_set():
    from mtpf.downstream.tc import TCConfig, experiment_indices, run_protocol

    rng = np.random.default_rng(0)
    centers = np.eye(4, 16) * 10
    y_train = np.repeat(np.arange(4), 30)
    y_test = np.repeat(np.arange(4), 10)
    x_train = centers[y_train] + rng.normal(0, 0.5, (len(y_train), 16))
    x_test = centers[y_test] + rng.normal(0, 0.5, (len(y_test), 16))
    cfg = TCConfig()
    exps = experiment_indices(list(y_train), 8, cfg.n_experiments, 42)
    assert all(len(e) == 32 for e in exps)
    res = run_protocol(x_train, y_train, x_test, y_test, exps, cfg, 42)
    assert res["accuracy"] == 1.0 and res["f1"] == 1.0 and res["n_experiments"] == 10
    full = run_protocol(x_train, y_train, x_test, y_test, experiment_indices(list(y_train), None, 10, 42), cfg, 42)
    assert full["n_experiments"] == 1 and full["accuracy"] == 1.0


def test_samples_per_label_defaults():
    from mtpf.downstream.tc import TCConfig, default_samples_per_label

    assert default_samples_per_label("banking77") == 8
    assert default_samples_per_label("emotion") == 16
    assert default_samples_per_label("amazon_counterfactual_en") == 32
    assert default_samples_per_label("tweet_sentiment_extraction") == 32
    assert TCConfig(samples_per_label="4").samples_for("emotion") == 4
    assert TCConfig(samples_per_label="full").samples_for("emotion") is None
    with pytest.raises(ConfigError):
        TCConfig(samples_per_label="zero")


def test_samples_per_label_defaults_match_every_english_mteb_classification_task():
    """`auto` must give each MTEB task mteb's own samples_per_label, or its score is not MTEB's."""
    mteb = pytest.importorskip("mteb")
    from mtpf.downstream.tc import default_samples_per_label

    tasks = mteb.get_tasks(task_types=["Classification"], languages=["eng"], exclude_superseded=False)
    assert len(tasks) > 50
    wrong = {t.metadata.name: (t.samples_per_label, default_samples_per_label(t.metadata.name)) for t in tasks
             if t.samples_per_label != default_samples_per_label(t.metadata.name)}
    assert wrong == {}  # name: (mteb's, ours)


# ----------------------------------------------------------------------------------------------- seqeval
def test_seqeval_f1_equals_hand_computed_value():
    from mtpf.downstream.ner import seqeval_scores

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-PER", "B-MISC", "O"]]
    # gold entities: PER(0-1) LOC(3) ORG(0) MISC(2-3) = 4; predicted: PER(0-1) ORG(3) ORG(0) PER(1) MISC(2) = 5
    # correct: PER(0-1), ORG(0) = 2  ->  P = 2/5, R = 2/4, F1 = 2PR/(P+R) = 4/9
    s = seqeval_scores(gold, pred)
    assert s["precision"] == pytest.approx(0.4)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(4 / 9)
    # conlleval-compatible (default) mode: an I- tag after O opens an entity
    assert seqeval_scores([["O", "B-PER"]], [["O", "I-PER"]])["f1"] == 1.0


# ----------------------------------------------------------------------------------------------- windows, batching
def test_long_sentences_are_windowed_and_every_word_is_labelled_once(tiny_bert):
    from mtpf.downstream.ner import encode_ner
    from mtpf.encoder import load_tokenizer

    tok = load_tokenizer(tiny_bert)
    words = [f"word{i}" for i in range(60)] + ["Berlin"]
    tags = [i % 3 for i in range(len(words))]
    enc = encode_ner(tok, [words, ["short", "one"]], [tags, [1, 2]], max_length=16)
    assert enc.n_windowed == 1
    assert all(len(ids) <= 16 for ids in enc.ids)
    covered = [w for piece, s in zip(enc.words, enc.sentence) if s == 0 for w in piece]
    assert covered == list(range(len(words)))
    for ids, labels, ws, s in zip(enc.ids, enc.labels, enc.words, enc.sentence):
        kept = [x for x in labels if x != -100]
        assert kept == [([tags, [1, 2]][s])[w] for w in ws]


def test_bucket_batches_cover_every_example_once():
    from mtpf.downstream.ner import bucket_batches

    batches = bucket_batches(list(range(100)), 8, np.random.default_rng(0), window=2)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(100)) and max(len(b) for b in batches) == 8


# ----------------------------------------------------------------------------------------------- bad input
def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_missing_split_is_reported(tmp_path):
    from mtpf.downstream.data import load_cls_dataset, load_ner_dataset

    _write(tmp_path / "ner" / "train.jsonl", [{"tokens": ["Paris"], "tags": ["B-LOC"]}])
    with pytest.raises(DataError, match="no test split"):
        load_ner_dataset(str(tmp_path / "ner"))
    _write(tmp_path / "cls" / "test.jsonl", [{"text": "x", "label": "a"}])
    with pytest.raises(DataError, match="no train split"):
        load_cls_dataset(str(tmp_path / "cls"))


def test_unknown_tag_scheme_is_reported_with_line(tmp_path):
    from mtpf.downstream.data import load_ner_dataset

    _write(tmp_path / "train.jsonl", [{"tokens": ["Paris"], "tags": ["B-LOC"]},
                                      {"tokens": ["New", "York"], "tags": ["B-LOC", "E-LOC"]}])
    _write(tmp_path / "test.jsonl", [{"tokens": ["Paris"], "tags": ["B-LOC"]}])
    with pytest.raises(DataError, match=r"train.jsonl:2: .*BIOES"):
        load_ner_dataset(str(tmp_path))
    _write(tmp_path / "train.jsonl", [{"tokens": ["Paris"], "tags": ["LOC"]}])
    with pytest.raises(DataError, match="unknown tag 'LOC'"):
        load_ner_dataset(str(tmp_path))


def test_label_seen_only_in_test_is_reported(tmp_path):
    from mtpf.downstream.data import load_cls_dataset, load_ner_dataset

    _write(tmp_path / "n" / "train.jsonl", [{"tokens": ["Paris"], "tags": ["B-LOC"]}])
    _write(tmp_path / "n" / "test.jsonl", [{"tokens": ["Obama"], "tags": ["B-PER"]}])
    with pytest.raises(DataError, match=r"\['PER'\] occur in test but never in train"):
        load_ner_dataset(str(tmp_path / "n"))
    assert load_ner_dataset(str(tmp_path / "n"), allow_unseen_labels=True).labels == ["O", "B-LOC", "I-LOC"]
    _write(tmp_path / "c" / "train.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    _write(tmp_path / "c" / "test.jsonl", [{"text": "z", "label": "c"}])
    with pytest.raises(DataError, match=r"\['c'\] occur in test"):
        load_cls_dataset(str(tmp_path / "c"))


def test_long_texts_are_truncated_and_counted(tiny_bert):
    from mtpf.downstream.embed import encode_texts
    from mtpf.encoder import load_encoder, load_tokenizer

    tok, enc = load_tokenizer(tiny_bert), load_encoder(tiny_bert)
    texts = ["short text", "a much longer text " * 100, "medium sized text here"]
    emb, truncated = encode_texts(enc, tok, texts, max_length=32, batch_size=2, normalize=True)
    assert emb.shape == (3, 32) and truncated.tolist() == [False, True, False]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # batching by length does not change the embeddings
    one, _ = encode_texts(enc, tok, texts[:1], max_length=32, batch_size=1, normalize=True)
    assert np.allclose(one[0], emb[0], atol=1e-5)


def test_embedding_cache_encodes_each_text_once(tmp_path):
    from mtpf.downstream.embed import EmbeddingCache

    calls = []

    def compute(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32), np.zeros(len(texts), dtype=bool)

    c = EmbeddingCache(tmp_path, "m", "d")
    out = c.get(["aa", "b", "aa"], compute)
    assert calls == [["aa", "b"]] and out[:, 0].tolist() == [2, 1, 2]
    c2 = EmbeddingCache(tmp_path, "m", "d")
    assert c2.get(["b", "ccc"], compute)[:, 0].tolist() == [1, 3]
    assert calls[-1] == ["ccc"]
    assert EmbeddingCache(tmp_path, "m", "d").get(["ccc", "aa"], compute)[:, 0].tolist() == [3, 2]
    assert len(calls) == 2


def test_embedding_cache_counts_truncation_per_requested_texts(tmp_path):
    from mtpf.downstream.embed import EmbeddingCache

    def compute(texts):  # texts longer than 3 characters count as truncated
        return np.ones((len(texts), 2), np.float32), np.array([len(t) > 3 for t in texts])

    c = EmbeddingCache(tmp_path, "m", "d")
    c.get(["long text", "ab", "another long one"], compute)
    assert c.truncated_among(["ab"]) == 0 and c.truncated_among(["long text", "ab", "long text"]) == 1
    again = EmbeddingCache(tmp_path, "m", "d")  # flags survive the disk
    assert again.truncated_among(["long text", "another long one", "ab"]) == 2


def test_bad_model_and_fraction_are_config_errors(tmp_path):
    from mtpf.downstream.data import subsample
    from mtpf.downstream.models import resolve

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither run.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ConfigError):
        subsample(10, 1.5, 0)
    assert subsample(10, 0.3, 0) == subsample(10, 0.3, 0) and len(subsample(10, 0.3, 0)) == 3


def test_packaged_model_resolves_like_sentence_transformers():
    from mtpf.downstream.models import resolve

    m = resolve("packaged")
    assert m.kind == "sentence-transformers" and m.normalize and m.st_max_length == 256
    assert resolve("packaged", normalize="false").normalize is False


def test_a_sentence_transformers_folder_keeps_its_token_limit_and_its_own_tc_cells(tiny_bert, tmp_path):
    """sentence-transformers >= 5 keeps max_seq_length in the tokenizer config, not sentence_bert_config.json:
    it is still the limit mtpf embeds with; and two folders with the same weights but other limits are not one
    TC cell (the second reused the first's embeddings and replaced its cell)."""
    from sentence_transformers import SentenceTransformer

    from mtpf.downstream.data import load_cls_dataset
    from mtpf.downstream.models import resolve, st_max_length
    from mtpf.downstream.suite import SuiteConfig, build_cells
    import warnings

    from mtpf.downstream.tc import Embedder, TCConfig
    from mtpf.testing import make_tiny_sentence_transformer as st_folder

    short, long_ = st_folder(tiny_bert, tmp_path / "st40", 40), st_folder(tiny_bert, tmp_path / "st64", 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mean pooling as sentence-transformers >= 5 writes it: no warning
        resolve(short)
    from sentence_transformers import SentenceTransformer as ST
    from mtpf.pretrain.export import st_module_classes

    Transformer, Pooling, _ = st_module_classes()
    ST(modules=[Transformer(tiny_bert), Pooling(32, pooling_mode="cls")], device="cpu").save(  # hidden size 32
        str(tmp_path / "cls-pooled"))
    with pytest.warns(UserWarning, match="not mean pooling"):
        resolve(str(tmp_path / "cls-pooled"))
    assert SentenceTransformer(short, device="cpu").max_seq_length == 40  # what sentence-transformers applies
    assert st_max_length(short) == 40 and resolve(short).st_max_length == 40 and resolve(long_).st_max_length == 64
    assert st_max_length(tmp_path) is None  # not a sentence-transformers folder
    cls = tmp_path / "cls"
    cls.mkdir()
    for split in ("train", "test"):
        (cls / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2}) + "\n"
                                                    for i in range(8)))
    models = [resolve(short, "short"), resolve(long_, "long")]
    cfg = SuiteConfig(models=[("short", short), ("long", long_)], output=str(tmp_path / "ev"), cls=[str(cls)])
    cells = build_cells(cfg, models, [], [(str(cls), load_cls_dataset(str(cls)))])
    assert models[0].fingerprint("tc") == models[1].fingerprint("tc") and len({c.key for c in cells}) == 2
    caches = [Embedder(m, TCConfig(), str(tmp_path / "cache")).embed_config() for m in models]
    assert caches[0] != caches[1]


def test_a_hub_sentence_transformers_model_is_read_as_one(tiny_bert, tmp_path, monkeypatch):
    """A hub name of a sentence-transformers model: its normalisation and token limit come from its ST files (the
    cached snapshot offline; only those small files fetched online), as for a local folder or 'packaged' (it was
    read as a plain model: raw embeddings at 512 tokens offline); a run pre-finetuned from it keeps that limit."""
    import huggingface_hub
    import huggingface_hub.constants

    from mtpf.downstream import models
    from mtpf.pretrain.export import source_max_length
    from mtpf.testing import make_tiny_sentence_transformer

    repo = tmp_path / "hub" / "models--org--tiny-st"
    snap = repo / "snapshots" / "abc"
    make_tiny_sentence_transformer(tiny_bert, snap, 40)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = models.resolve("org/tiny-st")
    assert (m.kind, m.normalize, m.st_max_length, m.backbone) == ("sentence-transformers", True, 40, str(snap))
    assert source_max_length("org/tiny-st") == 40
    fetched = []  # online: the small files only; the weights load by name

    def snapshot_download(name, allow_patterns):
        fetched.append((name, allow_patterns))
        return str(snap)

    monkeypatch.setattr(models, "resolve_model", lambda ref: ref)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    m = models.resolve("org/tiny-st")
    assert (m.kind, m.backbone, m.normalize, m.st_max_length) == ("hf", "org/tiny-st", True, 40)
    assert fetched == [("org/tiny-st", models.ST_FILES)]


# ----------------------------------------------------------------------------------------------- tables
def test_tables_follow_the_paper_layout(tmp_path):
    from mtpf.downstream.tables import build_tables, to_markdown, write_outputs

    def cell(model, task, ds, score, frac=1.0, seed=42):
        metric = "f1" if task == "ner" else "accuracy"
        return {"key": f"{model}{task}{ds}{frac}{seed}", "model": model, "task": task, "dataset": ds,
                "fraction": frac, "seed": seed, "main_score": score, "metrics": {metric: score},
                "selection": "dev", "samples_per_label": 8, "n_experiments": 10}

    cells = [cell("Base model", "ner", "conll2003", 0.887), cell("Base model", "tc", "banking77", 0.588),
             cell("Base model", "tc", "emotion", 0.298),
             cell("PF for TC", "ner", "conll2003", 0.873), cell("PF for TC", "tc", "banking77", 0.795),
             cell("PF for TC", "tc", "emotion", 0.402), cell("Base model", "ner", "conll2003", 0.665, 0.1),
             cell("PF for TC", "ner", "conll2003", 0.6, 0.1)]
    tables = build_tables(cells, ["Base model", "PF for TC"], "Base model")
    summary = tables[0]
    assert summary.header == ["Model", "NER (1 DS)", "TC (2 DS)", "Average"]
    assert summary.rows[0] == ["Base model", "88.7", "44.3", "66.5"]
    assert summary.rows[1] == ["PF for TC", "87.3-1.4", "59.9+15.6", "73.6+7.1"]
    md = to_markdown(tables)
    assert "| Bank. | Emo. | Avg. |" in md and "Data Portion" in md and "| 10% | PF for TC | 60.0 | 60.0 |" in md
    # Table 11 bolds the best row of each data portion, not the 100% row everywhere
    assert "| 100% | Base model | **88.7** | **88.7** |" in md and "| 10% | Base model | **66.5** | **66.5** |" in md
    paths = write_outputs(cells, ["Base model", "PF for TC"], "Base model", tmp_path)
    assert all(Path(p).stat().st_size > 0 for p in paths.values())
    assert Path(paths["chart"]).read_bytes()[:4] == b"\x89PNG"


def test_a_hub_datasets_fingerprint_follows_its_rows():
    """Hub datasets key their cells by what was read (datasets' own fingerprint is private): the same rows give
    the same fingerprint, one changed row another."""
    from mtpf.downstream.data import ClsSplit, NerSplit, _hub_result

    def splits(tag="B-PER", label="card"):
        return {"train": NerSplit([["Obama", "spoke"]], [[tag, "O"]], "x"),
                "test": NerSplit([["Paris"]], [["B-LOC"]], "x")}, \
            {"train": ClsSplit(["lost my card"], [label], "y"), "test": ClsSplit(["rate"], ["rate"], "y")}

    (ner, cls), (ner2, cls2) = splits(), splits("B-ORG", "fee")
    fp = _hub_result("org/ner", ["train", "test"], ner)[1]
    assert fp.startswith("sha256:") and fp == _hub_result("org/ner", ["train", "test"], splits()[0])[1]
    assert fp != _hub_result("org/ner", ["train", "test"], ner2)[1]
    assert fp != _hub_result("org/other", ["train", "test"], ner)[1]
    assert _hub_result("org/cls", [], cls)[1] != _hub_result("org/cls", [], cls2)[1]
