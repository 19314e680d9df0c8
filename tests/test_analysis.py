"""mtpf.analysis: entity perturbation (Fig. 5), Findings 1-2 (Fig. 3), Tracker, plots, `mtpf analyze`."""

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from mtpf.analysis.perturb import (
    entity_pool,
    entity_spans,
    make_variants,
    perturb_sentence,
    read_ner_sentences,
    sentence_rng,
)
from mtpf.analysis.similarity import (
    mean_pairwise_cosine,
    perturbation_similarity,
    sentence_embedder,
    token_embedder,
    token_homogeneity,
)
from mtpf.cli import main as cli_main
from mtpf.data.io import DataError

TOY_NER = [
    (
        ["Obama", "visited", "New", "York", "City", "on", "Monday", "."],
        ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O", "O", "O"],
    ),
    (["Angela", "Merkel", "met", "Obama", "in", "Berlin"], ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC"]),
    (
        ["Apple", "Inc.", "opened", "a", "store", "in", "Paris", "."],
        ["B-ORG", "I-ORG", "O", "O", "O", "O", "B-LOC", "O"],
    ),
    (["the", "weather", "was", "nice"], ["O", "O", "O", "O"]),
    (
        ["Google", "hired", "Marc", "Cohen", "from", "the", "European", "Union"],
        ["B-ORG", "O", "B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG"],
    ),
    (["Brno", "and", "UK", "are", "places"], ["B-LOC", "O", "B-LOC", "O", "O"]),
    (["ok"], ["O"]),
]


def write_ner(folder: Path, rows=TOY_NER, split="test") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.jsonl", "w") as f:
        for toks, tags in rows:
            f.write(json.dumps({"tokens": toks, "tags": tags}) + "\n")
    return folder


# ----------------------------------------------------------------------------------------------- perturbation
def test_entity_spans_read_iob2_iob1_and_bioes_alike():
    want = [(0, 2, "PER"), (2, 3, "PER"), (4, 7, "LOC")]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-LOC", "I-LOC"]
    bioes = ["B-PER", "E-PER", "S-PER", "O", "B-LOC", "I-LOC", "E-LOC"]
    bilou = ["B-PER", "L-PER", "U-PER", "O", "B-LOC", "I-LOC", "L-LOC"]
    for tags in (iob2, iob1, bioes, bilou):
        assert entity_spans(tags) == want
    assert entity_spans(["B-PER", "I-LOC"]) == [(0, 1, "PER"), (1, 2, "LOC")]  # type change opens a new span


def test_unknown_tags_raise_with_file_and_line(tmp_path):
    folder = write_ner(tmp_path / "bad", [(["a", "b"], ["O", "O"]), (["x", "y"], ["O", "PERSON"])])
    with pytest.raises(DataError, match=r"test\.jsonl:2: unknown tag 'PERSON'"):
        read_ner_sentences(folder)
    write_ner(tmp_path / "bad2", [(["a", "b"], ["O"])])
    with pytest.raises(DataError, match=r":1: 2 tokens but 1 tags"):
        read_ner_sentences(tmp_path / "bad2")
    with pytest.raises(DataError, match="no test.jsonl"):
        read_ner_sentences(tmp_path)


def _check_variant(tokens, spans, var, pool):
    """Length, untouched O words, same-type replacement from the pool."""
    old_len = sum(e - s for s, e, _ in spans)
    new_len = sum(len(new) for _, new in var.replacements)
    assert len(var.tokens) == len(tokens) - old_len + new_len == len(var.tags)
    assert [r[0] for r in var.replacements] == sorted(spans)
    # walk both sentences: O words identical and in place, each span replaced by its new words
    pos = out = 0
    for (s, e, typ), new in var.replacements:
        assert var.tokens[out : out + s - pos] == tokens[pos:s]
        assert var.tags[out : out + s - pos] == ["O"] * (s - pos)
        out += s - pos
        assert tuple(var.tokens[out : out + len(new)]) == new and new in pool[typ]
        assert var.tags[out : out + len(new)] == [f"B-{typ}"] + [f"I-{typ}"] * (len(new) - 1)
        if len(pool[typ]) > 1:
            assert new != tuple(tokens[s:e])
        out += len(new)
        pos = e
    assert var.tokens[out:] == tokens[pos:]
    assert [t for _, _, t in entity_spans(var.tags)] == [t for _, _, t in sorted(spans)]


def test_perturbation_keeps_o_words_lengths_and_is_seeded(tmp_path):
    data = read_ner_sentences(write_ner(tmp_path / "toy"))
    pool = entity_pool(data)
    assert pool["PER"] == [("Obama",), ("Angela", "Merkel"), ("Marc", "Cohen")]
    kept, variants = make_variants(data, n_variants=4, seed=3)
    assert kept == [0, 1, 2, 4, 5]  # sentences without entities are skipped
    for i, vs in zip(kept, variants):
        assert len(vs) == 4
        for v in vs:
            _check_variant(data.tokens[i], data.spans[i], v, pool)
    again = make_variants(data, n_variants=4, seed=3)[1]
    assert [[v.tokens for v in vs] for vs in again] == [[v.tokens for v in vs] for vs in variants]
    other = make_variants(data, n_variants=4, seed=4)[1]
    assert [[v.tokens for v in vs] for vs in other] != [[v.tokens for v in vs] for vs in variants]
    # a sentence's variants do not depend on which other sentences are perturbed
    assert [v.tokens for v in make_variants(data, [4], 4, seed=3)[1][0]] == [v.tokens for v in variants[3]]


def test_single_form_pool_keeps_the_entity():
    var = perturb_sentence(["Zed", "runs"], [(0, 1, "PER")], {"PER": [("Zed",)]}, random.Random(0))
    assert var.tokens == ["Zed", "runs"]


def test_replacements_are_uniform_over_the_other_forms():
    pool = {"LOC": [("A",), ("B",), ("C",), ("D",)]}
    counts = {}
    for k in range(3000):
        new = perturb_sentence(["B"], [(0, 1, "LOC")], pool, sentence_rng(0, k, 0)).tokens[0]
        counts[new] = counts.get(new, 0) + 1
    assert "B" not in counts and set(counts) == {"A", "C", "D"}
    assert all(800 < c < 1200 for c in counts.values())


def test_perturbation_on_conll_test(shared_data):
    data = read_ner_sentences(shared_data / "ner" / "conll2003")
    pool = entity_pool(data)
    assert set(pool) == {"PER", "LOC", "ORG", "MISC"}
    kept, variants = make_variants(data, list(range(300)), 4, seed=0)
    for i, vs in zip(kept, variants):
        for v in vs:
            _check_variant(data.tokens[i], data.spans[i], v, pool)


# ----------------------------------------------------------------------------------------------- metrics
def test_homogeneity_identical_is_one_and_orthogonal_is_zero():
    same = lambda sents: [torch.ones(len(s), 8) * 3.0 for s in sents]  # noqa: E731
    ortho = lambda sents: [torch.eye(8)[: len(s)] for s in sents]  # noqa: E731
    sents = [["a", "b", "c"], ["d", "e"], ["f"], list("abcdefgh")]
    assert token_homogeneity(same, sents) == pytest.approx(1.0, abs=1e-9)
    assert token_homogeneity(ortho, sents) == pytest.approx(0.0, abs=1e-9)
    x = torch.randn(6, 5)
    brute = torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1)
    iu = torch.triu_indices(6, 6, 1)
    assert mean_pairwise_cosine(x) == pytest.approx(float(brute[iu[0], iu[1]].mean()), abs=1e-6)
    assert mean_pairwise_cosine(x[:1]) is None


class FakeEncoder(nn.Module):
    """Every real token gets the same vector (or one orthogonal vector per position); special tokens get
    ``-1`` everywhere, so including them would break both results."""

    def __init__(self, mode: str, special_ids, hidden=64):
        super().__init__()
        self.mode, self.special_ids, self.hidden = mode, set(special_ids), hidden
        self.dummy = nn.Parameter(torch.zeros(1))
        self.dropout = nn.Dropout(0.5)

    def forward(self, input_ids, attention_mask, **_):
        b, t = input_ids.shape
        if self.mode == "same":
            h = torch.ones(b, t, self.hidden)
        else:
            h = torch.eye(self.hidden)[:t].expand(b, t, self.hidden).clone()
        special = torch.tensor([[i in self.special_ids for i in row] for row in input_ids.tolist()])
        h[special] = -1.0
        h[attention_mask == 0] = 5.0  # padding: must be ignored too
        return type("Out", (), {"last_hidden_state": h + self.dummy})()


def test_homogeneity_of_a_model_excludes_special_tokens_and_padding(tiny_bert):
    from mtpf.encoder import load_tokenizer

    tok = load_tokenizer(tiny_bert)
    sents = [
        ["Obama", "visited", "Berlin"],
        ["a", "much", "longer", "sentence", "about", "New", "York"],
        ["x"],
    ]
    for mode, want in (("same", 1.0), ("ortho", 0.0)):
        model = FakeEncoder(mode, tok.all_special_ids)
        assert token_homogeneity(token_embedder(model, tok, batch_size=2), sents) == pytest.approx(
            want, abs=1e-6
        )
    # the embedder returns exactly the real tokens of each sentence
    embs = token_embedder(FakeEncoder("same", tok.all_special_ids), tok)(sents)
    assert [e.shape[0] for e in embs] == [
        len(tok(s, is_split_into_words=True, add_special_tokens=False)["input_ids"]) for s in sents
    ]


def test_perturbation_similarity_from_embeddings():
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}
    embed = lambda sents: torch.tensor([vecs[s[0]] for s in sents])  # noqa: E731
    originals = [["a"], ["b"], ["a"]]
    variants = [[["a"], ["b"]], [["c"]], []]  # the last has no variant: ignored
    want = ((1 + 0) / 2 + 2**-0.5) / 2
    assert perturbation_similarity(embed, originals, variants) == pytest.approx(want)
    assert perturbation_similarity(embed, [["a"]], [[]]) != perturbation_similarity(
        embed, [["a"]], [[]]
    )  # nan


def test_sentence_embedder_matches_mean_pool_of_a_plain_forward(tiny_bert):
    from mtpf.encoder import load_encoder, load_tokenizer, mean_pool

    model, tok = load_encoder(tiny_bert).eval(), load_tokenizer(tiny_bert)
    texts = ["Obama visited Berlin", "a b", "New York City is big and loud tonight"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
    got = sentence_embedder(model, tok, batch_size=2)([t.split() for t in texts])
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(sentence_embedder(model, tok)(texts), want, atol=1e-5)  # plain strings too


# ----------------------------------------------------------------------------------------------- Tracker
def _tiny_tpl(tiny_bert):
    from mtpf.encoder import load_encoder
    from mtpf.lora import LoraSpec, add_task_adapters

    model = add_task_adapters(
        load_encoder(tiny_bert),
        {"ner": LoraSpec(layers=1, rank=4), "tc": LoraSpec(layers=1, rank=4)},
        train_backbone=True,
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B.tc." in name:
                p.normal_(0, 0.5)  # LoRA B starts at zero: make the tc adapter change something
    return model


def test_tracker_measures_backbone_and_adapters_and_restores_training_mode(tiny_bert, tmp_path):
    from mtpf.analysis.track import Tracker
    from mtpf.encoder import load_tokenizer

    tracker = Tracker(write_ner(tmp_path / "toy"), sentences=5, variants=3, seed=0, batch_size=4)
    assert tracker.info["perturbed_sentences"] == 5 and tracker.info["homogeneity_sentences"] == 5
    assert all(len(vs) == 3 for vs in tracker.variants)
    model, tok = _tiny_tpl(tiny_bert), load_tokenizer(tiny_bert)
    model.train()
    frozen = model.base_model.model.embeddings
    frozen.eval()  # a submodule's own mode must come back as it was
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    res = tracker.measure(model, tok, {"tc": "tc", "ner": "ner"})
    assert model.training and not frozen.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    assert all(p.grad is None for p in model.parameters())
    assert set(res) == {
        "perturbed_cosine",
        "token_homogeneity",
        "perturbed_cosine@tc",
        "token_homogeneity@tc",
        "perturbed_cosine@ner",
        "token_homogeneity@ner",
    }
    assert all(-1 <= v <= 1 for v in res.values())
    assert res["perturbed_cosine@ner"] == pytest.approx(res["perturbed_cosine"])  # ner LoRA B is still zero
    assert res["token_homogeneity@tc"] != pytest.approx(res["token_homogeneity"])
    assert tracker.measure(model, tok, {"tc": "tc", "ner": "ner"}) == res  # deterministic (eval: no dropout)
    # with no adapter the backbone alone runs, and equals the bare encoder's numbers
    bare = model.get_base_model()
    with model.disable_adapter():
        assert tracker.measure(bare, tok) == pytest.approx(
            {k: res[k] for k in ("perturbed_cosine", "token_homogeneity")}
        )
    with pytest.raises(ValueError, match="adapter 'nope'"):
        tracker.measure(model, tok, {"x": "nope"})


def test_tracker_accepts_the_pretrain_model_wrapper(tiny_bert, tmp_path):
    from mtpf.analysis.track import Tracker
    from mtpf.encoder import load_tokenizer
    from mtpf.pretrain.model import MultiTaskEncoder

    tracker = Tracker(write_ner(tmp_path / "toy"), sentences=4, variants=2)
    wrapped = MultiTaskEncoder(_tiny_tpl(tiny_bert), 7, {"ner": "ner", "tc": "tc"})
    res = tracker.measure(wrapped, load_tokenizer(tiny_bert), wrapped.adapters)
    assert "perturbed_cosine@tc" in res


# ----------------------------------------------------------------------------------------------- CLI + plots
def _fake_run(tmp_path, tiny_bert) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_bert, run / "backbone")
    model = _tiny_tpl(tiny_bert)
    model.save_pretrained(str(run / "adapters"), selected_adapters=["ner", "tc"])
    # PEFT writes the first adapter at the root and others under their name: normalise to adapters/NAME
    (run / "adapters" / "ner").mkdir(exist_ok=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if (run / "adapters" / f).exists():
            shutil.move(str(run / "adapters" / f), str(run / "adapters" / "ner" / f))
    (run / "run.json").write_text('{"format": "mtpf-run/1"}')  # a finished run
    return run


def test_cli_measures_a_run_folder(tiny_bert, tmp_path, capsys):
    run = _fake_run(tmp_path, tiny_bert)
    assert (run / "adapters" / "tc" / "adapter_config.json").is_file()
    data = write_ner(tmp_path / "toy")
    out = tmp_path / "res.json"
    assert (
        cli_main(["analyze", str(run), "--ner-data", str(data), "--sentences", "6", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "(backbone)" in printed and "tc" in printed
    res = json.loads(out.read_text())
    assert {"perturbed_cosine", "token_homogeneity", "perturbed_cosine@tc", "token_homogeneity@ner"} <= set(
        res
    )
    # options before MODEL work too; --adapter narrows the adapters
    assert (
        cli_main(
            [
                "analyze",
                "--sentences",
                "3",
                str(run),
                "--ner-data",
                str(data),
                "--adapter",
                "tc",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert "perturbed_cosine@tc" in res and "perturbed_cosine@ner" not in res
    assert res["data"]["perturbed_sentences"] == 3
    assert cli_main(["analyze", str(run), "--ner-data", str(data), "--adapter", "xx"]) == 2  # ConfigError
    assert cli_main(["analyze", str(run), "--ner-data", str(tmp_path / "missing")]) == 2  # DataError


def _write_log(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_figure3_from_run_folders(tmp_path):
    runs = []
    for strategy, slope in (("ner", 0.01), ("tc", -0.01)):
        run = tmp_path / f"run-{strategy}"
        (run / "logs").mkdir(parents=True)
        (run / "pretrain_config.json").write_text(json.dumps({"strategy": strategy}))
        _write_log(
            run / "logs" / "analysis.jsonl",
            [
                {
                    "step": s,
                    "perturbed_cosine": 0.5 + slope * s,
                    "token_homogeneity": 0.4 - slope * s,
                    "perturbed_cosine@tc": 0.6,
                }
                for s in (0, 10, 20)
            ],
        )
        _write_log(
            run / "logs" / "metrics.jsonl", [{"step": s, f"loss_{strategy}": 3.0 / (s + 1)} for s in (10, 20)]
        )
        runs.append(str(run))
    with open(Path(runs[0]) / "logs" / "analysis.jsonl", "a") as f:
        f.write('{"step": 30, "perturbed_co')  # torn last line of a killed run: ignored
    out = tmp_path / "fig3.png"
    assert cli_main(["analyze", "plot", *runs, "--out", str(out), "--losses"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["analyze", "plot", *runs, "--out", str(out), "--adapter", "tc"]) == 0
    from mtpf.analysis.plots import _labels

    assert _labels([Path(r) for r in runs]) == ["ner", "tc"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["analyze", "plot", str(empty), "--out", str(out)]) == 2


def test_depth_plot_reads_losses_and_downstream_results(tmp_path, capsys):
    from mtpf.analysis.plots import depth_summary

    sweep = tmp_path / "sweep"
    for n, ner, tc in ((1, 0.80, 0.60), (2, 0.78, 0.64)):
        run = sweep / f"layers-{n}"
        _write_log(
            run / "logs" / "metrics.jsonl",
            [{"step": s, "loss_ner": 2.0 / s / n, "loss_tc": 1.0 / s} for s in (1, 2, 3, 4)],
        )
        (run / "eval").mkdir()
        # results.json keeps every cell it ever held: an older run of the same slot (here first) must not count
        cells = [{"model": "m", "task": "ner", "dataset": "a", "fraction": 1.0, "main_score": 0.1, "seed": 1}]
        cells += [
            {"model": "m", "task": "ner", "dataset": d, "fraction": 1.0, "main_score": ner + k * 0.02, "seed": 1}
            for k, d in enumerate(["a", "b"])
        ]
        cells += [
            {"model": "m", "task": "tc", "dataset": "c", "fraction": 1.0, "main_score": tc, "seed": 1},
            {"model": "m", "task": "ner", "dataset": "a", "fraction": 0.1, "main_score": 0.1, "seed": 1},
        ]
        (run / "eval" / "results.json").write_text(json.dumps({"format": "mtpf-eval/1", "cells": cells}))
    summary = depth_summary(sweep)["layers"]
    assert summary["1"]["downstream"] == pytest.approx({"ner": 81.0, "tc": 60.0})
    assert summary["2"]["final_loss_ner"] == pytest.approx(0.25)
    out = tmp_path / "fig4.png"
    assert cli_main(["analyze", "depth-plot", str(sweep), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "81.0" in capsys.readouterr().out
    # bad files: one line naming the file, exit 2
    (sweep / "downstream.json").write_text("[1, 2]")
    assert cli_main(["analyze", "depth-plot", str(sweep), "--out", str(out)]) == 2
    assert "downstream.json: must hold a JSON object" in capsys.readouterr().err
    (sweep / "downstream.json").write_text(json.dumps({"1": {"ner": "abc"}}))
    assert cli_main(["analyze", "depth-plot", str(sweep), "--out", str(out)]) == 2
    assert "entry '1' must be a depth" in capsys.readouterr().err
    (sweep / "downstream.json").unlink()
    (sweep / "layers-1" / "eval" / "summary.json").write_text("{broken")
    assert cli_main(["analyze", "depth-plot", str(sweep), "--out", str(out)]) == 2
    assert "summary.json: cannot read it as JSON" in capsys.readouterr().err
    (sweep / "layers-1" / "eval" / "summary.json").unlink()
    _write_log(sweep / "layers-1" / "logs" / "metrics.jsonl", [{"step": "x", "loss_ner": 1.0}])
    assert cli_main(["analyze", "depth-plot", str(sweep), "--out", str(out)]) == 2
    assert "metrics.jsonl:1: 'step' must be an integer" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--max-length", "-5"], ["--max-length", "2"], ["--batch-size", "0"]])
def test_analyze_refuses_lengths_and_batches_that_measure_nothing(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["analyze", "packaged", *flag])
    assert exc.value.code == 2 and flag[0] in capsys.readouterr().err


@pytest.mark.slow
def test_depth_sweep_runs_each_depth_and_resumes(tiny_bert, toy_data, tmp_path, monkeypatch):
    """Two 2-step mtpf-tpl runs on the tiny model; a second call trains nothing; downstream wired in."""
    from conftest import tiny_run_overrides

    from mtpf.downstream import suite

    out = tmp_path / "sweep"
    overrides = tiny_run_overrides(tiny_bert, toy_data, tmp_path / "unused", strategy="mtpf-tpl")
    overrides = [o for o in overrides if not o.startswith("output_dir=")]
    evaluated = []

    def fake_suite(cfg):  # the real suite trains NER adapters for minutes; only the wiring is tested here
        evaluated.append(cfg.models)
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        depth = int(cfg.models[0][0].split("-")[1])
        (Path(cfg.output) / "results.json").write_text(
            json.dumps(
                {
                    "cells": [
                        {"model": "m", "task": "ner", "dataset": "x", "fraction": 1.0,
                         "main_score": 0.5 + depth / 100},
                        {"model": "m", "task": "tc", "dataset": "y", "fraction": 1.0, "main_score": 0.4},
                    ]
                }
            )
        )
        return {}

    monkeypatch.setattr(suite, "run_suite", fake_suite)
    assert (
        cli_main(
            [
                "analyze",
                "depth-sweep",
                *overrides,
                "--layers",
                "2,1",
                "--out",
                str(out),
                "--evaluate",
                "--ner",
                "x",
                "--cls",
                "y",
            ]
        )
        == 0
    )
    for n in (1, 2):
        run_json = json.loads((out / f"layers-{n}" / "run.json").read_text())
        cfg = json.loads((out / f"layers-{n}" / "pretrain_config.json").read_text())
        assert cfg["tpl"]["ner"]["layers"] == cfg["tpl"]["tc"]["layers"] == n
        assert sorted(run_json["adapters"]) == ["ner", "tc"]
        spec = json.loads((out / f"layers-{n}" / "adapters" / "tc" / "mtpf_adapter.json").read_text())
        assert spec["lora"]["layers"] == n
    assert (out / "fig4.png").is_file()
    summary = json.loads((out / "depth_summary.json").read_text())["layers"]
    assert summary["2"]["downstream"]["ner"] == pytest.approx(52.0) and summary["1"]["steps"] == 2
    assert [m[0][0] for m in evaluated] == ["layers-1", "layers-2"]

    def boom(cfg):
        raise AssertionError("a finished depth must not be trained again")

    monkeypatch.setattr("mtpf.recipes.pretrain.run", boom)
    argv = ["analyze", "depth-sweep", "--layers", "1,2", *overrides, "--out", str(out), "--no-plot"]
    assert cli_main(argv) == 0  # options and key=value intermixed
    assert (
        cli_main(["analyze", "depth-sweep", *overrides, "strategy=mtpf", "--layers", "1", "--out", str(out)])
        == 2
    )  # not a TPL strategy


def test_sweep_without_downstream_package_skips_with_a_message(monkeypatch, capsys, tmp_path):
    from mtpf.analysis import sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "downstream_suite", lambda: None)
    assert sweep_mod.evaluate_depth(tmp_path, ["x"], []) is None
    assert "skipped" in capsys.readouterr().out
