"""``mtpf evaluate --seeds``: one cell per seed in results.json, seeds accumulate across runs, tables show intervals."""
import json
from pathlib import Path

from mtpf.downstream.suite import read_cells


def _cls_data(root):
    words = {"card": ["lost card", "stolen card", "card gone"], "rate": ["exchange rate", "fx rate", "rate today"],
             "top": ["top up failed", "top up broken", "cannot top up"]}
    for split, reps in (("train", 3), ("test", 2)):
        rows = [{"text": f"{t} {i}", "label": lab} for lab, ts in words.items() for t in ts for i in range(reps)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root)


def test_seeds_are_cells_and_accumulate_across_runs(tiny_bert, tmp_path, capsys, one_torch_thread):
    from mtpf.cli import main

    data = tmp_path / "intents"
    data.mkdir()
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", f"Base={tiny_bert}", "--cls", _cls_data(data), "--samples-per-label", "2",
            "--n-experiments", "2", "--output", str(out), "--no-progress"]
    assert main(argv + ["--seeds", "42,43"]) == 0
    cells, labels = read_cells(out / "results.json")
    assert sorted(c["seed"] for c in cells) == [42, 43] and labels == ["Base"]
    capsys.readouterr()
    assert main(argv + ["--seeds", "43,44"]) == 0  # 43 is reused, 44 added, 42 still shown
    assert "ran 1 cells, reused 1" in capsys.readouterr().out
    cells, _ = read_cells(out / "results.json")
    assert sorted(c["seed"] for c in cells) == [42, 43, 44]
    md = (out / "tables.md").read_text()
    detail = [line for line in md.splitlines() if line.startswith("| Base | intents |")]
    assert detail and detail[0].rstrip(" |").endswith("3")  # the Seeds column counts all three


def test_an_older_recipe_of_the_same_cell_is_not_counted_as_another_seed(tmp_path):
    """results.json keeps cells of an earlier recipe (a re-configured run skips nothing it needs); readers must
    count each (model, dataset, fraction, seed) once, the newest, or two recipes average as if they were seeds."""
    from mtpf.downstream.tables import aggregate

    def cell(seed, score, finished, recipe):
        return {"key": f"{recipe}{seed}", "task": "ner", "model": "Base", "model_ref": "packaged",
                "dataset": "conll2003", "fraction": 1.0, "seed": seed, "main_score": score, "metrics": {},
                "config": {"recipe": recipe}, "finished": finished}

    old = [cell(s, 0.70 + 0.01 * i, f"2026-01-0{i + 1}T00:00:00", "paper") for i, s in enumerate((1, 2, 3))]
    new = [cell(s, 0.80 + 0.01 * i, f"2026-02-0{i + 1}T00:00:00", "default") for i, s in enumerate((1, 2, 3))]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"format": "mtpf-eval/1", "models": [{"label": "Base", "ref": "packaged"}],
                                "cells": [new[0], *old, new[1], new[2]]}))
    cells, _ = read_cells(path)
    assert sorted(c["key"] for c in cells) == ["default1", "default2", "default3"]
    entry = aggregate(cells)[("Base", "ner", "conll2003", 1.0)]
    assert entry["n"] == 3 and round(entry["mean"], 6) == 81.0
    # aggregate alone also counts a seed once (cells merged from several files)
    assert aggregate([*old, *new])[("Base", "ner", "conll2003", 1.0)]["n"] == 3


def test_rows_normalised_differently_get_a_note(tiny_bert, tmp_path, capsys, monkeypatch):
    """A plain HF base (no Normalize) next to an mtpf run (Normalize) under --normalize auto: the suite says so."""
    from mtpf.downstream import suite
    from mtpf.downstream.suite import SuiteConfig, run_suite
    from conftest import make_fake_tpl_run

    run = make_fake_tpl_run(tiny_bert, tmp_path / "run")
    monkeypatch.setattr(suite, "build_cells", lambda *a, **k: [])  # no cell needs to run for the note
    sample = Path(__file__).resolve().parents[1] / "src" / "mtpf" / "sample_data" / "cls" / "sample_intents"
    run_suite(SuiteConfig(models=[("Base", tiny_bert), ("Run", run)], output=str(tmp_path / "e"), cls=[str(sample)],
                          progress=False))
    out = capsys.readouterr().out
    assert "normalised for Run but not for Base" in out
