"""Every output folder is a good Hub citizen: model cards with YAML metadata, warning-free loads, portable
adapters, `mtpf push` (upload intercepted), and `--mteb-tasks` offline as one clear line."""
import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_run_overrides

from mtpf.cli import main as cli_main

HUB_BASE = "hf-internal-testing/tiny-random-bert"


@pytest.fixture(scope="module")
def run_dir(tiny_bert, toy_data, tmp_path_factory):
    """A 2-step mtpf-tpl run on a tiny backbone whose own card names a hub base model."""
    from huggingface_hub import ModelCard, ModelCardData

    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, run

    root = tmp_path_factory.mktemp("cards")
    base = root / "base"
    shutil.copytree(tiny_bert, base)
    ModelCard(f"---\n{ModelCardData(base_model=HUB_BASE).to_yaml()}\n---\n# tiny\n").save(base / "README.md")
    run(load_config(PretrainConfig, None, tiny_run_overrides(str(base), toy_data, root / "run",
                                                             strategy="mtpf-tpl")))
    return root / "run"


def _card(folder):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def test_run_folders_load_without_newly_initialised_weights(run_dir):
    from transformers import AutoModel

    for folder in (run_dir / "backbone", run_dir / "sentence_transformer"):
        _, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
        assert not info["missing_keys"], (folder, info["missing_keys"])  # the pooler is saved


def test_run_adapters_record_a_relative_base_model(run_dir):
    from peft import PeftModel
    from transformers import AutoModel

    from mtpf.downstream.models import resolve_base_model

    for task in ("ner", "tc"):
        folder = run_dir / "adapters" / task
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == "../../backbone"
        assert resolve_base_model(folder) == str((run_dir / "backbone").resolve())
        PeftModel.from_pretrained(AutoModel.from_pretrained(str(folder / base)), str(folder))


def test_every_run_folder_has_a_model_card_with_hub_metadata(run_dir):
    run = json.loads((run_dir / "run.json").read_text())
    # the root: no library loads it whole; task-primary adapters: their base is the run's own pre-finetuned
    # backbone (on the Hub under no id), so the card names none (the Hub would load the LoRA onto HUB_BASE)
    for folder, library, base in [(run_dir, None, HUB_BASE), (run_dir / "backbone", "transformers", HUB_BASE),
                                  (run_dir / "adapters" / "ner", "peft", None),
                                  (run_dir / "adapters" / "tc", "peft", None),
                                  (run_dir / "sentence_transformer", "sentence-transformers", HUB_BASE)]:
        card = _card(folder)
        assert card.data.base_model == base, folder
        assert card.data.library_name == library and "mtpf" in card.data.tags
        assert "pairs" in " ".join(card.data.datasets or []) or "news" in (card.data.datasets or []), card.data
        if base is None:
            assert f"pre-finetuned from `{HUB_BASE}`" in card.text
    assert run["command"].startswith("python -m pytest")  # the command that made the run
    assert run["command"] in _card(run_dir).text


def test_run_card_takes_its_backbones_scores_from_results_json(run_dir, tmp_path):
    from mtpf.cards import run_card

    fp = json.loads((run_dir / "run.json").read_text())["backbone_fingerprint"]
    cells = [{"model": "run", "task": "ner", "dataset": "conll2003", "fraction": 1.0, "seed": s, "main_metric": "f1",
              "main_score": v, "backbone_fingerprint": fp} for s, v in ((1, 0.8), (2, 0.9))]
    cells.append({"model": "other", "task": "tc", "dataset": "banking77", "fraction": 1.0, "seed": 1,
                  "main_metric": "accuracy",
                  "main_score": 0.5, "backbone_fingerprint": "sha256:other-model"})
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"models": [], "cells": cells}))
    run_card(run_dir, results_json=results, command="mtpf pretrain cfg.yaml")
    card = _card(run_dir)
    evals = card.data.eval_results
    assert [(e.dataset_name, e.metric_type, round(e.metric_value, 6)) for e in evals] == [("conll2003", "f1", 0.85)]
    assert "mtpf pretrain cfg.yaml" in card.text and "banking77" not in card.content


def test_app_folders_get_a_card_and_a_relative_base_model(tiny_bert, tmp_path):
    from mtpf.downstream.models import finish_app, resolve, resolve_base_model
    from mtpf.runtime.testing import make_app_adapter

    app = make_app_adapter(tmp_path / "apps" / "ner", tiny_bert, "ner")
    meta = json.loads((tmp_path / "apps" / "ner" / "mtpf_app.json").read_text())
    meta["metrics"] = {"test": {"f1": 0.75, "precision": 0.7}}
    meta["training"] = {"dataset": "conll2003", "model": "packaged"}
    (tmp_path / "apps" / "ner" / "mtpf_app.json").write_text(json.dumps(meta))
    finish_app(app, resolve(tiny_bert))
    recorded = json.loads((tmp_path / "apps" / "ner" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not recorded.startswith("/") and resolve_base_model(app) == str(Path(tiny_bert).resolve())
    card = _card(tmp_path / "apps" / "ner")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # trained from `packaged`
    assert card.data.datasets == ["conll2003"] and card.data.pipeline_tag == "token-classification"
    assert {(e.dataset_split, e.metric_type, e.metric_value) for e in card.data.eval_results} == {
        ("test", "f1", 0.75), ("test", "precision", 0.7)}


def test_apps_of_a_run_name_their_folder_and_no_foreign_base(run_dir, tiny_bert, tmp_path):
    """`mtpf adapt tc` writes its app in a temporary folder first: the card still names the final folder, and
    an app trained on a pre-finetuned backbone names no hub model as its base (only its lineage, in the text);
    a head-only app is no library's folder."""
    from mtpf.downstream.data import load_cls_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.tc import TCConfig, adapt_tc
    from mtpf.runtime.testing import make_app_adapter

    cls = Path(__file__).resolve().parents[1] / "src" / "mtpf" / "sample_data" / "cls" / "sample_intents"
    for use_adapter, name in ((True, "intents-lora"), (False, "intents-head")):
        adapt_tc(resolve(str(run_dir)), load_cls_dataset(str(cls)), tmp_path / name,
                 TCConfig(use_adapter=use_adapter), progress=False)
        card = _card(tmp_path / name)
        assert card.data.model_name == name and f'register_app("app", "{name}")' in card.text
        assert card.data.base_model is None and f"pre-finetuned from `{HUB_BASE}`" in card.text
        assert card.data.library_name == ("peft" if use_adapter else None)
    # trained on the hub model itself (here: `packaged`), the base is exact and named
    packaged_app = make_app_adapter(tmp_path / "on-packaged", tiny_bert, "tc", lora=False)
    meta = json.loads((Path(packaged_app) / "mtpf_app.json").read_text())
    meta["training"] = {"model": "packaged"}
    (Path(packaged_app) / "mtpf_app.json").write_text(json.dumps(meta))
    from mtpf.cards import app_card

    app_card(packaged_app)
    assert _card(Path(packaged_app)).data.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_push_uploads_the_folder_with_huggingface_hub(run_dir, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload_folder", kw)) or "https://hub/commit/1")
    assert cli_main(["push", str(run_dir), "--repo-id", "me/my-run", "--private"]) == 0
    (_, repo, create_kw), (_, up) = calls
    assert repo == "me/my-run" and create_kw["private"] is True and create_kw["exist_ok"] is True
    assert up["repo_id"] == "me/my-run" and up["folder_path"] == str(run_dir) and up["repo_type"] == "model"
    assert "checkpoints/**" in up["ignore_patterns"]
    assert (run_dir / "README.md").is_file()


def test_push_refuses_a_folder_that_is_not_an_output_with_one_line(tmp_path, capsys):
    assert cli_main(["push", str(tmp_path), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an mtpf run, adapter, app or model folder" in err[0]


def test_mteb_tasks_offline_is_one_clear_line_and_exit_2(tiny_bert, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mteb")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = cli_main(["evaluate", "--model", f"tiny={tiny_bert}", "--mteb-tasks", "Banking77Classification",
                     "--output", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # (mteb's progress bars aside)
    assert len(errors) == 1 and "--mteb-tasks needs the Hugging Face Hub" in errors[0], err


def test_onnx_export_folders_get_cards(run_dir, tmp_path):
    from mtpf.runtime.export_cli import export_path

    reports = export_path(str(run_dir), out=str(tmp_path / "onnx"))
    assert len(reports) == 3  # backbone + ner + tc adapters
    for folder in reports:
        card = _card(Path(folder))
        assert card.data.library_name == "onnx" and card.data.base_model == HUB_BASE
    # the folder feeds itself: tokenizer and config beside the graph, as the card's usage shows
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(next(iter(reports)))
    tok = AutoTokenizer.from_pretrained(folder)
    assert AutoConfig.from_pretrained(folder).model_type == "bert"
    session = ort.InferenceSession(str(folder / "model.onnx"))
    enc = tok(["I lost my card"], return_tensors="np")
    out = session.run(None, {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    assert out.shape[:2] == enc["input_ids"].shape


def test_push_without_the_hub_is_one_line_and_exit_2(run_dir, capsys):
    """Tests run with HF_HUB_OFFLINE=1 (conftest): the real huggingface_hub call fails as it would offline."""
    assert cli_main(["push", str(run_dir / "backbone"), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "upload to me/x failed" in err[0], err


def test_a_hub_that_drops_the_connection_is_a_network_error(monkeypatch):
    """huggingface_hub 2.x raises httpx2's errors (their own classes, not httpx's): a server that reads the request
    and closes the connection must still read as a network failure (push's one line, not a traceback)."""
    import socket
    import threading

    from huggingface_hub import HfApi

    from mtpf.downstream.mteb_run import is_network_error

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a local server, not the Hub
    try:
        with pytest.raises(Exception) as info:
            HfApi(endpoint=f"http://127.0.0.1:{srv.getsockname()[1]}", token="hf_x").create_repo("a/b", exist_ok=True)
    finally:
        srv.close()
    assert "Offline" not in type(info.value).__name__ and is_network_error(info.value), repr(info.value)
    assert not is_network_error(ValueError("not the network"))


def test_hub_base_model_keeps_hub_ids_and_drops_missing_paths(tmp_path):
    from mtpf.cards import PACKAGED_HUB_ID, hub_base_model

    assert hub_base_model("packaged") == PACKAGED_HUB_ID
    assert hub_base_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_base_model("bert-base-uncased") == "bert-base-uncased"
    # a run's config.model that was a path relative to another working directory is not a Hub id
    for gone in ("runs/s42/PF_for_NER", "../runs/x", "~/models/x", str(tmp_path / "gone"), "my model"):
        assert hub_base_model(gone) is None, gone
