"""A newcomer's mistakes and interruptions: one line and exit 2 (130 for Ctrl-C), never a traceback; repeated
list flags accumulate; existing outputs are never replaced silently; stages cut short are redone.

Commands run in-process through ``mtpf.cli.main`` (fast); one real subprocess checks the console end to end.
"""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_run_overrides

from mtpf.cli import INTERRUPTED, build_parser, main

SAMPLE = REPO / "src" / "mtpf" / "sample_data"


def run_cli(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def bad_utf8_ner(tmp_path) -> Path:
    """An NER dataset whose train split has a Latin-1 byte on line 2."""
    folder = tmp_path / "latin1-ner"
    folder.mkdir()
    shutil.copy(SAMPLE / "ner" / "sample_news" / "test.jsonl", folder / "test.jsonl")
    good = json.dumps({"tokens": ["Paris"], "tags": ["B-LOC"]}).encode()
    (folder / "train.jsonl").write_bytes(good + b"\n" + b'{"tokens": ["K\xf6ln"], "tags": ["B-LOC"]}\n')
    return folder


# ----------------------------------------------------------------------------------------------- repeated flags
@pytest.mark.parametrize("argv, attr, expected", [
    (["evaluate", "--output", "o", "--cls", "A", "--cls", "B"], "cls", ["A", "B"]),
    (["evaluate", "--output", "o", "--ner", "A", "B", "--ner", "C"], "ner", ["A", "B", "C"]),
    (["evaluate-runtime", "--backbone", "b", "--label", "l", "--output", "o", "--cls", "A", "--cls", "B"],
     "cls", ["A", "B"]),
    (["label", "--corpus", "a.txt", "--corpus", "b.txt"], "corpus", ["a.txt", "b.txt"]),
    (["label", "--layers", "-1", "--layers", "-7"], "layers", ["-1", "-7"]),
    (["label", "--layers", "-2"], "layers", ["-2"]),  # the default is not kept in front of a given value
    (["demo", "--ner", "a", "--ner", "b"], "ner", ["a", "b"]),
])
def test_repeated_list_flags_accumulate(argv, attr, expected):
    assert getattr(build_parser().parse_args(argv), attr) == expected


def test_repeated_flags_accumulate_in_analyze_depth_sweep():
    from mtpf.analysis.cli import _sweep_parser

    args = _sweep_parser().parse_intermixed_args(["c.yaml", "--ner", "A", "--ner", "B", "--cls", "C", "--cls", "D"])
    assert (args.ner, args.cls) == (["A", "B"], ["C", "D"])
    assert _sweep_parser().parse_intermixed_args(["c.yaml", "--layers", "1,2", "--layers", "4"]).layers == ["1,2", "4"]
    from mtpf.analysis.cli import _measure_parser

    assert _measure_parser().parse_intermixed_args(["m", "--adapter", "ner", "--adapter", "tc"]).adapter == ["ner", "tc"]


def test_demo_refuses_two_datasets_for_one_task(tmp_path, capsys):
    rc, err = run_cli(["demo", "--out", tmp_path / "d", "--data-dir", tmp_path / "none", "--cls", "a", "--cls", "b"],
                      capsys)
    assert_one_line_error(rc, err, "--cls given 2 times")


def test_evaluate_refuses_a_dataset_named_twice(tmp_path, capsys):
    cls = SAMPLE / "cls" / "sample_intents"
    rc, err = run_cli(["evaluate", "--output", tmp_path / "e", "--cls", cls, "--cls", cls], capsys)
    assert_one_line_error(rc, err, "named twice")
    assert not (tmp_path / "e").exists()


def test_evaluate_checks_every_dataset_before_the_first_cell(tiny_bert, tmp_path, capsys):
    """--select dev on a NER set without dev fails in seconds, not when its cell comes up after the others."""
    import shutil

    ner = tmp_path / "nodev"
    shutil.copytree(next((SAMPLE / "ner").iterdir()), ner)
    for f in ner.glob("dev.jsonl*"):
        f.unlink()
    rc, err = run_cli(["evaluate", "--model", tiny_bert, "--output", tmp_path / "e", "--cls",
                       SAMPLE / "cls" / "sample_intents", "--ner", ner, "--select", "dev", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "nodev", "no dev split")
    assert not (tmp_path / "e" / "results.json").exists()  # no cell ran


def test_evaluate_names_a_missing_dataset_folder(tmp_path, capsys):
    rc, err = run_cli(["evaluate", "--output", tmp_path / "e", "--cls", tmp_path / "no" / "such-set"], capsys)
    assert_one_line_error(rc, err, "no/such-set", "no such folder")


def test_demo_names_a_missing_dataset(tmp_path, capsys):
    rc, err = run_cli(["demo", "--out", tmp_path / "d", "--data-dir", SAMPLE, "--ner", "conll2003"], capsys)
    assert_one_line_error(rc, err, "no dataset 'conll2003'", "sample_news")


# ----------------------------------------------------------------------------------------------- model references
@pytest.mark.parametrize("command", [
    ["adapt", "tc", "--data", SAMPLE / "cls" / "sample_intents", "--output", "{tmp}/app", "--model"],
    ["adapt", "ner", "--data", SAMPLE / "ner" / "sample_news", "--output", "{tmp}/app", "--model"],
    ["serve", "--backbone"],
    ["export", "--onnx", "--out", "{tmp}/x"],
])
def test_unknown_local_model_path_is_one_line(command, tmp_path, capsys):
    argv = [str(a).replace("{tmp}", str(tmp_path)) for a in command] + [str(tmp_path / "no" / "such-model")]
    rc, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, "no/such-model", "no such folder")


def test_unknown_model_in_pretrain_config_is_one_line(toy_data, tmp_path, capsys):
    overrides = tiny_run_overrides(str(tmp_path / "missing-model"), toy_data, tmp_path / "run")
    rc, err = run_cli(["pretrain", *overrides], capsys)
    assert_one_line_error(rc, err, "missing-model", "no such folder")


def test_folder_without_config_json_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = run_cli(["serve", "--backbone", tmp_path / "empty"], capsys)
    assert_one_line_error(rc, err, "no config.json")


def test_hub_name_offline_fails_at_once_without_download(monkeypatch, capsys, tmp_path):
    import transformers

    def no_download(*a, **k):
        raise AssertionError("a download was attempted although the hub is off")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_download)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_download)
    rc, err = run_cli(["adapt", "tc", "--model", "some-org/not-cached-model", "--data",
                       SAMPLE / "cls" / "sample_intents", "--output", tmp_path / "app"], capsys)
    assert_one_line_error(rc, err, "some-org/not-cached-model", "HF_HUB_OFFLINE")


def test_hub_name_with_unreachable_endpoint_fails_without_download(monkeypatch):
    import transformers

    from mtpf import encoder

    def no_download(*a, **k):
        raise AssertionError("a download was attempted although the hub is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    encoder._reachable.cache_clear()
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_download)
    try:
        with pytest.raises(encoder.ModelNotFoundError, match="127.0.0.1:9 is not reachable"):
            encoder.load_encoder("some-org/not-cached-model")
    finally:
        encoder._reachable.cache_clear()


# ----------------------------------------------------------------------------------------------- encodings
def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    from mtpf.data.io import DataError, iter_jsonl

    f = tmp_path / "x.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": "\xff"}\n')
    with pytest.raises(DataError) as exc:
        list(iter_jsonl(f))
    assert (exc.value.path, exc.value.line) == (str(f), 3) and "not UTF-8" in str(exc.value)


def test_a_byte_order_mark_is_not_content(tmp_path):
    """Windows editors start UTF-8 files with a BOM: the first record reads as written (json.loads refused it)."""
    import gzip

    from mtpf.data.io import iter_jsonl

    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\n{"text": "b"}\n')
    assert list(iter_jsonl(f)) == [(1, {"text": "a"}), (2, {"text": "b"})]
    with gzip.open(tmp_path / "bom.jsonl.gz", "wb") as fh:
        fh.write(f.read_bytes())
    assert list(iter_jsonl(tmp_path / "bom.jsonl.gz")) == [(1, {"text": "a"}), (2, {"text": "b"})]


def test_non_utf8_ner_train_split_is_one_line(bad_utf8_ner, tmp_path, capsys):
    rc, err = run_cli(["adapt", "ner", "--data", bad_utf8_ner, "--output", tmp_path / "app"], capsys)
    assert_one_line_error(rc, err, f"{bad_utf8_ner / 'train.jsonl'}:2", "not UTF-8")


def test_non_utf8_ner_data_in_pretrain_is_one_line(tiny_bert, toy_data, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "shard-00000.jsonl").write_bytes(b'{"tokens": ["a"], "labels": [1]}\n{"tokens": ["\xe9t\xe9"], '
                                               b'"labels": [2]}\n')
    overrides = tiny_run_overrides(tiny_bert, toy_data, tmp_path / "run") + [f"ner_data=[{labels}]"]
    rc, err = run_cli(["pretrain", *overrides], capsys)
    assert_one_line_error(rc, err, "shard-00000.jsonl:2", "not UTF-8")


@pytest.mark.parametrize("content", [b"plain text, not gzip\n", "cut"])
def test_a_bad_gz_file_is_one_line(tiny_bert, toy_data, tmp_path, capsys, content):
    """A .jsonl.gz that is not gzip, or is cut short: one line naming the file, in adapt and in pretrain."""
    import gzip
    import shutil

    if content == "cut":
        content = gzip.compress(b'{"tokens": ["a"], "tags": ["O"]}\n' * 200)[:60]
    data = tmp_path / "ner"
    shutil.copytree(next((SAMPLE / "ner").iterdir()), data)
    for f in data.glob("train.jsonl*"):
        f.unlink()
    (data / "train.jsonl.gz").write_bytes(content)
    rc, err = run_cli(["adapt", "ner", "--data", data, "--output", tmp_path / "app"], capsys)
    assert_one_line_error(rc, err, "train.jsonl.gz", "not a valid gzip file")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "news.jsonl.gz").write_bytes(content)
    rc, err = run_cli(["pretrain", *tiny_run_overrides(tiny_bert, toy_data, tmp_path / "run", strategy="tc"),
                       f"pairs=[{pairs}]"], capsys)
    assert_one_line_error(rc, err, "news.jsonl.gz", "not a valid gzip file")


# ----------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, tmp_path, capsys):
    import mtpf.downstream.cli as downstream_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(downstream_cli, "_evaluate", interrupted)
    rc, err = run_cli(["evaluate", "--output", tmp_path / "e"], capsys)
    assert rc == 130 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [f"mtpf evaluate: {INTERRUPTED}"]


def test_ctrl_c_in_adapt_tc_says_it_starts_again(monkeypatch, tmp_path, capsys):
    """`mtpf adapt tc` has no checkpoints: its Ctrl-C line must not promise to continue (`adapt ner` does continue:
    tests/test_ner_recipe.py)."""
    import mtpf.downstream.cli as downstream_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(downstream_cli, "_adapt", interrupted)
    rc, err = run_cli(["adapt", "tc", "--data", SAMPLE / "cls" / "sample_intents", "--output", tmp_path / "a"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 130 and len(lines) == 1 and "to train it again" in lines[0] and "continue" not in lines[0], err


def test_ctrl_c_in_pretrain_keeps_checkpoints_and_says_how_to_resume(tiny_bert, toy_data, tmp_path, monkeypatch,
                                                                      capsys):
    from mtpf.recipes.pretrain import PretrainRecipe

    real_step = PretrainRecipe.train_step

    def step_then_interrupt(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(PretrainRecipe, "train_step", step_then_interrupt)
    out = tmp_path / "run"
    rc, err = run_cli(["pretrain", *tiny_run_overrides(tiny_bert, toy_data, out, max_steps=4)], capsys)
    assert rc == 130 and "Traceback" not in err
    assert "resume=true" in err and len([line for line in err.splitlines() if line.strip()]) == 1
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000001", "step-00000002"]


# ----------------------------------------------------------------------------------------------- overwrites
def test_adapt_refuses_a_non_empty_output(tmp_path, capsys):
    app = tmp_path / "app"
    app.mkdir()
    (app / "keep.txt").write_text("mine")
    rc, err = run_cli(["adapt", "tc", "--data", SAMPLE / "cls" / "sample_intents", "--output", app], capsys)
    assert_one_line_error(rc, err, str(app), "--overwrite")
    assert (app / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("mode", ["ner", "tc"])
def test_adapt_refuses_an_unwritable_output_before_training(mode, tiny_bert, tmp_path, capsys, monkeypatch):
    """The app folder is written after the training: a place that cannot be written must fail first."""
    from mtpf.downstream import ner, tc

    trained = []
    monkeypatch.setattr(ner, "train_ner", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(tc, "adapt_tc", lambda *a, **k: trained.append(a))
    (tmp_path / "afile").write_text("")
    data = SAMPLE / "ner" / "sample_news" if mode == "ner" else SAMPLE / "cls" / "sample_intents"
    rc, err = run_cli(["adapt", mode, "--data", data, "--model", tiny_bert, "--output", tmp_path / "afile" / "app"],
                      capsys)
    assert_one_line_error(rc, err, f"--output {tmp_path / 'afile' / 'app'}: cannot write in {tmp_path / 'afile'}")
    assert trained == []


def test_overwrite_never_deletes_the_commands_own_input(tmp_path, capsys):
    """--overwrite replaces an output folder, never one that is (or holds) what the command reads."""
    import shutil

    data = tmp_path / "work" / "intents"
    shutil.copytree(SAMPLE / "cls" / "sample_intents", data)
    rc, err = run_cli(["adapt", "tc", "--data", data, "--output", tmp_path / "work", "--overwrite"], capsys)
    assert_one_line_error(rc, err, "holds the input", "choose another folder")
    rc, err = run_cli(["adapt", "tc", "--data", data, "--output", data, "--overwrite"], capsys)
    assert_one_line_error(rc, err, "holds the input")
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in (SAMPLE / "cls" / "sample_intents").iterdir())
    app = tmp_path / "apps" / "tc"
    app.mkdir(parents=True)
    (app / "mtpf_app.json").write_text("{}")
    for argv in (["export", app, "--hf", "--out", tmp_path / "apps", "--overwrite"],
                 ["export", app, "--onnx", "--out", tmp_path / "apps", "--overwrite"]):
        rc, err = run_cli(argv, capsys)
        assert_one_line_error(rc, err, "holds the input")
        assert (app / "mtpf_app.json").is_file()


def test_adapt_overwrite_replaces_the_output(tiny_bert, tmp_path, capsys, one_torch_thread):
    app = tmp_path / "app"
    app.mkdir()
    (app / "keep.txt").write_text("old")
    rc = main(["adapt", "tc", "--model", tiny_bert, "--data", str(SAMPLE / "cls" / "sample_intents"),
               "--output", str(app), "--overwrite", "--no-progress", "--max-iter", "7"])
    assert rc == 0
    assert (app / "mtpf_app.json").is_file() and not (app / "keep.txt").exists()
    assert json.loads((app / "mtpf_app.json").read_text())["training"]["max_iter"] == 7  # as asked, not raised


@pytest.mark.parametrize("flag", [["--classifier", "sklearn.svm:SVC"], ["--n-experiments", "3"],
                                  ["--samples-per-label", "8"]])
def test_adapt_tc_refuses_the_evaluation_protocols_options(flag, tmp_path, capsys):
    """`mtpf adapt tc` fits one logistic regression on all of train (the runtime applies it as a linear head):
    the MTEB protocol's classifier / undersampling options of `mtpf evaluate` are refused, not ignored."""
    with pytest.raises(SystemExit) as exc:
        main(["adapt", "tc", "--data", str(SAMPLE / "cls" / "sample_intents"), "--output", str(tmp_path / "a"),
              *flag])
    assert exc.value.code == 2
    assert f"unrecognized arguments: {flag[0]}" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_export_refuses_a_non_empty_output(tiny_bert, tmp_path, capsys):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "model.onnx").write_text("earlier export")
    rc, err = run_cli(["export", tiny_bert, "--onnx", "--out", out], capsys)
    assert_one_line_error(rc, err, "--overwrite")
    assert (out / "model.onnx").read_text() == "earlier export"


# ----------------------------------------------------------------------------------------------- logs after resume
def test_metrics_have_one_line_per_step_after_kill_and_resume(tiny_bert, toy_data, tmp_path, capsys):
    out = tmp_path / "run"
    common = {"save_every": 2, "log_every": 1}
    assert main(["pretrain", *tiny_run_overrides(tiny_bert, toy_data, out, max_steps=3, **common)]) == 0
    # a kill after step 3 was logged but before its checkpoint was written: the last checkpoint is step 2
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    with open(out / "logs" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "loss_ner"')  # and a line torn by the kill
    assert main(["pretrain", *tiny_run_overrides(tiny_bert, toy_data, out, max_steps=5, resume="true",
                                                 **common)]) == 0
    steps = [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------------------------- stages
def test_stage_marker_written_last_and_only_after_outputs_exist(tmp_path):
    from mtpf.stages import clear_partial, mark_done, stage_done

    folder = tmp_path / "stage"
    folder.mkdir()
    with pytest.raises(RuntimeError, match="result.json"):
        mark_done(folder, required=("result.json",))
    assert not stage_done(folder)
    assert clear_partial(folder) and not folder.exists()
    folder.mkdir()
    (folder / "result.json").write_text("{}")
    mark_done(folder, required=("result.json",))
    assert stage_done(folder) and not clear_partial(folder) and (folder / "result.json").exists()


def test_demo_redoes_an_export_cut_by_ctrl_c(tmp_path, monkeypatch):
    """The issue's case: Ctrl-C during the demo's export left onnx/apps/ner/ empty; a re-run skipped it."""
    from rich.console import Console

    from mtpf.demo import Demo
    from mtpf.runtime import export_cli

    calls = []

    def fake_export(path, out=None, int8=False, backbone=None, strict=True):
        calls.append(Path(out))
        target = Path(out) / "backbone" if Path(path).name == "run" else Path(out)
        target.mkdir(parents=True, exist_ok=True)
        (target / "export.json").write_text("{}")
        return {str(target): {}}

    monkeypatch.setattr(export_cli, "export_path", fake_export)
    out = tmp_path / "demo"
    demo = Demo(out, SAMPLE, None, None, 1, False, False, Console(file=io.StringIO()))
    apps = {"ner": out / "apps" / "ner-x", "tc": out / "apps" / "tc-y"}
    # what the interrupted run left: the backbone exported, the NER app's folder created but empty
    (out / "onnx" / "backbone").mkdir(parents=True)
    (out / "onnx" / "backbone" / "export.json").write_text("{}")
    (out / "onnx" / "apps" / "ner").mkdir(parents=True)
    demo.export(out / "run", apps)
    assert calls == [out / "onnx", out / "onnx" / "apps" / "ner", out / "onnx" / "apps" / "tc"]
    assert (out / "onnx" / "apps" / "ner" / "export.json").is_file()
    calls.clear()
    demo.export(out / "run", apps)  # finished now: a re-run skips it
    assert calls == []


def test_demo_fresh_deletes_only_a_demo_folder(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("important")
    rc, err = run_cli(["demo", "--fresh", "--out", precious], capsys)
    assert_one_line_error(rc, err, f"--out {precious}: holds files that are not the demo's (thesis.txt)")
    assert (precious / "thesis.txt").read_text() == "important"
    with pytest.raises(SystemExit) as exc:  # refused by argparse, before the label stage runs
        main(["demo", "--out", str(tmp_path / "d"), "--steps", "0"])
    assert exc.value.code == 2 and "argument --steps: must be in [1, ...], got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_refuses_a_folder_made_with_other_settings(tmp_path, capsys):
    """Finished stages are reused on a re-run: with another --steps they would be stale, silently."""
    from rich.console import Console

    from mtpf.demo import SETTINGS, Demo

    out = tmp_path / "demo"
    Demo(out, SAMPLE, None, None, 40, False, True, Console(file=io.StringIO()))
    made = json.loads((out / SETTINGS).read_text())
    assert made["steps"] == 40 and made["ner"] == "sample_news"
    (out / "labels").mkdir()
    rc, err = run_cli(["demo", "--out", out, "--steps", "10"], capsys)
    assert_one_line_error(rc, err, "was made with other settings (steps 40 -> 10); pass --fresh")
    assert (out / "labels").is_dir()
    Demo(out, SAMPLE, None, None, 40, False, True, Console(file=io.StringIO()))  # same settings: resumes
    assert (out / "labels").is_dir()
    Demo(out, SAMPLE, None, None, 10, True, True, Console(file=io.StringIO()))  # --fresh: starts over
    assert not (out / "labels").exists() and json.loads((out / SETTINGS).read_text())["steps"] == 10


# ----------------------------------------------------------------------------------------------- the real console
def test_console_bad_model_path_subprocess(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "mtpf.cli", "adapt", "tc", "--model", str(tmp_path / "nope"),
                           "--data", str(SAMPLE / "cls" / "sample_intents"), "--output", str(tmp_path / "app")],
                          env=env, capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"mtpf adapt: error: model {tmp_path / 'nope'}: no such folder"


def test_demo_puts_both_apps_in_one_tree_and_redoes_an_unmarked_pretrain(tmp_path, monkeypatch):
    from rich.console import Console

    from mtpf.demo import Demo
    from mtpf.downstream import tc
    from mtpf.downstream.suite import app_folder_name
    from mtpf.recipes import pretrain

    out = tmp_path / "demo"
    demo = Demo(out, SAMPLE, None, None, 1, False, False, Console(file=io.StringIO()))
    # pretrain: a run folder whose export was cut (run.json there, no marker) is finished with resume=true
    run_dir = out / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    seen = []

    def fake_run(cfg):
        seen.append(cfg.resume)
        for rel in ("backbone/config.json", "sentence_transformer/modules.json"):
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / rel).write_text("{}")

    monkeypatch.setattr(pretrain, "run", fake_run)
    labels = out / "labels"
    assert demo.pretrain(labels) == run_dir and seen == [True]
    demo.pretrain(labels)
    assert seen == [True]  # marked: skipped
    # apps: the NER app trained by the evaluation and the TC app land side by side under OUT/apps
    ner_src = out / "eval" / "apps" / app_folder_name("MTPF-TPL", "sample_news", 1.0, 42)
    ner_src.mkdir(parents=True)
    (ner_src / "mtpf_app.json").write_text('{"task": "ner"}')

    def fake_adapt_tc(model, dataset, output, *a, **k):
        Path(output).mkdir(parents=True)
        (Path(output) / "mtpf_app.json").write_text('{"task": "tc"}')

    monkeypatch.setattr(tc, "adapt_tc", fake_adapt_tc)
    monkeypatch.setattr("mtpf.downstream.models.resolve", lambda *a, **k: None)
    (out / "apps").mkdir()
    (out / "apps" / "half-written").mkdir()  # what an interrupted stage left
    apps = demo.apps(run_dir)
    assert apps == {"ner": out / "apps" / "ner-sample_news", "tc": out / "apps" / "tc-sample_intents"}
    assert json.loads((apps["ner"] / "mtpf_app.json").read_text())["task"] == "ner"
    assert sorted(p.name for p in (out / "apps").iterdir()) == [".mtpf-done", "ner-sample_news", "tc-sample_intents"]


def test_readme_pretrain_without_labels_says_to_run_mtpf_label_first(tiny_bert, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/labels/raw-k200 here
    rc, err = run_cli(["pretrain", REPO / "configs" / "local" / "mtpf-tpl.yaml", f"model={tiny_bert}",
                       f"output_dir={tmp_path / 'run'}", "tensorboard=false"], capsys)
    assert_one_line_error(rc, err, "runs/labels/raw-k200", "mtpf label")


def test_export_cut_short_is_finished_by_the_same_command(tiny_bert, tmp_path, capsys):
    out = tmp_path / "onnx"
    argv = ["export", tiny_bert, "--onnx", "--out", out]
    from mtpf.stages import begin

    begin(out)  # what Ctrl-C during `mtpf export` leaves: our unfinished folder with a half-written graph
    (out / "model.onnx").write_text("half")
    rc, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert json.loads((out / "export.json").read_text())["files"]["fp32"] == "model.onnx"
    rc, err = run_cli(argv, capsys)  # finished now: a second export needs --overwrite
    assert_one_line_error(rc, err, "--overwrite")


def test_serve_refuses_an_app_named_twice(tmp_path, capsys):
    rc, err = run_cli(["serve", "--backbone", "packaged", "--app", "a=x", "--app", "a=y"], capsys)
    assert_one_line_error(rc, err, "--app a= given twice")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a hang guard, not a speed target
def test_console_ctrl_c_in_pretrain_subprocess(tiny_bert, toy_data, tmp_path):
    """A real SIGINT (what Ctrl-C sends) to a training process: one line, exit 130, checkpoints kept."""
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtpf.cli", "pretrain", *tiny_run_overrides(tiny_bert, toy_data, out, max_steps=5000)]
    # SIGINT back to its default in the child: a test run started in the background (`pytest ... &`) has it
    # ignored, which the child would inherit (Python then installs no KeyboardInterrupt handler: the run trains on)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # any checkpoint, not a named one: only the last two are kept, so step 2 can come and go between two polls
    # on a busy machine (the run then trained on to max_steps and the test hung)
    while not any((out / "checkpoints").glob("step-*")):  # no deadline: pytest-timeout catches a hang
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate()[1]
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].endswith("resume=true to continue from the last one")
    assert not (out / "run.json").exists() and any((out / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("flags,needle", [(["--classifier-args", '{"bogus": 1}'], "bogus"),
                                          (["--classifier-args", "[1]"], "must be a JSON object"),
                                          (["--classifier-args", '{"C": -1}'], "'C' parameter"),
                                          (["--max-iter=-5"], "max_iter")])
def test_bad_classifier_options_fail_before_any_embedding(tiny_bert, tmp_path, capsys, flags, needle):
    cls = SAMPLE / "cls" / "sample_intents"
    rc, err = run_cli(["adapt", "tc", "--model", tiny_bert, "--data", cls, "--output", tmp_path / "app",
                       "--cache-dir", tmp_path / "cache", *flags], capsys)
    assert_one_line_error(rc, err, needle)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "app").exists()  # nothing was embedded
    rc, err = run_cli(["evaluate", "--model", tiny_bert, "--cls", cls, "--output", tmp_path / "e", *flags], capsys)
    assert_one_line_error(rc, err, needle)


@pytest.mark.parametrize("argv", [
    ["adapt", "ner", "--data", "x", "--output", "o", "--threads", "-1"],
    ["evaluate", "--cls", "x", "--output", "o", "--threads", "0"],
    ["serve", "--backbone", "b", "--app", "a=x", "--port", "99999"],
    ["adapt", "tc", "--data", "x", "--output", "o", "--seed=-1"],
    ["label", "--teacher", "t", "--corpus", "c", "--out", "o", "--seed", "abc"],
])
def test_out_of_range_flags_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_out_of_range_values_are_one_line(tiny_bert, tmp_path, capsys):
    cls, ner = SAMPLE / "cls" / "sample_intents", next((SAMPLE / "ner").iterdir())
    rc, err = run_cli(["evaluate", "--model", tiny_bert, "--cls", cls, "--output", tmp_path / "e", "--seeds", "1,-1"],
                      capsys)
    assert_one_line_error(rc, err, "--seeds")
    for flag, value in (("--lora-rank", "0"), ("--lora-dropout", "1.5"), ("--lr", "-1")):
        rc, err = run_cli(["adapt", "ner", "--model", tiny_bert, "--data", ner, "--output", tmp_path / "a",
                           f"{flag}={value}"], capsys)
        assert_one_line_error(rc, err, flag.lstrip("-").replace("-", "_"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c\n")
    rc, err = run_cli(["label", "--teacher", tiny_bert, "--corpus", corpus, "--out", tmp_path / "l", "--device",
                       "cuda:7"], capsys)
    assert_one_line_error(rc, err, "cuda:7")
    rc, err = run_cli(["analyze", tiny_bert, "--ner-data", ner, "--sentences", "0"], capsys)
    assert_one_line_error(rc, err, "--sentences")


def test_more_bad_inputs_are_one_line(tiny_bert, toy_data, tmp_path, capsys):
    """A Latin-1 config, a results.json that is JSON but not one, a path that is nothing, a TC app given as an
    NER app, a finished run folder given again: one line each, exit 2, nothing overwritten."""
    conf = tmp_path / "latin1.yaml"
    conf.write_bytes("strategy: tc\n# caf\xe9\n".encode("latin-1"))
    rc, err = run_cli(["pretrain", conf], capsys)
    assert_one_line_error(rc, err, "latin1.yaml", "not UTF-8")
    bad = tmp_path / "res.json"
    bad.write_text("{}")
    from mtpf.runtime.testing import make_app_adapter

    tc_app = make_app_adapter(tmp_path / "tc", tiny_bert, "tc", lora=False)
    cls = SAMPLE / "cls" / "sample_intents"
    rc, err = run_cli(["evaluate-runtime", "--backbone", tiny_bert, "--label", "x", "--output", tmp_path / "er",
                       "--tc-app", tc_app, "--cls", cls, "--with", bad, "--backend", "torch"], capsys)
    assert_one_line_error(rc, err, "res.json", "not an mtpf evaluate results.json")
    rc, err = run_cli(["evaluate-runtime", "--backbone", tiny_bert, "--label", "x", "--output", tmp_path / "er",
                       "--ner-app", f"{next((SAMPLE / 'ner').iterdir())}={tc_app}", "--backend", "torch"], capsys)
    assert_one_line_error(rc, err, "a TC app, expected an NER app adapter")
    rc, err = run_cli(["export", tmp_path / "nothere", "--onnx"], capsys)
    assert_one_line_error(rc, err, "nothere", "no such folder")
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_run_overrides(tiny_bert, toy_data, out, strategy="tc")]) == 0
    shutil.rmtree(out / "checkpoints")
    before = (out / "pretrain_config.json").read_text()
    rc, err = run_cli(["pretrain", *tiny_run_overrides(tiny_bert, toy_data, out, strategy="tc", lr=0.5)], capsys)
    assert_one_line_error(rc, err, "already holds a finished run")
    assert (out / "pretrain_config.json").read_text() == before


def test_review_bad_inputs_are_one_line(tiny_bert, toy_data, tmp_path, capsys):
    """Found by a review, each a traceback or a late, misleading failure before: label counts of 0, a negative
    TC token limit, an unknown LoRA target, empty or repeated --fractions/--seeds, a max_length that leaves no
    word a label, an analysis set without entities, clusters.json of another shape, a cut run export."""
    from conftest import make_fake_tpl_run

    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c\n")
    for flag in ("--shard-sentences", "--kmeans-batch", "--chunk-words", "--fit-words"):
        with pytest.raises(SystemExit) as exc:  # argparse: before the fit, before any settings are recorded
            main(["label", "--teacher", tiny_bert, "--corpus", str(corpus), "--out", str(tmp_path / "l"), flag, "0"])
        assert exc.value.code == 2 and f"argument {flag}: must be in [1, ...], got 0" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()
    intents, news = SAMPLE / "cls" / "sample_intents", SAMPLE / "ner" / "sample_news"
    for flags, needle in ((["--cls", intents, "--tc-max-length", "-5"], "max_length (--tc-max-length) must be >= 8"),
                          (["--cls", intents, "--max-iter", "0"], "max_iter and batch_size must be >= 1"),
                          (["--ner", news, "--lora-targets", "query,foo"], "lora_targets: unknown ['foo']; choose"),
                          (["--ner", news, "--fractions", ""], "give at least one NER train fraction"),
                          (["--ner", news, "--fractions", "1,1.0"], "--fractions lists a value twice"),
                          (["--ner", news, "--seeds", "42,42"], "--seeds lists a value twice")):
        rc, err = run_cli(["evaluate", "--model", f"m={tiny_bert}", "--output", tmp_path / "ev", *flags], capsys)
        assert_one_line_error(rc, err, needle)
    assert not (tmp_path / "ev" / "results.json").exists()
    rc, err = run_cli(["pretrain", *tiny_run_overrides(tiny_bert, toy_data, tmp_path / "run", max_length=2)], capsys)
    assert_one_line_error(rc, err, "max_length must be >= 8, got 2")
    no_entities = tmp_path / "o-ner"
    no_entities.mkdir()
    (no_entities / "test.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "O"]}) + "\n")
    rc, err = run_cli(["analyze", tiny_bert, "--ner-data", no_entities, "--sentences", "2"], capsys)
    assert_one_line_error(rc, err, "test.jsonl", "no test sentence has an entity")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "clusters.json").write_text("[1, 2]")
    rc, err = run_cli(["label", "--corpus", corpus, "--out", tmp_path / "l2", "--reuse-clusters", odd], capsys)
    assert_one_line_error(rc, err, "clusters.json", "not a clusters.json written by mtpf label")
    rc, err = run_cli(["label", "inspect", odd], capsys)
    assert_one_line_error(rc, err, "clusters.json", "cannot read the number of clusters")
    rc, err = run_cli(["label", "--teacher", tmp_path / "nothing", "--corpus", corpus, "--out", tmp_path / "l3"],
                      capsys)
    assert_one_line_error(rc, err, f"model {tmp_path / 'nothing'}: no such folder")
    assert str(tmp_path / "l3") not in err
    run = Path(make_fake_tpl_run(tiny_bert, tmp_path / "cut"))
    (run / "run.json").unlink()  # what an export cut between its files and run.json leaves
    for argv in (["evaluate", "--model", f"m={run}", "--cls", intents, "--output", tmp_path / "ev2"],
                 ["export", run, "--onnx", "--out", tmp_path / "onnx"]):
        rc, err = run_cli(argv, capsys)
        assert_one_line_error(rc, err, "an unfinished mtpf run", "resume=true")


def test_export_of_an_app_with_a_malformed_lora_config_is_one_line(tiny_bert, tmp_path, capsys):
    from conftest import make_fake_tpl_run

    run = make_fake_tpl_run(tiny_bert, tmp_path / "run")
    app = tmp_path / "app"
    assert main(["adapt", "tc", "--model", run, "--data", str(SAMPLE / "cls" / "sample_intents"), "--output",
                 str(app)]) == 0
    cfg = json.loads((app / "adapter_config.json").read_text())
    (app / "adapter_config.json").write_text(json.dumps({**cfg, "r": "x"}))
    capsys.readouterr()
    for fmt in ("--hf", "--onnx"):
        rc, err = run_cli(["export", app, fmt], capsys)
        assert_one_line_error(rc, err, str(app), "cannot load its LoRA")
    (app / "adapter_config.json").write_text("{broken")
    rc, err = run_cli(["export", app, "--hf", "--overwrite"], capsys)
    assert_one_line_error(rc, err, "adapter_config.json", "cannot read it as JSON")


def test_model_card_metrics_refuse_a_foreign_results_file(tmp_path):
    from mtpf.cards import results_metrics
    from mtpf.config import ConfigError

    bad = tmp_path / "res.json"
    bad.write_text(json.dumps({"cells": 5}))
    with pytest.raises(ConfigError, match=r"res\.json: not an mtpf evaluate results\.json"):
        results_metrics(bad, "sha256:x")
