"""`mtpf demo` is the README's main command: it must run end to end, offline, within its time budget."""
import json
import time

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_within_budget(tmp_path, capsys):
    from mtpf.cli import main

    t0 = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    minutes = (time.perf_counter() - t0) / 60
    out = tmp_path / "demo"
    summary = json.loads((out / "demo.json").read_text())
    printed = capsys.readouterr().out
    # every stage left its artifact
    for rel in ("labels/clusters.json", "run/run.json", "run/backbone/config.json", "run/adapters/ner",
                "run/adapters/tc", "run/sentence_transformer/modules.json", "eval/results.json", "eval/tables.md",
                "eval/chart.png", "onnx/backbone"):
        assert (out / rel).exists(), rel
    # both requests were answered by the runtime
    answers = summary["answers"]
    assert answers["classification"]["label"] in answers["classification"]["probabilities"]
    assert isinstance(answers["entities"], list)
    results = json.loads((out / "eval" / "results.json").read_text())
    models = {c["model"] for c in results["cells"]}
    assert {"Base model", "MTPF-TPL"} <= models
    assert "say nothing about the quality" in printed and "next: real data" in printed
    assert minutes < 10, f"demo took {minutes:.1f} min"
    # a second run resumes: every stage is skipped or recomputes nothing
    t1 = time.perf_counter()
    assert main(["demo", "--out", str(out)]) == 0
    assert time.perf_counter() - t1 < (time.perf_counter() - t0) / 2
