"""Apps whose LoRA the runtime must not get wrong silently: LoRA on the embeddings, a LoRA bias, weights saved
from another model class, a config changed under the same tensors; RoBERTa's position cap; words with
combining marks."""
import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from mtpf.runtime import AppError, Runtime, split_words
from mtpf.runtime.testing import make_app_adapter, make_demo_apps

TEXTS = ["Barack Obama visited Berlin and Paris last week.", "ok"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("rt_adapters")
    backbone, apps = make_demo_apps(root, n_ner=1, n_tc=1, head_only_tc=0)
    return {"root": root, "backbone": str(backbone), "apps": apps}


def _custom_app(out, backbone, **lora_kw):
    """A TC app whose LoRA is ``get_peft_model(LoraConfig(**lora_kw))`` with random weights (biases too)."""
    from peft import LoraConfig, get_peft_model

    from mtpf.encoder import load_encoder

    make_app_adapter(out, backbone, "tc", lora=False, seed=0)
    model = get_peft_model(load_encoder(backbone), LoraConfig(lora_dropout=0.0, **lora_kw))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(out)
    meta = json.loads((Path(out) / "mtpf_app.json").read_text())
    meta["has_lora"] = True
    (Path(out) / "mtpf_app.json").write_text(json.dumps(meta))
    return str(out)


def _peft_reference(backbone, app, texts):
    from peft import PeftModel

    from mtpf.encoder import load_encoder, load_tokenizer

    tok = load_tokenizer(backbone)
    model = PeftModel.from_pretrained(load_encoder(backbone).eval(), app).eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None]
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()


@pytest.mark.parametrize("case,lora", [
    ("embedding_lora", dict(r=4, lora_alpha=8, target_modules=["word_embeddings", "query"])),
    ("lora_bias", dict(r=4, lora_alpha=8, target_modules=["query", "value"], lora_bias=True)),
    ("rslora", dict(r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=True)),
])
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_every_kind_of_lora_is_applied_as_peft_applies_it(demo, tmp_path, case, lora, backend):
    app = _custom_app(tmp_path / case, demo["backbone"], **lora)
    expected = _peft_reference(demo["backbone"], app, TEXTS)
    with Runtime(demo["backbone"], backend=backend, batching=False) as rt:
        rt.register_app(case, app)
        rt.register_app("other", demo["apps"]["tc0"])
        alone = rt.embed(case, TEXTS)
        np.testing.assert_allclose(alone, expected, atol=2e-5)
    if backend == "torch":  # and in one micro-batch with another app (PEFT's per-row adapter_names)
        with Runtime(demo["backbone"], backend=backend, max_wait_ms=300) as rt:
            rt.register_app(case, app)
            rt.register_app("other", demo["apps"]["tc0"])
            futs = [rt.submit(case, "embed", TEXTS), rt.submit("other", "embed", TEXTS)]
            np.testing.assert_allclose(futs[0].result(timeout=60), expected, atol=2e-5)


def test_adapter_weights_that_match_no_module_are_refused(demo, tmp_path):
    """An adapter saved from another model class (a *ForTokenClassification prefix) would load as a no-op."""
    from safetensors.numpy import load_file, save_file

    src, bad = Path(demo["apps"]["tc0"]), tmp_path / "prefixed"
    shutil.copytree(src, bad)
    weights = load_file(str(bad / "adapter_model.safetensors"))
    save_file({k.replace("base_model.model.encoder", "base_model.model.bert.encoder"): v for k, v in weights.items()},
              str(bad / "adapter_model.safetensors"))
    with Runtime(demo["backbone"], backend="torch", batching=False) as rt:
        with pytest.raises(AppError, match="match no module of the backbone"):
            rt.register_app("bad", str(bad))
        assert not any(k.startswith("bad") for k in rt.backend.model.peft_config)  # nothing left half-registered
        rt.register_app("good", str(src))
        assert rt.embed("good", TEXTS).shape[0] == 2


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_an_adapter_with_more_than_lora_is_refused_and_other_apps_keep_working(demo, tmp_path, backend):
    """PEFT's trainable_token_indices rides in a LoRA adapter as token deltas: the torch backend's adapter switch
    then failed for every app, ONNX dropped the deltas silently. Registration refuses it with one line."""
    app = _custom_app(tmp_path / "tokens", demo["backbone"], r=4, lora_alpha=8, target_modules=["query"],
                      trainable_token_indices=[5, 7])
    with Runtime(demo["backbone"], backend=backend, batching=False) as rt:
        rt.register_app("good", demo["apps"]["tc0"])
        with pytest.raises(AppError, match="not LoRA matrices.*trainable_tokens"):
            rt.register_app("tokens", app)
        assert rt.embed("good", TEXTS).shape[0] == 2


def test_adapter_fingerprint_covers_the_lora_config(demo, tmp_path):
    """A merged ONNX graph is reused only for the same adapter: same tensors with another alpha are not."""
    from mtpf.runtime.onnx_export import adapter_fingerprint

    app = tmp_path / "app"
    shutil.copytree(demo["apps"]["tc0"], app)
    before = adapter_fingerprint(app)
    cfg = json.loads((app / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 4 * cfg["lora_alpha"]
    (app / "adapter_config.json").write_text(json.dumps(cfg))
    assert before is not None and adapter_fingerprint(app) != before


def test_roberta_positions_cap_leaves_out_the_padding_offset(tmp_path):
    backbone, apps = make_demo_apps(tmp_path, arch="roberta", n_ner=1, n_tc=1, head_only_tc=0)
    long_text = " ".join(["word"] * 600)
    with Runtime(backbone, backend="torch", batching=False) as rt:
        from mtpf.encoder import load_encoder

        cfg = load_encoder(backbone).config
        assert rt.model_max_length == cfg.max_position_embeddings - 2
        rt.register_app("tc", apps["tc0"])
        rt.register_app("ner", apps["ner0"])
        assert len(rt.classify("tc", [long_text, "short"])) == 2
        assert len(rt.extract_entities("ner", [long_text])) == 1


def test_words_keep_their_combining_marks():
    nfd = unicodedata.normalize("NFD", "José García met नरेन्द्र मोदी.")
    words = [w for w, _, _ in split_words(nfd)]
    assert words == [unicodedata.normalize("NFD", "José"), unicodedata.normalize("NFD", "García"), "met",
                     "नरेन्द्र", "मोदी", "."]
    assert all(nfd[s:e] == w for w, s, e in split_words(nfd))
    assert [w for w, _, _ in split_words("state-of-the-art O'Neil, don't!")] == \
        ["state-of-the-art", "O'Neil", ",", "don't", "!"]


def test_word_split_is_the_old_rule_plus_marks_and_without_invisible_characters():
    """Only combining marks (and in-word joiners) change the words of the old ``re`` rule; superscripts stay in
    their word; a byte-order mark, zero-width space or control character is no word (no sub-token either)."""
    import re

    old = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
    latin = "In 2024, CO₂ per km² fell ½ — Müller's long-term plan (x³) costs $3.5 at 10:30 & 5% <ok> naïve café."
    assert [w for w, _, _ in split_words(latin)] == old.findall(latin)
    assert [w for w, _, _ in split_words("\ufeffObama\u200b visited\x07 Paris")] == ["Obama", "visited", "Paris"]
    assert [w for w, _, _ in split_words("क्\u200dष co\u00adoperate")] == ["क्\u200dष", "co\u00adoperate"]


def test_teacher_split_matches_the_runtime_and_records_its_rule(tmp_path):
    from mtpf.teacher import corpus

    assert corpus.SPLIT_RULE == corpus.WORD_RE.pattern
    assert corpus.split_words("\ufeffApple Inc. earned $3.5 billion in मनुष्य km²") == \
        ["Apple", "Inc", ".", "earned", "$", "3.5", "billion", "in", "मनुष्य", "km²"]


def test_an_adapter_saved_as_bin_is_served_by_the_layered_onnx_graph(demo, tmp_path):
    """Older PEFT saved ``adapter_model.bin``: the layered ONNX graph takes it as it takes safetensors (it used to
    read only the latter)."""
    from safetensors.torch import load_file

    app = _custom_app(tmp_path / "st", demo["backbone"], r=4, lora_alpha=8, target_modules=["query", "value"])
    binary = tmp_path / "bin"
    shutil.copytree(app, binary)
    torch.save(load_file(str(binary / "adapter_model.safetensors")), binary / "adapter_model.bin")
    (binary / "adapter_model.safetensors").unlink()
    expected = _peft_reference(demo["backbone"], app, TEXTS)
    with Runtime(demo["backbone"], backend="onnx", batching=False) as rt:
        rt.register_app("bin", str(binary))
        assert any(k.split("#")[0] == "bin" for k in rt.backend.loras)  # the layered graph, not a merged one
        np.testing.assert_allclose(rt.embed("bin", TEXTS), expected, atol=2e-5)


def test_onnx_merged_app_graphs_are_reused_and_exported_with_their_own_tokenizer(demo, tmp_path):
    """A merged app graph is kept under its adapter's content, so registering the same app again reuses it (each
    cycle used to add a full backbone copy to onnx_dir); the export pads with the backend's own tokenizer, not the
    one the batcher is using at the same time."""
    with Runtime(demo["backbone"], backend="onnx", onnx_merged=True, onnx_dir=tmp_path / "onnx",
                 batching=False) as rt:
        assert rt.backend.tokenizer is not rt.tokenizer
        got = []
        for _ in range(3):
            rt.register_app("tc", demo["apps"]["tc0"])
            got.append(rt.embed("tc", TEXTS))
            rt.unregister_app("tc")
        assert len(list((tmp_path / "onnx" / "apps").iterdir())) == 1
        np.testing.assert_array_equal(got[0], got[2])


def test_only_lora_options_the_slots_implement_take_the_slot_path():
    """The ONNX slots re-implement PEFT's LoRA forward: any option they do not implement (today's or a future
    PEFT's) must send the app to the merged graph rather than be ignored."""
    import dataclasses

    from peft import LoraConfig

    from mtpf.runtime.onnx_export import SLOT_KEYS, slot_compatible

    plain = LoraConfig(r=4, lora_alpha=8, target_modules=["query"]).to_dict()
    plain = json.loads(json.dumps(plain, default=str))  # as adapter_config.json holds it
    assert slot_compatible(plain) and slot_compatible({**plain, "use_rslora": True})
    for key, value in (("use_dora", True), ("fan_in_fan_out", True), ("layer_replication", [[0, 2]]),
                       ("alora_invocation_tokens", [5]), ("bias", "all"), ("rank_pattern", {"query": 8}),
                       ("target_parameters", ["w"]), ("an_option_from_a_newer_peft", 1), ("peft_type", "LOHA")):
        assert not slot_compatible({**plain, key: value}), key
    # every LoraConfig field is either honoured/harmless (SLOT_KEYS) or off by default, i.e. checked above
    for f in dataclasses.fields(LoraConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert f.name in SLOT_KEYS or not default or default == "none", f.name
