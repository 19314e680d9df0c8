"""`mtpf demo` is the README's main command: it must run end to end, offline, and a re-run must redo nothing.

Its time budget (< 10 minutes on 2 CPU cores) is measured by bench/bench_demo.py, never asserted here: a busy
machine must not turn the suite red."""
import json

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    from mtpf.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    summary = json.loads((out / "demo.json").read_text())
    printed = capsys.readouterr().out
    # every stage left its artifact, all under --out, both apps in one folder
    for rel in ("labels/clusters.json", "run/run.json", "run/backbone/config.json", "run/adapters/ner",
                "run/adapters/tc", "run/sentence_transformer/modules.json", "eval/results.json", "eval/tables.md",
                "eval/chart.png", "apps/ner-sample_news/mtpf_app.json", "apps/tc-sample_intents/mtpf_app.json",
                "onnx/backbone/export.json", "onnx/apps/ner/export.json", "onnx/apps/tc/export.json"):
        assert (out / rel).exists(), rel
    # every stage folder is marked finished
    for stage in ("labels", "run", "eval", "apps", "onnx"):
        assert (out / stage / ".mtpf-done").is_file(), stage
    # both requests were answered by the runtime
    answers = summary["answers"]
    assert answers["classification"]["label"] in answers["classification"]["probabilities"]
    assert isinstance(answers["entities"], list)
    results = json.loads((out / "eval" / "results.json").read_text())
    models = {c["model"] for c in results["cells"]}
    assert {"Base model", "MTPF-TPL"} <= models
    assert "say nothing about the quality" in printed and "next: real data" in printed
    # a second run resumes: every stage is skipped, no evaluation cell runs again
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for skipped in ("already labelled", "already pre-finetuned", "already adapted", "already exported"):
        assert skipped in printed
    assert json.loads((out / "demo.json").read_text())["evaluation"]["ran"] == 0
