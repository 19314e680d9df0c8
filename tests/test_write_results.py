"""scripts/write_results.py: docs/results.md from results files — intervals, paired claims with computed verdicts,
the TPL experiment with Figure 4, run times; the committed single-seed files still render as before (n=1)."""
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_results(monkeypatch, *argv):
    spec = importlib.util.spec_from_file_location("write_results", ROOT / "scripts" / "write_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["write_results.py", *map(str, argv)])
    mod.main()


MODELS = {"Base model": 0.0, "PF for NER": (+3.0, -2.0), "PF for TC": (-1.0, +1.0), "MTPF": (+2.0, 0.0),
          "MTPF-TPL": (+2.0, +1.0), "TPL last 1 layer": (+1.0, -1.0), "TPL last 4 layers": (+3.0, +2.0)}
SEED_EFFECT = {42: 0.0, 43: 1.5, 44: -1.0}


def _results_folder(root: Path) -> Path:
    from mtpf.downstream.suite import _slug

    tpl = {"uniform": "MTPF-TPL", "depth": {1: "TPL last 1 layer", 2: "MTPF-TPL", 4: "TPL last 4 layers"},
           "asymmetric": []}
    (root).mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({
        "format": "mtpf-repro/1", "seeds": list(SEED_EFFECT), "base": "Base model",
        "models": {m: _slug(m) for m in MODELS},
        "config": {"tpl_experiment": tpl, "figure3_models": ["PF for NER", "MTPF-TPL", "MTPF"]}}))
    for seed, effect in SEED_EFFECT.items():
        for i, (m, gain) in enumerate(MODELS.items()):
            ner_gain, tc_gain = gain if isinstance(gain, tuple) else (gain, gain)
            wobble = 0.1 * ((seed + i) % 3 - 1)  # a little noise so intervals have width
            cells = []
            for task, ds, base, g in (("ner", "conll2003", 60.0, ner_gain), ("ner", "mit_restaurant", 58.0, ner_gain),
                                      ("tc", "banking77", 75.0, tc_gain), ("tc", "emotion", 35.0, tc_gain)):
                for frac in ((1.0, 0.1) if task == "ner" else (1.0,)):
                    score = (base + g + effect + wobble - (10 if frac < 1 else 0)) / 100
                    cells.append({"key": f"{m}{task}{ds}{frac}{seed}", "task": task, "model": m, "model_ref": m,
                                  "dataset": ds, "fraction": frac, "seed": seed, "main_score": score,
                                  "metrics": {"f1" if task == "ner" else "accuracy": score},
                                  "config": {"epochs_warmup": 3, "epochs": 3} if task == "ner" else {}})
            folder = root / f"s{seed}"
            folder.mkdir(exist_ok=True)
            (folder / f"{_slug(m)}.json").write_text(json.dumps({"format": "mtpf-eval/1", "cells": cells,
                                                                 "models": [{"label": m, "ref": m}]}))
            if m.startswith(("TPL", "MTPF-TPL")) and seed == 42:
                logs = folder / "pretrain" / _slug(m) / "logs"
                logs.mkdir(parents=True)
                logs.joinpath("metrics.jsonl").write_text("".join(
                    json.dumps({"step": s, "loss_ner": 3.0 / s, "loss_tc": 1.0 / s}) + "\n" for s in (1, 2, 3)))
            if m in ("PF for NER", "MTPF-TPL"):  # Figure 3's measurements (MTPF has none: left out, no error)
                logs = folder / "pretrain" / _slug(m) / "logs"
                logs.mkdir(parents=True, exist_ok=True)
                logs.joinpath("analysis.jsonl").write_text("".join(json.dumps(
                    {"step": s, "perturbed_cosine": 0.5 + 0.01 * s + 0.01 * seed, "token_homogeneity": 0.4 - 0.01 * s})
                    + "\n" for s in (0, 50, 100)))
    (root / "timings.json").write_text(json.dumps({
        "pretrain s42 MTPF": {"part": "pretrain", "seconds": 1800.0, "command": "pretrain configs/local/mtpf.yaml"},
        "pretrain s43 MTPF": {"part": "pretrain", "seconds": 1800.0, "command": "pretrain configs/local/mtpf.yaml"},
        "evaluate s42 MTPF TC": {"part": "tc", "seconds": 360.0, "command": "evaluate --cls x"},
        "evaluate s43 MTPF TC": {"part": "tc", "seconds": 600.0, "command": "evaluate --cls x", "jobs": 2}}))
    return root


def test_results_folder_renders_intervals_claims_tpl_and_times(tmp_path, monkeypatch):
    import mtpf.analysis.plots as plots

    source = _results_folder(tmp_path / "repro-scaled")
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n<!-- tables:begin -->\nold\n<!-- tables:end -->\nhand-written tail\n")
    drawn, real = [], plots.plot_findings
    monkeypatch.setattr(plots, "plot_findings", lambda runs, out, **kw: drawn.append((runs, kw)) or real(runs, out, **kw))
    _write_results(monkeypatch, source, "--doc", doc)
    [(runs, kw)] = drawn
    assert [r.relative_to(source).as_posix() for r in runs] == ["s42/pretrain/PF_for_NER", "s42/pretrain/MTPF-TPL"]
    assert kw == {"losses": True, "labels": ["PF for NER", "MTPF-TPL"]}
    text = doc.read_text()
    assert text.startswith("# Results\n") and text.endswith("hand-written tail\n") and "\nold\n" not in text
    assert "Seeds: 42, 43, 44; seeds per table cell: 3." in text
    assert "| MTPF-TPL | 61.2 ± 3.4 (+2.0) | **56.2 ± 3.4 (+1.0)** |" in text  # mean ± interval (delta vs base)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if " − " in line}
    assert rows["PF for NER interferes with TC"].endswith("| -2.0 ± 0.4 | 3 | holds |")
    assert rows["PF for TC interferes with NER"].endswith("| holds |")
    assert rows["MTPF-TPL beats MTPF on TC"].endswith("| holds |")
    assert "not resolved" in rows["MTPF-TPL beats MTPF on NER"]  # +0.0 with some noise
    assert rows["MTPF-TPL matches the individual PF on NER"].endswith("| contradicted (worse) |")
    assert "MTPF-TPL gains over the base with 10 % of NER train" in rows
    assert "| TPL last 4 layers | +1.0 ± " in text and "| TPL last 1 layer | -1.0 ± " in text
    assert "Result: TPL last 4 layers beats uniform TPL on both families." in text
    assert (source / "fig4.png").read_bytes()[:4] == b"\x89PNG" and "![Figure 4](repro-scaled/fig4.png)" in text
    # Figure 3 from the first seed's committed logs of the config's figure3_models that have measurements
    assert (source / "fig3.png").read_bytes()[:4] == b"\x89PNG" and "![Figure 3](repro-scaled/fig3.png)" in text
    assert "Seed 42: (a) perturbed-sentence cosine" in text
    assert "| pre-finetuning | 2 | 1.00 h | `mtpf pretrain configs/local/mtpf.yaml` |" in text
    assert "1 of these units ran 2 at a time" in text
    png = (source / "chart.png").read_bytes()  # every dataset and model, and still a page wide (PNG IHDR width)
    assert png[:4] == b"\x89PNG" and int.from_bytes(png[16:20], "big") <= 16 * 120


def test_committed_single_seed_results_render_as_before(tmp_path, monkeypatch):
    doc = tmp_path / "results.md"
    _write_results(monkeypatch, ROOT / "docs" / "results", "--doc", doc, "--figures", tmp_path / "figs")
    text = doc.read_text()
    assert "| MTPF-TPL | 60.8+1.7 | **63.2+1.0** | **62.0+1.3** |" in text  # n=1: no interval, numbers unchanged
    assert "| Base model | **79.1** | 36.7 | 63.6 | 53.7 | 75.3 | 65.1 | 62.2 |" in text
    assert "±" not in text.split("### Paired differences")[0].split("one seed prints")[1]
    assert "| MTPF-TPL beats MTPF on TC | MTPF-TPL − MTPF | TC | + | +0.3 | 1 | one seed: no interval |" in text


def test_partial_results_limited_runs_and_recipe_labels(tmp_path, monkeypatch):
    """A reproduction under way: only the base model measured, data-scarce rows limited to some models, the
    default recipe's cells labelled as such, and the TPL experiment reported as not measured (not as lost)."""
    from mtpf.downstream.suite import _slug

    root = tmp_path / "partial"
    (root / "s42").mkdir(parents=True)
    models = ["Base model", "PF for NER", "MTPF-TPL", "TPL last 1 layer"]
    runs = {"full": {"fractions": [1.0]}, "low": {"fractions": [0.1], "models": ["Base model", "MTPF-TPL"]}}
    tpl = {"uniform": "MTPF-TPL", "depth": {1: "TPL last 1 layer", 2: "MTPF-TPL"}, "asymmetric": []}
    (root / "manifest.json").write_text(json.dumps({
        "format": "mtpf-repro/1", "seeds": [42], "base": "Base model", "models": {m: _slug(m) for m in models},
        "config": {"tpl_experiment": tpl, "evaluate": {"runs": runs}}}))
    default = {"recipe": "default", "epochs_warmup": 3, "epochs": 10, "min_steps_warmup": 300, "min_steps": 400}
    cells = [{"key": f"b{frac}", "task": "ner", "model": "Base model", "model_ref": "packaged",
              "dataset": "conll2003", "fraction": frac, "seed": 42, "main_score": 0.8, "metrics": {"f1": 0.8},
              "config": default if frac < 1 else {"epochs_warmup": 3, "epochs": 3}} for frac in (1.0, 0.1)]
    (root / "s42" / "Base_model.json").write_text(json.dumps({"format": "mtpf-eval/1", "cells": cells,
                                                              "models": [{"label": "Base model", "ref": "packaged"}]}))
    doc = tmp_path / "results.md"
    _write_results(monkeypatch, root, "--doc", doc)
    text = doc.read_text()
    low_rows = [line for line in text.splitlines() if line.startswith("| 10%")]
    assert [r.split(" | ")[1] for r in low_rows] == ["Base model", "MTPF-TPL"]  # not PF for NER, not TPL 1
    assert "default recipe: 3 head + up to 10 LoRA epochs, at least 300 + 400 steps" in low_rows[0]
    assert any(line.startswith("| 100% (3 head + 3 LoRA epochs) | PF for NER |") for line in text.splitlines())
    assert "Result: not measured yet" in text and "no setting beats" not in text


def test_tpl_result_is_not_decided_while_a_setting_lacks_seeds(tmp_path, monkeypatch):
    """A setting measured at one seed only (its other seeds still running) must not turn the result into 'no
    setting beats uniform TPL'. Every table and difference uses the seeds every cell has (here: 42), so a row's
    mean never comes from other seeds than its neighbours'; the page says which seeds wait."""
    source = _results_folder(tmp_path / "repro-scaled")
    for seed in (43, 44):  # the winner of the full folder, TPL last 4 layers, now has seed 42 only
        (source / f"s{seed}" / "TPL_last_4_layers.json").unlink()
    doc = tmp_path / "results.md"
    _write_results(monkeypatch, source, "--doc", doc)
    text = doc.read_text()
    assert "**Under way:** result cells per seed so far: 42: 42, 43: 36, 44: 36." in text
    assert "use seed 42, which every cell has; seeds 43, 44 enter them once every cell has them" in text
    assert "| TPL last 4 layers | +0.9 | +0.9 | undecided (one seed) |" in text  # seed 42 alone
    assert "| TPL last 1 layer | -0.9 | -1.9 | undecided (one seed) |" in text  # its seeds 43, 44 wait too
    assert ("Result: not decided yet: 2 of 2 settings have no interval on both families (they need paired cells "
            "at two or more seeds).") in text
    assert "±" not in text.split("### Table 1 analogue")[1]  # one seed everywhere: no interval anywhere
    assert "no setting beats" not in text


def test_runtime_row_sits_beside_its_own_seed_not_the_means(tmp_path, monkeypatch):
    """The runtime row is measured at the first seed only. Its section compares it with that seed's PyTorch cells
    (no intervals there), while every table above keeps its three-seed means; the runtime's single seed never makes
    the other seeds drop out."""
    source = _results_folder(tmp_path / "repro-scaled")
    rt = [{"key": f"rt{ds}", "task": task, "model": "MTPF-TPL, runtime int8", "runtime": {"backend": "onnx"},
           "dataset": ds, "fraction": 1.0, "seed": 42, "main_score": score / 100,
           "metrics": {"f1" if task == "ner" else "accuracy": score / 100}}
          for task, ds, score in (("ner", "conll2003", 61.5), ("ner", "mit_restaurant", 59.5),
                                  ("tc", "banking77", 75.5), ("tc", "emotion", 35.5))]
    (source / "runtime.json").write_text(json.dumps({"format": "mtpf-eval/1", "cells": rt}))
    doc = tmp_path / "results.md"
    doc.write_text("<!-- tables:begin -->\n<!-- tables:end -->\n")
    _write_results(monkeypatch, source, "--doc", doc)
    text = doc.read_text()
    assert "Seeds: 42, 43, 44; seeds per table cell: 3." in text and "Under way" not in text
    assert "| MTPF-TPL | 61.2 ± 3.4 (+2.0) |" in text  # the tables above: three seeds
    section = text.split("### The embedded runtime")[1].split("\n### ")[0]
    assert "Every row here is seed 42 only" in section and "±" not in section
    summary = section.split("####")[0]  # the family table; the per-dataset ones follow
    rows = {line.split(" | ")[0].lstrip("| "): line for line in summary.splitlines() if line.startswith("| ")}
    assert rows["MTPF-TPL"].startswith("| MTPF-TPL | **61.0")  # seed 42: (62.0 + 60.0) / 2, not the 61.2 mean
    assert rows["MTPF-TPL, runtime int8"].startswith("| MTPF-TPL, runtime int8 | 60.5")
    assert rows["Base model"].startswith("| Base model | 58.9")
    assert "| MTPF-TPL, runtime int8 | 61.5 | 59.5 | 60.5 |" in section  # per dataset, beside seed 42's 62.0 / 60.0
