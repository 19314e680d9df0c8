"""The recipe end to end on a tiny model: every strategy, the run folder's formats, bad input."""
import json

import pytest
import torch
from conftest import tiny_run_overrides

from mtpf.cli import main as cli_main
from mtpf.config import ConfigError, load_config
from mtpf.data.io import DataError
from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe, run


def _cfg(tiny, data, out, **extra):
    return load_config(PretrainConfig, None, tiny_run_overrides(tiny, data, out, **extra))


@pytest.mark.parametrize("strategy", ["ner", "tc", "mtpf", "mtpf-tpl", "pf-lora"])
def test_every_strategy_trains_and_exports(tiny_bert, toy_data, tmp_path, strategy):
    from transformers import AutoModel

    info = run(_cfg(tiny_bert, toy_data, tmp_path / "run", strategy=strategy))
    out = tmp_path / "run"
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    tasks = {"ner": ["ner"], "tc": ["tc"]}.get(strategy, ["ner", "tc"])
    for t in tasks:
        assert all(torch.isfinite(torch.tensor(m[f"loss_{t}"])) for m in metrics)
    assert all(m["tokens_per_s"] > 0 for m in metrics)
    AutoModel.from_pretrained(out / "backbone")
    assert sorted(info["adapters"]) == (sorted(tasks) if strategy in ("mtpf-tpl", "pf-lora") else [])
    assert ("ner_clusters" in info["heads"]) == ("ner" in tasks)
    if strategy == "pf-lora":  # frozen backbone: exported weights equal the base model's
        from mtpf.encoder import fingerprint_backbone

        assert info["backbone_fingerprint"] == fingerprint_backbone(tiny_bert)


def test_run_folder_loads_in_the_ecosystem_and_reproduces_training_outputs(tiny_bert, toy_data, tmp_path):
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    from mtpf.encoder import fingerprint_backbone, load_encoder, load_tokenizer, mean_pool

    cfg = _cfg(tiny_bert, toy_data, tmp_path / "run", strategy="mtpf-tpl", **{"tpl.tc.layers": 1})
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.train()
    info = recipe.export()
    out = tmp_path / "run"
    tok = load_tokenizer(str(out / "backbone"))
    texts = ["Obama visited Berlin on Monday .", "a cheap Italian place near downtown"]
    batch = tok(texts, padding=True, return_tensors="pt")
    trained = recipe.accelerator.unwrap_model(recipe.model).eval()
    with torch.no_grad():
        want_tc = trained("tc", **batch)
        want_ner = trained("ner", **batch)

    run_json = json.loads((out / "run.json").read_text())
    fp = fingerprint_backbone(out / "backbone")
    assert run_json["backbone_fingerprint"] == fp
    assert set(run_json["data_fingerprints"]) and all(v.startswith("sha256:") for v in run_json["data_fingerprints"].values())
    assert run_json["versions"]["torch"] == torch.__version__
    for task in ("ner", "tc"):
        meta = json.loads((out / "adapters" / task / "mtpf_adapter.json").read_text())
        assert meta["backbone_fingerprint"] == fp and meta["task"] == task

    backbone = load_encoder(str(out / "backbone")).eval()
    tc_model = PeftModel.from_pretrained(backbone, str(out / "adapters" / "tc")).eval()
    with torch.no_grad():
        got_tc = mean_pool(tc_model(**batch).last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(got_tc, want_tc, rtol=1e-5, atol=1e-5)

    ner_model = PeftModel.from_pretrained(load_encoder(str(out / "backbone")).eval(), str(out / "adapters" / "ner"))
    from safetensors.torch import load_file

    head = load_file(str(out / "heads" / "ner_clusters" / "head.safetensors"))
    with torch.no_grad():
        hidden = ner_model.eval()(**batch).last_hidden_state
    torch.testing.assert_close(hidden @ head["weight"].T + head["bias"], want_ner, rtol=1e-5, atol=1e-5)

    st = SentenceTransformer(str(out / "sentence_transformer"), device="cpu")
    emb = torch.tensor(st.encode(texts))
    torch.testing.assert_close(emb, torch.nn.functional.normalize(want_tc, dim=-1), rtol=1e-4, atol=1e-5)
    assert info["sentence_transformer"].endswith("sentence_transformer")


def test_the_run_keeps_its_sentence_transformers_base_models_token_limit(tiny_bert, toy_data, tmp_path):
    """A run pre-finetuned from a sentence-transformers model keeps its max_seq_length (all-MiniLM-L6-v2: 256) in
    its sentence_transformer/ folder, so the base and the run are embedded with the same limit (it was 512 for every
    run, and long texts were truncated for the base model only); a plain Hugging Face base gives min(512, the
    tokenizer's limit) as before."""
    from sentence_transformers import SentenceTransformer

    from mtpf.downstream.models import resolve
    from mtpf.encoder import load_tokenizer
    from mtpf.testing import make_tiny_sentence_transformer

    base = make_tiny_sentence_transformer(tiny_bert, tmp_path / "st-base", 40)
    run(_cfg(base, toy_data, tmp_path / "run", strategy="tc"))
    assert SentenceTransformer(str(tmp_path / "run" / "sentence_transformer"), device="cpu").max_seq_length == 40
    assert resolve(str(tmp_path / "run")).st_max_length == 40
    run(_cfg(tiny_bert, toy_data, tmp_path / "hf-run", strategy="tc"))
    want = min(512, load_tokenizer(tiny_bert).model_max_length)
    assert resolve(str(tmp_path / "hf-run")).st_max_length == want


def test_malformed_jsonl_names_file_and_line(tiny_bert, toy_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "s.jsonl").write_text('{"tokens": ["a"], "labels": [1]}\n{"tokens": ["b"], "labels": [2\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: malformed JSON"):
        run(_cfg(tiny_bert, toy_data, tmp_path / "run", strategy="ner", ner_data=f"[{bad}]"))
    (bad / "s.jsonl").write_text('{"tokens": ["a", "b"], "labels": [1]}\n')
    with pytest.raises(DataError, match=r"s\.jsonl:1: 2 tokens but 1 labels"):
        run(_cfg(tiny_bert, toy_data, tmp_path / "run2", strategy="ner", ner_data=f"[{bad}]"))


def test_empty_pair_source_is_named(tiny_bert, toy_data, tmp_path):
    empty = tmp_path / "pairs"
    empty.mkdir()
    (empty / "nothing.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"nothing\.jsonl: pair source is empty"):
        run(_cfg(tiny_bert, toy_data, tmp_path / "run", strategy="tc", pairs=f"[{empty}]"))


def test_pair_rows_without_text_are_counted_not_dropped_silently(tiny_bert, toy_data, tmp_path, capsys):
    """Real pair dumps hold nulls, numbers and blank texts; training skips those rows and says how many."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    rows = [{"anchor": f"a cheap place {i}", "positive": f"near town {i}"} for i in range(40)]
    rows += [{"anchor": " ", "positive": "blank"}, {"anchor": None, "positive": "null"}, {"anchor": "x", "positive": 7}]
    (folder / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(_cfg(tiny_bert, toy_data, tmp_path / "run", strategy="tc", pairs=f"[{folder}]", max_steps=1))
    assert "skipped 3 of 43 rows whose anchor or positive is empty or not text" in capsys.readouterr().out


def test_cli_reports_errors_cleanly(tiny_bert, toy_data, tmp_path, capsys):
    assert cli_main(["pretrain", "strategy=mtl"]) == 2
    assert "strategy must be one of" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("strategy: tc\nbatch: 3\n")
    assert cli_main(["pretrain", str(cfg)]) == 2
    assert "unknown config key 'batch'" in capsys.readouterr().err


def test_existing_checkpoints_are_never_overwritten(tiny_bert, toy_data, tmp_path):
    import shutil

    pairs = tmp_path / "pairs"
    shutil.copytree(toy_data["pairs"], pairs)
    out = tmp_path / "run"
    run(_cfg(tiny_bert, toy_data, out, strategy="tc", pairs=f"[{pairs}]"))
    ckpts = {p.name: (p / "model.safetensors").read_bytes() for p in (out / "checkpoints").iterdir()}
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run(_cfg(tiny_bert, toy_data, out, strategy="tc", pairs=f"[{pairs}]"))
    with pytest.raises(ConfigError, match=r"differs in \['lr'\]"):
        run(_cfg(tiny_bert, toy_data, out, strategy="tc", pairs=f"[{pairs}]", resume="true", lr=0.5))
    with open(pairs / "news.jsonl", "a") as fh:  # the data went bad between the crash and the resume
        fh.write("{not json\n")
    with pytest.raises(DataError, match=r"news\.jsonl:121: malformed JSON"):
        run(_cfg(tiny_bert, toy_data, out, strategy="tc", pairs=f"[{pairs}]", resume="true", max_steps=4))
    assert {p.name: (p / "model.safetensors").read_bytes() for p in (out / "checkpoints").iterdir()} == ckpts
    (pairs / "news.jsonl").unlink()
    for f in (pairs / ".mtpf_cache").glob("pairs-captions-*/*.arrow"):  # a corrupt tokenisation cache
        f.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"captions\.jsonl: tokenisation cache .* is unreadable .*delete that folder"):
        run(_cfg(tiny_bert, toy_data, out, strategy="tc", pairs=f"[{pairs}]", resume="true", max_steps=4))
    assert {p.name: (p / "model.safetensors").read_bytes() for p in (out / "checkpoints").iterdir()} == ckpts


def test_interference_analysis_is_tracked_during_training(tiny_bert, toy_data, tmp_path):
    ner = tmp_path / "ner" / "toy"
    ner.mkdir(parents=True)
    rows = [{"tokens": ["Obama", "visited", "Berlin", "today"], "tags": ["B-PER", "O", "B-LOC", "O"]},
            {"tokens": ["Merkel", "met", "Apple", "in", "Paris"], "tags": ["B-PER", "O", "B-ORG", "O", "B-LOC"]},
            {"tokens": ["Google", "said", "Monday", "."], "tags": ["B-ORG", "O", "O", "O"]}]
    (ner / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run(_cfg(tiny_bert, toy_data, tmp_path / "run", strategy="mtpf-tpl", analysis_every=1,
             analysis_ner_data=str(ner), analysis_sentences=3))
    records = [json.loads(x) for x in (tmp_path / "run" / "logs" / "analysis.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records:
        for key in ("perturbed_cosine", "token_homogeneity", "perturbed_cosine@tc", "token_homogeneity@ner"):
            assert -1.0 <= r[key] <= 1.0
    with pytest.raises(ConfigError, match="analysis_ner_data"):
        _cfg(tiny_bert, toy_data, tmp_path / "x", analysis_every=5)


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_other_encoder_families_train_with_task_primary_loras(toy_data, tmp_path, arch):
    from peft import PeftModel

    from mtpf.encoder import load_encoder, load_tokenizer, mean_pool
    from mtpf.testing import make_tiny_encoder

    model = make_tiny_encoder(tmp_path / arch, arch, layers=3)
    cfg = _cfg(model, toy_data, tmp_path / "run", strategy="mtpf-tpl", pcgrad="true", grad_accum=2,
               **{"tpl.ner.layers": 1, "tpl.tc.layers": 2})
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.train()
    info = recipe.export()
    out = tmp_path / "run"
    tok = load_tokenizer(str(out / "backbone"))
    batch = tok(["Obama visited Berlin", "a cheap place"], padding=True, return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        want = recipe.accelerator.unwrap_model(recipe.model).eval()("tc", **batch)
        tc = PeftModel.from_pretrained(load_encoder(str(out / "backbone")), info["adapters"]["tc"]).eval()
        got = mean_pool(tc(**batch).last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ner_cfg = json.loads((out / "adapters" / "ner" / "adapter_config.json").read_text())
    assert all(".layer.2." in m for m in ner_cfg["target_modules"])  # the last layer only


def test_tensorboard_gets_the_same_scalars_as_the_jsonl_log(tiny_bert, toy_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(_cfg(tiny_bert, toy_data, tmp_path / "run", strategy="mtpf", tensorboard="true"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    tags = acc.Tags()["scalars"]
    loss_tag = next(t for t in tags if t.endswith("loss_ner"))
    logged = [(e.step, e.value) for e in acc.Scalars(loss_tag)]
    assert logged == [(m["step"], pytest.approx(m["loss_ner"], rel=1e-6)) for m in metrics]


def test_a_resumed_run_killed_while_exporting_is_not_a_finished_run(tiny_bert, toy_data, tmp_path, monkeypatch):
    """Resuming a finished run for more steps re-exports it: killed half-way, the folder must not keep the earlier
    run.json (which would vouch for a backbone that is no longer the one it describes)."""
    from mtpf.pretrain import export

    out = tmp_path / "run"
    run(_cfg(tiny_bert, toy_data, out, strategy="mtpf-tpl"))
    assert json.loads((out / "run.json").read_text())["backbone_fingerprint"]

    def killed(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_sentence_transformer", killed)  # after backbone/ was replaced
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_bert, toy_data, out, strategy="mtpf-tpl", resume="true", max_steps=4))
    assert not (out / "run.json").exists()
    monkeypatch.undo()
    info = run(_cfg(tiny_bert, toy_data, out, strategy="mtpf-tpl", resume="true", max_steps=4))
    assert json.loads((out / "run.json").read_text()) == info
