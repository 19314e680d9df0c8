"""NER adaptation recipes: ``paper`` reproduces the loop as it was before the recipes existed (bit for bit on a tiny
model), and the default recipe learns a planted signal from 200 sentences where the paper recipe does not."""
import json
import random
from pathlib import Path

import pytest

NAMES = {"PER": ["Obama", "Merkel", "Smith", "Jones", "Garcia"], "LOC": ["Paris", "Berlin", "London", "Madrid", "Rome"],
         "ORG": ["Apple", "Google", "Intel", "Nokia", "Siemens"]}
FILL = ["the", "a", "man", "woman", "visited", "bought", "said", "on", "Monday", "in", "new", "talks", "with", "from"]


def planted_ner(root: Path, sizes=(200, 100, 100), density=0.15, types=("PER", "LOC", "ORG"), seed=0,
                names=NAMES, fill=FILL, min_len=5) -> Path:
    """Sentences of filler words and single-word entities; each name always has the same type."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "dev", "test"), sizes):
        with open(root / f"{split}.jsonl", "w") as fh:
            for _ in range(n):
                tokens, tags = [], []
                for _ in range(rng.randint(min_len, 12)):
                    if rng.random() < density:
                        typ = rng.choice(types)
                        tokens.append(rng.choice(names[typ]))
                        tags.append(f"B-{typ}")
                    else:
                        tokens.append(rng.choice(fill))
                        tags.append("O")
                fh.write(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> str:
    from mtpf.testing import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny64"), "bert", hidden=64)


def _old_planted(root: Path) -> Path:
    """The data the golden numbers below were computed on (3 types, 10 names each, 30 % entities)."""
    names = {"PER": ["Obama", "Merkel", "Smith", "Jones", "Garcia", "Miller", "Davis", "Wilson", "Taylor", "Brown"],
             "LOC": ["Paris", "Berlin", "London", "Madrid", "Rome", "Vienna", "Tokyo", "Cairo", "Lima", "Oslo"],
             "ORG": ["Apple", "Google", "Intel", "Nokia", "Siemens", "Fiat", "Sony", "Shell", "Boeing", "Nestle"]}
    fill = ["the", "a", "man", "woman", "visited", "bought", "said", "on", "Monday", "in", "new", "talks", "with",
            "from", "city", "company", "and", "to"]
    return planted_ner(root, sizes=(200, 80, 80), density=0.3, names=names, fill=fill, min_len=4)


# Computed with the NER loop of commit d59b65f (src/mtpf/downstream/ner.py before the recipes and the split into
# ner_*.py; its defaults were the paper's) on _old_planted + make_tiny_encoder(..., "bert"), seed 42, CPU fp32.
GOLDEN_PAPER = {
    "test_f1": 0.15978695073235685, "dev_f1": 0.16809116809116809, "best_epoch": 14,
    "loss_first": [2.1042515635490417, 2.1139726042747498, 2.1001486778259277],
    "loss_last": [2.0380367040634155, 2.0285483300685883, 2.048729747533798], "n_history": 40}
GOLDEN_CUSTOM = {  # NerConfig(epochs_warmup=2, epochs=3, scheduler=linear, max_grad_norm=1, lr=head_lr=1e-3,
    # batch_size=16), fraction 0.5, seed 7
    "test_f1": 0.08988764044943821, "dev_f1": 0.14035087719298248, "best_epoch": 1,
    "loss": [1.609066299029759, 1.536837203162057, 1.5099318878991264, 1.3772841351372855, 1.2754376786095756]}


def test_paper_recipe_reproduces_the_previous_loop_exactly(tiny_bert, tmp_path, one_torch_thread):
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    ds = load_ner_dataset(str(_old_planted(tmp_path / "data")))
    model = resolve(tiny_bert)
    cfg = NerConfig(recipe="paper")
    assert (cfg.epochs_warmup, cfg.epochs, cfg.batch_size, cfg.lr, cfg.head_lr, cfg.scheduler) == (
        10, 30, 64, 2e-5, None, "constant")
    res = train_ner(model, ds, cfg, seed=42, progress=False, device="cpu")
    losses = [h["loss"] for h in res.history]
    assert len(losses) == GOLDEN_PAPER["n_history"]
    assert losses[:3] == pytest.approx(GOLDEN_PAPER["loss_first"], rel=1e-5)
    assert losses[-3:] == pytest.approx(GOLDEN_PAPER["loss_last"], rel=1e-5)
    assert res.best_epoch == GOLDEN_PAPER["best_epoch"]
    assert res.test["f1"] == pytest.approx(GOLDEN_PAPER["test_f1"], abs=1e-9)
    assert res.dev["f1"] == pytest.approx(GOLDEN_PAPER["dev_f1"], abs=1e-9)
    assert res.dev_sentences == 80  # the whole dev split, every epoch
    assert all("dev" in h for h in res.history if h["stage"] == 2)

    custom = NerConfig(recipe="paper", epochs_warmup=2, epochs=3, scheduler="linear", max_grad_norm=1.0,
                       lr=1e-3, head_lr=1e-3, batch_size=16)
    res = train_ner(model, ds, custom, fraction=0.5, seed=7, progress=False, device="cpu")
    assert [h["loss"] for h in res.history] == pytest.approx(GOLDEN_CUSTOM["loss"], rel=1e-5)
    assert res.best_epoch == GOLDEN_CUSTOM["best_epoch"]
    assert res.test["f1"] == pytest.approx(GOLDEN_CUSTOM["test_f1"], abs=1e-9)
    assert res.dev["f1"] == pytest.approx(GOLDEN_CUSTOM["dev_f1"], abs=1e-9)


def test_default_recipe_beats_the_paper_recipe_on_200_sentences(tiny64, tmp_path, one_torch_thread):
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    ds = load_ner_dataset(str(planted_ner(tmp_path / "data")))
    assert len(ds.splits["train"]) == 200
    model = resolve(tiny64)
    paper = train_ner(model, ds, NerConfig(recipe="paper"), seed=42, progress=False, device="cpu")
    default = train_ner(model, ds, NerConfig(), seed=42, progress=False, device="cpu")
    assert default.test["f1"] > paper.test["f1"] + 0.3, (default.test, paper.test)
    assert default.test["f1"] > 0.6
    # the recipe's minimum of steps is what a 200-sentence train set needs: more epochs than asked for
    n_batches = -(-200 // NerConfig().batch_size)
    assert default.epochs["warmup"] * n_batches >= NerConfig().min_steps_warmup
    assert default.epochs["lora"] * n_batches >= NerConfig().min_steps


def test_model_selection_costs_no_more_than_training(tiny_bert, tmp_path, one_torch_thread):
    """Default recipe: dev is a seeded subsample and is scored so rarely that its forward passes (about a third
    of a training step each) cost no more than the training epochs they select from."""
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    ds = load_ner_dataset(str(planted_ner(tmp_path / "data", sizes=(40, 400, 30))))
    cfg = NerConfig(dev_sentences=150, min_steps=0, min_steps_warmup=0, epochs_warmup=1, epochs=12, patience=0)
    res = train_ner(resolve(tiny_bert), ds, cfg, seed=3, progress=False, device="cpu")
    assert res.dev_sentences == 150  # a subsample of the 400
    scored = [h["epoch"] for h in res.history if h["stage"] == 2 and "dev" in h]
    assert len(scored) < 12 and scored[-1] == 12  # not every epoch, but always the last one
    assert (len(scored) - 1) * res.dev_sentences <= 3 * 40 * 12 / 2  # at most half the training's cost
    again = train_ner(resolve(tiny_bert), ds, cfg, seed=3, progress=False, device="cpu")
    assert again.test == res.test  # the subsample and the run are seeded


def test_explicit_epochs_drop_the_recipe_minimum_and_quick_is_short():
    from mtpf.config import ConfigError
    from mtpf.downstream.ner import QUICK, RECIPES, NerConfig

    assert NerConfig().min_steps == RECIPES["default"]["min_steps"] > 0
    cfg = NerConfig(epochs=2)
    assert cfg.min_steps == 0 and cfg.min_steps_warmup == RECIPES["default"]["min_steps_warmup"]
    assert NerConfig(**QUICK).min_steps == NerConfig(**QUICK).min_steps_warmup == 0
    assert NerConfig(recipe="paper", lr=1e-3).head_lr is None  # the head follows --lr, as in the paper
    with pytest.raises(ConfigError, match="recipe"):
        NerConfig(recipe="fast")
    with pytest.raises(ConfigError, match="patience"):
        NerConfig(patience=-1)


def test_cli_recipe_flags(tmp_path):
    import argparse

    from mtpf.downstream.cli import _ner_args, _ner_config

    p = argparse.ArgumentParser()
    _ner_args(p)
    cfg = _ner_config(p.parse_args(["--recipe", "paper"]))
    assert (cfg.recipe, cfg.epochs, cfg.lr, cfg.batch_size, cfg.dev_sentences) == ("paper", 30, 2e-5, 64, 0)
    cfg = _ner_config(p.parse_args(["--lr", "1e-4", "--patience", "0"]))
    assert (cfg.recipe, cfg.lr, cfg.head_lr, cfg.patience) == ("default", 1e-4, 1e-3, 0)


def test_cpu_speedups_train_the_same_as_the_padded_loop(tiny_bert_nodropout, tmp_path, one_torch_thread):
    """Padding-free stage-2 batches (mtpf.pretrain.cpu_speed) give the padded loop's losses and scores when
    nothing is random (dropout off): the speed-up changes how the step is computed, not what it computes."""
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    ds = load_ner_dataset(str(planted_ner(tmp_path / "data", sizes=(60, 30, 30))))
    runs = {}
    for speedups in (True, False):
        cfg = NerConfig(epochs_warmup=1, epochs=3, min_steps=0, min_steps_warmup=0, cpu_speedups=speedups)
        runs[speedups] = train_ner(resolve(tiny_bert_nodropout), ds, cfg, seed=5, progress=False, device="cpu",
                                   keep_model=True)
    fast, plain = runs[True], runs[False]
    assert [h["loss"] for h in fast.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-4)
    assert fast.test["f1"] == pytest.approx(plain.test["f1"], abs=1e-6)
    from mtpf.pretrain.cpu_speed import FastDropout

    assert any(isinstance(m, FastDropout) for m in fast.model.modules())
    assert not any(isinstance(m, FastDropout) for m in plain.model.modules())
    assert NerConfig(recipe="paper").cpu_speedups is False and NerConfig().cpu_speedups is False


def test_each_process_counts_its_own_share_of_steps():
    """Under DDP a process takes its share of an epoch's batches: the schedule length, the minimum of steps and
    the mean loss count that share, or the linear decay would stop at 1 - 1/world of the way down."""
    from mtpf.downstream.ner_train import _process_share

    batches = [[i] for i in range(7)]
    assert _process_share(batches, 1, 0) is batches
    shares = [_process_share(batches, 2, r) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3]  # equal steps; the odd batch is left out of this epoch
    assert not {b[0] for b in shares[0]} & {b[0] for b in shares[1]}
    assert [len(_process_share(batches[:1], 3, r)) for r in range(3)] == [1, 1, 1]  # fewer batches than processes


def test_dev_scoring_costs_at_most_half_the_training_on_every_process():
    from mtpf.downstream.ner_train import auto_eval_every

    assert auto_eval_every(dev=3250, train=14041) == 1  # CoNLL full train: score every epoch
    assert auto_eval_every(dev=3250, train=200) == 11  # 200 sentences: the dev set is 16x the train set
    # 8 processes each train on 1/8 of an epoch but score the whole dev set: 8x fewer scorings
    for dev, train, world in ((3250, 14041, 8), (3250, 200, 2), (500, 1000, 4)):
        every = auto_eval_every(dev, train, world)
        assert dev / 3 <= 0.5 * every * train / world < dev / 3 + 0.5 * train / world


def _no_saves_unless_interrupted(monkeypatch) -> None:
    """Runs not cut by ``_interrupt_after_saves`` write no checkpoint, however slow the machine or the
    environment's MTPF_NER_CHECKPOINT_SECONDS."""
    from mtpf.downstream import ner_checkpoint

    monkeypatch.setattr(ner_checkpoint, "SECONDS_BETWEEN_SAVES", float("inf"))


def _interrupt_after_saves(monkeypatch, n: int) -> None:
    """Ctrl-C right after the ``n``-th epoch checkpoint is written (one after every epoch), before the older one
    is deleted."""
    from mtpf.downstream import ner_checkpoint
    from mtpf.downstream.ner_checkpoint import EpochCheckpoint

    monkeypatch.setattr(ner_checkpoint, "SECONDS_BETWEEN_SAVES", 0.0)
    real, saves = EpochCheckpoint.save, []

    def save(self, epoch, state):
        real(self, epoch, state)
        saves.append(epoch)
        if len(saves) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochCheckpoint, "save", save)


def test_an_interrupted_adaptation_continues_to_the_uninterrupted_result(tiny_bert, tmp_path, monkeypatch,
                                                                         one_torch_thread):
    """Cut after stage-2 epoch 2 of 5 (dropout on, dev selection) with the newest checkpoint torn: the re-run
    falls back to epoch 1, skips stage 1, and ends with the uninterrupted run's losses, selection, scores and
    weights. Checkpoints of another adaptation (another seed) are not used, and are deleted."""
    import torch

    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    ds = load_ner_dataset(str(planted_ner(tmp_path / "data", sizes=(60, 30, 30))))
    cfg = NerConfig(epochs_warmup=2, epochs=5, min_steps=0, min_steps_warmup=0, eval_every=1, patience=0,
                    dev_sentences=0)
    _no_saves_unless_interrupted(monkeypatch)

    def adapt(ckpt=None, seed=5):
        return train_ner(resolve(tiny_bert), ds, cfg, seed=seed, progress=True, device="cpu", keep_model=True,
                         checkpoint_dir=ckpt)

    def saved():
        return sorted(p.name for p in ckpt.iterdir())

    ref = adapt()
    ckpt = tmp_path / "ckpt"
    with monkeypatch.context() as m:
        _interrupt_after_saves(m, 2)
        with pytest.raises(KeyboardInterrupt):
            adapt(ckpt)
    assert saved() == ["rank0-e00001.pt", "rank0-e00002.pt"]  # cut before the older one went
    other = adapt(ckpt, seed=6)  # another adaptation: starts over, and deletes what it cannot use
    assert other.resumed_after_epoch is None and saved() == []
    with monkeypatch.context() as m:
        _interrupt_after_saves(m, 2)
        with pytest.raises(KeyboardInterrupt):
            adapt(ckpt)
    (ckpt / "rank0-e00002.pt").write_bytes(b"torn")
    res = adapt(ckpt)
    assert res.resumed_after_epoch == 1 and saved() == ["rank0-e00001.pt"]  # the torn newer one is gone
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]  # bit for bit
    assert [h.get("dev") for h in res.history] == [h.get("dev") for h in ref.history]
    assert (res.best_epoch, res.test, res.dev) == (ref.best_epoch, ref.test, ref.dev)
    a, b = dict(ref.model.named_parameters()), dict(res.model.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_adapt_ner_cli_continues_after_ctrl_c(tiny_bert, tmp_path, monkeypatch, capsys, one_torch_thread):
    """The checkpoint lives beside the output, which stays untouched until the app replaces it: a re-run
    continues; an existing app being --overwrite'n is intact after a Ctrl-C, and still refused without it."""
    from mtpf.cli import main

    _no_saves_unless_interrupted(monkeypatch)
    data = planted_ner(tmp_path / "data", sizes=(40, 20, 20))
    out, ckpt = tmp_path / "app", tmp_path / ".app.checkpoint"
    argv = ["adapt", "ner", "--model", tiny_bert, "--data", str(data), "--output", str(out), "--epochs-warmup", "1",
            "--epochs", "3", "--min-steps", "0", "--min-steps-warmup", "0", "--no-progress"]
    with monkeypatch.context() as m:
        _interrupt_after_saves(m, 1)
        assert main(argv) == 130
    assert "continue from the last saved LoRA epoch" in capsys.readouterr().err
    assert not out.exists() and (ckpt / "rank0-e00001.pt").is_file()
    assert main(argv) == 0
    assert "resumed after stage-2 epoch 1 of 3" in capsys.readouterr().out
    assert (out / "mtpf_app.json").is_file() and not ckpt.exists()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with monkeypatch.context() as m:
        _interrupt_after_saves(m, 1)
        assert main(argv + ["--seed", "7", "--overwrite"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(argv + ["--seed", "7"]) == 2  # a finished app is never replaced without --overwrite


def test_an_interrupted_evaluate_continues_its_ner_cell(tiny_bert, tmp_path, monkeypatch, capsys, one_torch_thread):
    """``mtpf evaluate`` cut inside a NER cell: the re-run continues the cell from its checkpoint and records the
    uninterrupted run's score."""
    from mtpf.cli import main
    from mtpf.downstream.suite import read_cells

    _no_saves_unless_interrupted(monkeypatch)
    data = planted_ner(tmp_path / "data", sizes=(40, 20, 20))

    def argv(out):
        return ["evaluate", "--model", f"Base={tiny_bert}", "--ner", str(data), "--output", str(out),
                "--epochs-warmup", "1", "--epochs", "3", "--min-steps", "0", "--min-steps-warmup", "0",
                "--no-progress"]

    assert main(argv(tmp_path / "ref")) == 0
    out = tmp_path / "eval"
    with monkeypatch.context() as m:
        _interrupt_after_saves(m, 1)
        assert main(argv(out)) == 130
    assert [len(list(d.iterdir())) for d in (out / ".checkpoints").iterdir()] == [1]  # one cell, one epoch
    capsys.readouterr()
    assert main(argv(out)) == 0
    assert "resumed after stage-2 epoch 1 of 3" in capsys.readouterr().out
    (ref,), _ = read_cells(tmp_path / "ref" / "results.json")
    (got,), _ = read_cells(out / "results.json")
    assert got["main_score"] == ref["main_score"] and got["history"] == ref["history"]
    assert got["resumed_after_epoch"] == 1 and not (out / ".checkpoints").exists()
