"""``mtpf evaluate --seeds``: one cell per seed in results.json, seeds accumulate across runs, tables show intervals."""
import json

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
