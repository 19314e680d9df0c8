"""End to end on a tiny random encoder: a few sentences of CoNLL-2003 and Banking77 from ../shared/data, a fake
mtpf run with task-primary adapters, 1 epoch per stage; all outputs written, a resumed run recomputes nothing;
app adapters saved in the docs/formats.md layout and loadable."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch


def _head(path: Path, n: int) -> list[dict]:
    from mtpf.data.io import iter_jsonl

    out = []
    for _, obj in iter_jsonl(path):
        out.append(obj)
        if len(out) >= n:
            break
    return out


def _write(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def small_data(shared_data, tmp_path_factory) -> dict:
    """Working copies of a few rows (in tmp, never in the repo)."""
    root = tmp_path_factory.mktemp("small-data")
    conll = shared_data / "ner" / "conll2003"
    for split, n in (("train", 24), ("dev", 8), ("test", 8)):
        _write(root / "conll2003" / f"{split}.jsonl", _head(conll / f"{split}.jsonl", n))
    bank = shared_data / "cls" / "banking77"
    keep = {"card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"}
    from mtpf.data.io import iter_jsonl

    for split, per in (("train", 10), ("test", 3)):
        rows, count = [], {}
        for _, obj in iter_jsonl(bank / f"{split}.jsonl"):
            if obj["label"] in keep and count.get(obj["label"], 0) < per:
                rows.append(obj)
                count[obj["label"]] = count.get(obj["label"], 0) + 1
        _write(root / "banking77" / f"{split}.jsonl", rows)
    return {"ner": str(root / "conll2003"), "cls": str(root / "banking77")}


@pytest.fixture(scope="module")
def fake_run(tiny_bert, tmp_path_factory) -> str:
    """An mtpf-tpl-style run folder written by the engine's own exporter (adapters on the last layer)."""
    from conftest import make_fake_tpl_run

    return make_fake_tpl_run(tiny_bert, tmp_path_factory.mktemp("fake-run"))


def test_run_folder_resolution(fake_run):
    from mtpf.downstream.models import resolve

    m = resolve(fake_run, "MTPF-TPL")
    assert m.kind == "run" and set(m.adapters) == {"ner", "tc"} and m.normalize
    assert m.backbone_fingerprint() == json.loads((Path(fake_run) / "run.json").read_text())["backbone_fingerprint"]
    assert m.fingerprint("tc") != m.fingerprint("ner") != m.fingerprint(None)


@pytest.mark.slow
def test_suite_end_to_end_and_resume(tiny_bert, fake_run, small_data, tmp_path, capsys):
    from mtpf.cli import main

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", f"Base model={tiny_bert}", "--model", f"MTPF-TPL={fake_run}",
            "--ner", small_data["ner"], "--cls", small_data["cls"], "--fractions", "1.0,0.5",
            "--epochs-warmup", "1", "--epochs", "1", "--batch-size", "8", "--lora-rank", "32",
            "--samples-per-label", "2", "--n-experiments", "3", "--output", str(out), "--no-progress",
            "--allow-unseen-labels", "--save-apps"]
    assert main(argv) == 0
    for name in ("results.json", "tables.md", "tables.csv", "chart.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    assert len(cells) == 2 * (2 + 1)  # models x (2 NER fractions + 1 TC)
    for c in cells:
        assert {"dataset", "split", "fraction", "seed", "model_fingerprint", "config", "metrics"} <= set(c)
    ner_tpl = [c for c in cells if c["task"] == "ner" and c["model"] == "MTPF-TPL"]
    assert all(len(c["initialised_modules"]) == 4 for c in ner_tpl)  # q, k, 2 x MLP of the last layer
    assert all(c["selection"] == "dev" for c in ner_tpl)
    from mtpf.downstream.models import resolve

    tpl = resolve(fake_run, "MTPF-TPL")  # NER cells use the ner adapter only, TC cells the tc adapter only
    assert {c["model_fingerprint"] for c in ner_tpl} == {tpl.fingerprint("ner")}
    assert {c["model_fingerprint"] for c in cells if c["task"] == "tc" and c["model"] == "MTPF-TPL"} == \
        {tpl.fingerprint("tc")}
    md = (out / "tables.md").read_text()
    assert "NER (1 DS)" in md and "TC (1 DS)" in md and "Data Portion" in md and "MTPF-TPL" in md
    apps = sorted((out / "apps").iterdir())
    assert len(apps) == 4
    capsys.readouterr()

    assert main(argv) == 0  # resume: nothing recomputed
    assert "ran 0 cells, reused 6" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())["cells"]
    assert [c["finished"] for c in again] == [c["finished"] for c in cells]

    import shutil

    shutil.rmtree(apps[0])  # e.g. results.json restored into a fresh folder: the cell runs again for its app
    assert main(argv) == 0
    assert "ran 1 cells, reused 5" in capsys.readouterr().out
    assert (apps[0] / "mtpf_app.json").is_file()
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 6  # one record per cell
    # an app folder of the same name trained with another recipe (the name does not hold the config) is no
    # app of this cell: the cell runs again and replaces it
    meta = json.loads((apps[1] / "mtpf_app.json").read_text())
    keys = {c["key"] for c in json.loads((out / "results.json").read_text())["cells"]}
    assert meta["training"]["cell_key"] in keys
    meta["training"]["cell_key"] = "a cell of another recipe"
    (apps[1] / "mtpf_app.json").write_text(json.dumps(meta))
    assert main(argv) == 0
    assert "ran 1 cells, reused 5" in capsys.readouterr().out
    assert json.loads((apps[1] / "mtpf_app.json").read_text())["training"]["cell_key"] in keys
    # a folder written before apps recorded their cell (no cell_key) still counts when its test metrics are
    # its cell's: an older evaluation folder is not retrained
    meta = json.loads((apps[2] / "mtpf_app.json").read_text())
    del meta["training"]["cell_key"]
    (apps[2] / "mtpf_app.json").write_text(json.dumps(meta))
    assert main(argv) == 0
    assert "ran 0 cells, reused 6" in capsys.readouterr().out

    # a changed config recomputes only the affected cells (TC here)
    argv2 = [a if a != "3" else "4" for a in argv]
    assert main(argv2) == 0
    assert "ran 2 cells, reused 4" in capsys.readouterr().out


def test_ner_app_adapter_round_trip(fake_run, small_data, tmp_path):
    """The saved app (PEFT LoRA + head + label map) reproduces the in-memory model's predictions."""
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import (
        NerConfig,
        encode_ner,
        load_ner_app,
        predict_words,
        save_ner_app,
        train_ner,
    )
    from mtpf.encoder import load_tokenizer

    ds = load_ner_dataset(small_data["ner"], allow_unseen_labels=True)
    m = resolve(fake_run, "MTPF-TPL")
    res = train_ner(m, ds, NerConfig(epochs_warmup=1, epochs=1, batch_size=8, lr=1e-3), progress=False,
                    keep_model=True)
    meta = save_ner_app(res, m, tmp_path / "app")
    app = tmp_path / "app"
    assert {"mtpf_app.json", "adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= \
        {p.name for p in app.iterdir()}
    assert meta["task"] == "ner" and meta["labels"] == ds.labels and meta["has_lora"]
    assert meta["backbone_fingerprint"] == m.backbone_fingerprint()
    loaded, _ = load_ner_app(app, m.backbone)
    tok = load_tokenizer(m.backbone)
    enc = encode_ner(tok, ds.splits["test"].tokens, None, res.max_length)
    assert predict_words(loaded, enc, tok.pad_token_id) == predict_words(res.model, enc, tok.pad_token_id)


def test_tc_app_adapter(fake_run, small_data, tmp_path):
    from safetensors.torch import load_file

    from mtpf.downstream.data import load_cls_dataset
    from mtpf.downstream.models import load_tc_encoder, resolve
    from mtpf.downstream.tc import TCConfig, adapt_tc
    from mtpf.encoder import load_tokenizer, mean_pool

    ds = load_cls_dataset(small_data["cls"])
    m = resolve(fake_run, "MTPF-TPL")
    meta = adapt_tc(m, ds, tmp_path / "app", TCConfig(), progress=False)
    app = tmp_path / "app"
    assert meta["has_lora"] and (app / "adapter_model.safetensors").is_file()
    assert meta["labels"] == sorted(ds.label_names) and meta["normalize"] is True
    head = load_file(str(app / "head.safetensors"))
    assert head["weight"].shape == (4, 32) and head["bias"].shape == (4,)
    # the runtime's recipe (tc LoRA active, mean pool, L2-normalise, linear head) reproduces the test accuracy
    from peft import PeftModel

    from mtpf.encoder import load_encoder

    enc = PeftModel.from_pretrained(load_encoder(m.backbone), str(app)).eval()
    tok = load_tokenizer(m.backbone)
    texts, labels = ds.splits["test"].texts, ds.splits["test"].labels
    batch = tok(texts, padding=True, truncation=True, max_length=meta["max_length"], return_tensors="pt")
    with torch.no_grad():
        emb = mean_pool(enc(**batch).last_hidden_state, batch["attention_mask"])
        emb = torch.nn.functional.normalize(emb, dim=-1)
        pred = (emb @ head["weight"].T + head["bias"]).argmax(-1)
    acc = float(np.mean([meta["labels"][p] == y for p, y in zip(pred.tolist(), labels)]))
    assert acc == pytest.approx(meta["metrics"]["test"]["accuracy"])
    merged = load_tc_encoder(m)
    with torch.no_grad():
        emb2 = torch.nn.functional.normalize(mean_pool(merged(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)
    assert torch.allclose(emb, emb2, atol=1e-5)


def test_binary_tc_head_reproduces_logistic_regression_probabilities(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    from mtpf.downstream.data import load_cls_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.tc import TCConfig, adapt_tc

    rows = [{"text": f"{w} number {i}", "label": lab} for i in range(12) for w, lab in (("good", "pos"), ("bad", "neg"))]
    _write(tmp_path / "d" / "train.jsonl", rows)
    _write(tmp_path / "d" / "test.jsonl", rows[:6])
    meta = adapt_tc(resolve(tiny_bert), load_cls_dataset(str(tmp_path / "d")), tmp_path / "app", TCConfig(),
                    progress=False)
    head = load_file(str(tmp_path / "app" / "head.safetensors"))
    assert head["weight"].shape[0] == 2 and meta["labels"] == ["neg", "pos"]
    assert torch.allclose(head["weight"][0], -head["weight"][1])


def test_cli_reports_bad_data_cleanly(tiny_bert, tmp_path, capsys):
    from mtpf.cli import main

    _write(tmp_path / "bad" / "train.jsonl", [{"tokens": ["Paris"], "tags": ["S-LOC"]}])
    _write(tmp_path / "bad" / "test.jsonl", [{"tokens": ["Paris"], "tags": ["B-LOC"]}])
    rc = main(["evaluate", "--model", tiny_bert, "--ner", str(tmp_path / "bad"), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.jsonl:1" in err and "BIOES" in err and "Traceback" not in err
    rc = main(["adapt", "tc", "--model", tiny_bert, "--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "a")])
    assert rc == 2 and "not a local folder" in capsys.readouterr().err


def test_apps_load_in_the_runtime(fake_run, small_data, tmp_path):
    """The app adapters written here register in mtpf.runtime and give the same TC predictions."""
    runtime = pytest.importorskip("mtpf.runtime.core")
    from mtpf.downstream.data import load_cls_dataset, load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, save_ner_app, train_ner
    from mtpf.downstream.tc import TCConfig, adapt_tc

    m = resolve(fake_run, "MTPF-TPL")
    cls = load_cls_dataset(small_data["cls"])
    meta = adapt_tc(m, cls, tmp_path / "tc", TCConfig(), progress=False)
    ner = load_ner_dataset(small_data["ner"], allow_unseen_labels=True)
    res = train_ner(m, ner, NerConfig(epochs_warmup=1, epochs=0, batch_size=8, lr=1e-3), progress=False,
                    keep_model=True)
    save_ner_app(res, m, tmp_path / "ner")
    rt = runtime.Runtime(m.backbone, batching=False)
    try:
        rt.register_app("tc", tmp_path / "tc")
        rt.register_app("ner", tmp_path / "ner")
        texts, gold = cls.splits["test"].texts, cls.splits["test"].labels
        pred = [r["label"] for r in rt.classify("tc", texts)]
        acc = float(np.mean([p == g for p, g in zip(pred, gold)]))
        assert acc == pytest.approx(meta["metrics"]["test"]["accuracy"])
        assert len(rt.extract_entities("ner", [" ".join(ner.splits["test"].tokens[0])])) == 1
    finally:
        rt.close()


def test_runtime_row_scores_what_the_suite_scores(fake_run, small_data, tmp_path, one_torch_thread):
    """`mtpf evaluate-runtime`: the same app served by the runtime gets the suite's own NER F1 and TC accuracy
    (PyTorch backend: exactly; ONNX fp32: the same tags and accuracy), and a re-run recomputes nothing."""
    from mtpf.cli import main
    from mtpf.downstream.data import load_cls_dataset, load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, save_ner_app, train_ner
    from mtpf.downstream.runtime_eval import evaluate_runtime
    from mtpf.downstream.tc import Embedder, TCConfig, adapt_tc, evaluate_tc

    m = resolve(fake_run, "MTPF-TPL")
    ner = load_ner_dataset(small_data["ner"], allow_unseen_labels=True)
    res = train_ner(m, ner, NerConfig(epochs_warmup=1, epochs=1, batch_size=8, lr=1e-3), progress=False,
                    keep_model=True)
    save_ner_app(res, m, tmp_path / "ner")
    cls = load_cls_dataset(small_data["cls"])
    adapt_tc(m, cls, tmp_path / "tc", TCConfig(), progress=False)
    suite_tc = evaluate_tc(Embedder(m, TCConfig()), cls, TCConfig())

    scores = {}
    for backend, int8 in (("torch", False), ("onnx", False)):
        out = tmp_path / f"rt-{backend}"
        results = evaluate_runtime(m.backbone, f"runtime {backend}", out, ner_apps=[(small_data["ner"], str(tmp_path / "ner"))],
                                   tc_app=str(tmp_path / "tc"), cls=[small_data["cls"]], backend=backend, int8=int8,
                                   onnx_dir=str(tmp_path / "onnx"), progress=False)
        by_task = {c["task"]: c for c in results["cells"]}
        assert set(by_task) == {"ner", "tc"} and by_task["ner"]["windowed_sentences"] == 0
        scores[backend] = (by_task["ner"]["main_score"], by_task["tc"]["main_score"])
    assert scores["torch"][0] == pytest.approx(res.test["f1"])
    assert scores["torch"][1] == pytest.approx(suite_tc["accuracy"])
    assert scores["onnx"] == pytest.approx(scores["torch"])

    # the CLI resumes (no new cell) and writes the tables with the given row label
    before = json.loads((tmp_path / "rt-torch" / "results.json").read_text())["cells"]
    rc = main(["evaluate-runtime", "--backbone", m.backbone, "--label", "runtime torch", "--backend", "torch",
               "--ner-app", f"{small_data['ner']}={tmp_path / 'ner'}", "--tc-app", str(tmp_path / "tc"),
               "--cls", small_data["cls"], "--output", str(tmp_path / "rt-torch"), "--no-progress"])
    assert rc == 0
    after = json.loads((tmp_path / "rt-torch" / "results.json").read_text())["cells"]
    assert [c["key"] for c in after] == [c["key"] for c in before]
    assert "runtime torch" in (tmp_path / "rt-torch" / "tables.md").read_text()
    # a new --label renames the row (its cells are reused, not shown as "—"); an app changed in place (retrained
    # with --overwrite) is scored again: cells are keyed by the app's content, not its folder
    from safetensors.numpy import load_file, save_file

    head = tmp_path / "ner" / "head.safetensors"
    weights = load_file(str(head))
    save_file({**weights, "bias": weights["bias"] + 0.5}, str(head))  # as a retrain would: other weights
    (tmp_path / "tc" / "hf").mkdir()  # an export beside the TC app's files: not what it computes, cell reused
    (tmp_path / "tc" / "hf" / "model.safetensors").write_bytes(b"not read")
    rc = main(["evaluate-runtime", "--backbone", m.backbone, "--label", "int8 later", "--backend", "torch",
               "--ner-app", f"{small_data['ner']}={tmp_path / 'ner'}", "--tc-app", str(tmp_path / "tc"),
               "--cls", small_data["cls"], "--output", str(tmp_path / "rt-torch"), "--no-progress"])
    assert rc == 0
    cells = json.loads((tmp_path / "rt-torch" / "results.json").read_text())["cells"]
    assert len(cells) == 3 and [c["model"] for c in cells if c["task"] == "tc"] == ["int8 later"]
    rows = [line for line in (tmp_path / "rt-torch" / "tables.md").read_text().splitlines()
            if line.startswith("| int8 later |")]
    assert rows and "—" not in rows[0]


def test_tag_words_keeps_the_given_words(fake_run, small_data, tmp_path):
    """Runtime.tag_words tags pre-split words (CoNLL tokens) exactly as the adapted model predicts them."""
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, encode_ner, predict_words, save_ner_app, train_ner
    from mtpf.encoder import load_tokenizer
    from mtpf.runtime import Runtime

    m = resolve(fake_run, "MTPF-TPL")
    ner = load_ner_dataset(small_data["ner"], allow_unseen_labels=True)
    res = train_ner(m, ner, NerConfig(epochs_warmup=1, epochs=0, batch_size=8, lr=1e-3), progress=False,
                    keep_model=True)
    save_ner_app(res, m, tmp_path / "ner")
    sentences = ner.splits["test"].tokens + [["U.S.", "talks", "in", "New", "York"], []]
    tok = load_tokenizer(m.backbone)
    expected = predict_words(res.model, encode_ner(tok, sentences, None, res.max_length), tok.pad_token_id)
    with Runtime(m.backbone) as rt:
        rt.register_app("ner", tmp_path / "ner")
        tags = rt.tag_words("ner", sentences)
        with pytest.raises(TypeError):
            rt.tag_words("ner", [["ok", 3]])
    assert [len(t) for t in tags] == [len(s) for s in sentences]
    assert tags == [[res.labels[c] for c in row] for row in expected]


def test_windowed_sentences_counts_those_past_the_apps_limit(tiny_bert):
    """evaluate-runtime's `windowed_sentences`: sentences whose tokens (with [CLS]/[SEP]) exceed the app's limit."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from mtpf.downstream.runtime_eval import _windowed_sentences

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rt = SimpleNamespace(tokenizer=tok, model_max_length=512, app_info=lambda app: {"max_length": 8})
    sentences = [["a"] * 6, ["a"] * 7, ["the", "cat"], ["a"] * 30]  # 8, 9, 4, 32 tokens with [CLS]/[SEP]
    assert [len(tok(s, is_split_into_words=True)["input_ids"]) for s in sentences] == [8, 9, 4, 32]
    assert _windowed_sentences(rt, "app", sentences) == 2
    rt.model_max_length = 4  # the backbone's limit applies when it is the smaller one
    assert _windowed_sentences(rt, "app", sentences) == 3
