"""Shared trunk + fan-out: each app's answer equals the app alone; analyze; long NER texts; device choice."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_runtime import Reference, assert_matches_reference

from mtpf.runtime import Runtime, UnknownAppError
from mtpf.runtime.testing import make_app_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [
    "Barack Obama visited Berlin and Paris last week with Angela Merkel.",
    "How do I reset my card PIN?",
    "ok",
    "Apple Inc. reported earnings of 3.5 billion dollars on Tuesday, said Tim Cook in New York.",
    "How do I reset my card PIN?",  # a repeated text: one trunk row for both
]


@pytest.fixture(scope="module")
def trunk_apps(tmp_path_factory):
    """A 4-layer tiny backbone; apps whose LoRA starts at different layers (0, 2, 3) and head-only apps."""
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.testing import make_tiny_encoder

    root = tmp_path_factory.mktemp("trunk")
    backbone = make_tiny_encoder(root / "backbone", "bert", layers=4)
    enc = load_encoder(backbone)
    fp = fingerprint_model(enc)
    specs = {  # name: (task, LoRA layers or None)
        "ner_all": ("ner", "all"), "ner_l2": ("ner", 2), "ner_l1": ("ner", 1),
        "tc_all": ("tc", "all"), "tc_l2": ("tc", 2), "tc_l2b": ("tc", 2), "tc_head": ("tc", None),
        "ner_head": ("ner", None),
    }
    apps = {}
    for i, (name, (task, layers)) in enumerate(specs.items()):
        apps[name] = make_app_adapter(root / name, backbone, task, lora=layers is not None, layers=layers or "all",
                                      seed=i, encoder=enc, fingerprint=fp, max_length=32)
    return backbone, apps


@pytest.fixture(scope="module")
def trunk_refs(trunk_apps):
    backbone, apps = trunk_apps
    return {name: Reference(backbone, d) for name, d in apps.items()}


def op_of(name):
    return "entities" if name.startswith("ner") else "classify"


@pytest.mark.parametrize("mode", ["mixed", "grouped"])
def test_trunk_fanout_equals_each_app_alone(trunk_apps, trunk_refs, mode):
    backbone, apps = trunk_apps
    with Runtime(backbone, mode=mode, max_wait_ms=500, max_batch_size=256, adaptive_wait=False) as rt:
        for name, d in apps.items():
            rt.register_app(name, d)
        levels = {n: rt.app_info(n)["shared_layers"] for n in apps}
        assert levels == {"ner_all": 0, "ner_l2": 2, "ner_l1": 3, "tc_all": 0, "tc_l2": 2, "tc_l2b": 2,
                          "tc_head": 4, "ner_head": 4}
        futs = [(n, rt.submit(n, op_of(n), TEXTS)) for n in apps]  # one micro-batch, every level at once
        outs = {n: f.result(timeout=60) for n, f in futs}
        assert rt.stats()["batches"] == 1
    for name, out in outs.items():
        assert_matches_reference(trunk_refs[name], op_of(name), TEXTS, out)
    assert not np.allclose(list(outs["tc_l2"][0]["probabilities"].values()),
                           list(outs["tc_l2b"][0]["probabilities"].values()), atol=1e-3)


@pytest.mark.parametrize("mode", ["mixed", "grouped"])
def test_analyze_equals_each_app_alone(trunk_apps, trunk_refs, mode):
    backbone, apps = trunk_apps
    with Runtime(backbone, mode=mode) as rt:
        for name, d in apps.items():
            rt.register_app(name, d)
        res = rt.analyze(TEXTS, apps=list(apps))
        assert len(res) == len(TEXTS)
        for name in apps:
            got = [r[name] for r in res]
            if name.startswith("ner"):
                assert all(g["task"] == "ner" and g["windowed"] is False and g["truncated"] is False for g in got)
                assert_matches_reference(trunk_refs[name], "entities", TEXTS, [g["entities"] for g in got])
            else:
                assert all(g["task"] == "tc" and g["truncated"] is False for g in got)
                assert_matches_reference(trunk_refs[name], "classify", TEXTS, got)
        # apps=None: every registered app; a subset keeps its order
        assert list(rt.analyze(["ok"])[0]) == list(apps)
        assert list(rt.analyze(["ok"], apps=["tc_l2", "ner_l1"])[0]) == ["tc_l2", "ner_l1"]
        with pytest.raises(UnknownAppError):
            rt.analyze(["ok"], apps=["tc_l2", "nope"])


def test_trunk_cache_shares_across_calls(trunk_apps, trunk_refs):
    backbone, apps = trunk_apps
    with Runtime(backbone, trunk_cache_mb=1) as rt:
        for name in ("tc_l2", "tc_l2b", "ner_l2"):
            rt.register_app(name, apps[name])
        a = rt.classify("tc_l2", TEXTS[:4])
        assert rt.trunk_cache_hits == 0 and rt.trunk_cache_misses == 4
        b = rt.classify("tc_l2b", TEXTS[:4])  # same texts, same tokenisation: all four trunk states reused
        assert rt.trunk_cache_hits == 4 and rt.trunk_cache_misses == 4
        assert 0 < rt.trunk_cache_bytes <= rt.trunk_cache_max_bytes == 2**20
        # what the cache counts is what it holds: no entry is a view keeping its whole padded batch alive
        held = list(rt.trunk_cache._d.values())
        assert held and all(arr.base is None for arr in held) and sum(a.nbytes for a in held) == rt.trunk_cache_bytes
    assert_matches_reference(trunk_refs["tc_l2"], "classify", TEXTS[:4], a)
    assert_matches_reference(trunk_refs["tc_l2b"], "classify", TEXTS[:4], b)
    with Runtime(backbone, trunk_cache_mb=1e-4) as rt:  # 104 bytes: nothing fits, nothing kept, answers unchanged
        rt.register_app("tc_l2", apps["tc_l2"])
        rt.classify("tc_l2", TEXTS[:4])
        assert_matches_reference(trunk_refs["tc_l2"], "classify", TEXTS[:4], rt.classify("tc_l2", TEXTS[:4]))
        assert rt.trunk_cache_hits == 0 and rt.trunk_cache_bytes == 0


def test_app_removed_while_analyze_is_queued(trunk_apps):
    backbone, apps = trunk_apps
    rt = Runtime(backbone)
    try:
        for name in ("tc_l2", "ner_l2", "tc_head"):
            rt.register_app(name, apps[name])
        with rt.backend.lock:  # the batcher blocks inside the forward of a first request ...
            first = rt.submit("tc_l2", "classify", ["hold the batcher"])
            deadline = time.time() + 30
            while rt._queue.qsize() and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            fut = rt.submit_analyze(TEXTS[:2], apps=["tc_l2", "ner_l2", "tc_head"])  # ... so this one queues
            remover = threading.Thread(target=rt.unregister_app, args=("ner_l2",))
            remover.start()
            while rt.has_app("ner_l2") and time.time() < deadline:
                time.sleep(0.01)
        res = fut.result(timeout=60)
        remover.join(timeout=60)
        assert not remover.is_alive() and not rt.has_app("ner_l2")
        first.result(timeout=60)
        for r in res:
            assert r["ner_l2"]["error_type"] == "UnknownAppError" and "unregistered" in r["ner_l2"]["error"]
            assert r["tc_l2"]["task"] == "tc" and r["tc_head"]["task"] == "tc"
    finally:
        rt.close()


def test_long_ner_text_is_windowed(trunk_apps, trunk_refs):
    """Entities past token 512 (and past the app's own limit) are found; each window is the app run alone."""
    from mtpf.runtime import split_words

    backbone, apps = trunk_apps
    ref = trunk_refs["ner_l2"]
    sentence = "Anna Smith met Barack Obama in Paris and Berlin on Monday ."
    text = " ".join([sentence] * 60)  # ~900 tokens; the app's limit is 32
    words = split_words(text)
    with Runtime(backbone) as rt:
        rt.register_app("ner_l2", apps["ner_l2"])
        res = rt.analyze([text, "short one"], apps=["ner_l2"])
        tags = rt.tag_words("ner_l2", [[w for w, _, _ in words]])[0]
    got = res[0]["ner_l2"]
    assert got["windowed"] is True and got["truncated"] is False and res[1]["ner_l2"]["windowed"] is False
    n_tokens = len(ref.tok([w for w, _, _ in words], is_split_into_words=True)["input_ids"])
    assert n_tokens > 600
    # the character offset where token 512 falls: entities must be found after it
    enc = ref.tok([w for w, _, _ in words], is_split_into_words=True)
    cut = words[enc.word_ids()[512]][1]
    assert any(s["start"] > cut for s in got["entities"])
    assert all(text[s["start"]:s["end"]] == s["text"] for s in got["entities"])
    # windows of whole words: each is exactly the app alone on that window's words
    pos = 0
    while pos < len(words):
        window = []
        while pos < len(words) and len(ref.tok([w for w, _, _ in window + [words[pos]]],
                                                is_split_into_words=True)["input_ids"]) <= 32:
            window.append(words[pos])
            pos += 1
        alone = _tags_alone(ref, [w for w, _, _ in window])
        start = pos - len(window)
        assert tags[start:pos] == alone
    assert tags.count("O") < len(tags)


def _tags_alone(ref, words):
    with torch.no_grad():
        enc = ref.tok([words], is_split_into_words=True, return_tensors="pt")
        probs = torch.softmax(ref.model(**enc).last_hidden_state[0] @ ref.w.T + ref.b, -1)
    firsts = {}
    for p, wid in enumerate(enc.word_ids(0)):
        if wid is not None:
            firsts.setdefault(wid, p)
    return [ref.spec.labels[int(probs[firsts[j]].argmax())] for j in range(len(words))]


def test_tc_truncation_flag(trunk_apps, trunk_refs):
    backbone, apps = trunk_apps
    long = " ".join(["card"] * 100)
    with Runtime(backbone) as rt:
        rt.register_app("tc_l2", apps["tc_l2"])
        out = rt.classify("tc_l2", [long, "short"])
        res = rt.analyze([long], apps=["tc_l2"])
    assert out[0]["truncated"] is True and out[1]["truncated"] is False and res[0]["tc_l2"]["truncated"] is True
    assert_matches_reference(trunk_refs["tc_l2"], "classify", [long, "short"], out)  # Reference truncates at 32


def test_device_resolution():
    from mtpf.runtime.backends import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expected auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cuda_runtime_matches_cpu(trunk_apps, tmp_path, backend):
    backbone, apps = trunk_apps
    names = ["ner_l2", "tc_l2", "tc_all", "tc_head"]
    kw = {"onnx_dir": tmp_path / "onnx"} if backend == "onnx" else {}
    with Runtime(backbone, backend=backend, **kw) as cpu, \
            Runtime(backbone, backend=backend, device="cuda", **kw) as gpu:
        assert gpu.device == "cuda"
        for rt in (cpu, gpu):
            for n in names:
                rt.register_app(n, apps[n])
        a, b = cpu.analyze(TEXTS, apps=names), gpu.analyze(TEXTS, apps=names)
        for x, y in zip(a, b):
            for n in ("tc_l2", "tc_all", "tc_head"):  # bf16 autocast on CUDA: close, not equal
                np.testing.assert_allclose(list(x[n]["probabilities"].values()),
                                           list(y[n]["probabilities"].values()), atol=3e-2)
        e1, e2 = cpu.embed("tc_l2", TEXTS), gpu.embed("tc_l2", TEXTS)
        cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
        assert cos.min() > 0.99


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_trunk_on_distilbert(tmp_path, backend):
    """The layer-range forward is architecture-agnostic: DistilBERT's transformer.layer stack too."""
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.testing import make_tiny_encoder

    backbone = make_tiny_encoder(tmp_path / "bb", "distilbert", layers=3)
    enc = load_encoder(backbone)
    fp = fingerprint_model(enc)
    apps = {"tc_l1": make_app_adapter(tmp_path / "tc_l1", backbone, "tc", layers=1, encoder=enc, fingerprint=fp),
            "ner_l2": make_app_adapter(tmp_path / "ner_l2", backbone, "ner", layers=2, encoder=enc, fingerprint=fp,
                                       seed=1)}
    refs = {n: Reference(backbone, d) for n, d in apps.items()}
    kw = {"onnx_dir": tmp_path / "onnx"} if backend == "onnx" else {}
    with Runtime(backbone, backend=backend, **kw) as rt:
        for n, d in apps.items():
            rt.register_app(n, d)
        assert rt.app_info("tc_l1")["shared_layers"] == 2 and rt.app_info("ner_l2")["shared_layers"] == 1
        res = rt.analyze(TEXTS, apps=list(apps))
    assert_matches_reference(refs["tc_l1"], "classify", TEXTS, [r["tc_l1"] for r in res])
    assert_matches_reference(refs["ner_l2"], "entities", TEXTS, [r["ner_l2"]["entities"] for r in res])


# ------------------------------------------------------------------ identical adapters shared (dedup)
@pytest.fixture(scope="module")
def shared_tc_apps(trunk_apps, tmp_path_factory):
    """The paper's deployment: TC apps that all carry the run's `tc` adapter (last 2 layers), each its own head.

    ``tc_s2`` records the base model relative to its folder (as `mtpf adapt` writes it): still the same adapter.
    ``tc_alpha`` has the same LoRA tensors but another lora_alpha: a different adapter.
    """
    import json

    backbone, apps = trunk_apps
    root = tmp_path_factory.mktemp("shared-tc")
    run_tc = make_app_adapter(root / "run_tc", backbone, "tc", layers=2, seed=40, max_length=32)
    shared = {f"tc_s{i}": make_app_adapter(root / f"tc_s{i}", backbone, "tc", lora_from=run_tc, seed=41 + i,
                                           max_length=32, labels=[f"c{j}" for j in range(3 + i)])
              for i in range(3)}
    cfg_file = root / "tc_s2" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = "../../somewhere/backbone"
    cfg_file.write_text(json.dumps(cfg))
    other = make_app_adapter(root / "tc_alpha", backbone, "tc", lora_from=run_tc, seed=45, max_length=32)
    cfg_file = root / "tc_alpha" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["lora_alpha"] = 2 * cfg["lora_alpha"]
    cfg_file.write_text(json.dumps(cfg))
    return {**shared, "tc_alpha": other, "ner_l2": apps["ner_l2"], "ner_all": apps["ner_all"],
            "tc_head": apps["tc_head"]}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_identical_adapters_loaded_once_and_run_once(trunk_apps, shared_tc_apps, tmp_path, backend):
    from mtpf.runtime.core import lora_fingerprint

    backbone, _ = trunk_apps
    apps = shared_tc_apps
    refs = {n: Reference(backbone, d) for n, d in apps.items()}
    fps = {n: lora_fingerprint(d) for n, d in apps.items() if n != "tc_head"}
    assert fps["tc_s0"] == fps["tc_s1"] == fps["tc_s2"] != fps["tc_alpha"]
    kw = {"onnx_dir": tmp_path / "onnx"} if backend == "onnx" else {}
    with Runtime(backbone, backend=backend, **kw) as rt:
        for n, d in apps.items():
            rt.register_app(n, d)
        # one copy of the shared adapter: tc_s0..2 -> 1, tc_alpha, ner_l2, ner_all -> 3 more
        assert rt.adapters_loaded == rt.stats()["adapters_loaded"] == 4
        loaded = rt.backend.adapters if backend == "torch" else rt.backend.loras
        assert len(loaded) == 4
        table = rt.adapters()
        shared = table[fps["tc_s0"]]
        assert shared["apps"] == ["tc_s0", "tc_s1", "tc_s2"] and shared["refs"] == 3 and shared["key"] in loaded
        assert {n: rt.app_info(n)["adapter_id"] for n in fps} == fps and rt.app_info("tc_head")["adapter_id"] is None
        assert rt._apps["tc_s2"].key == shared["key"] != rt._apps["tc_alpha"].key
        before = rt.stats()["adapter_rows"]
        res = rt.analyze(TEXTS, apps=list(apps))
        # rows run with an adapter: one per distinct (adapter, text): 4 adapters x 4 distinct texts (the
        # repeated text once), not 6 LoRA apps x 5 texts
        assert rt.stats()["adapter_rows"] - before == 4 * 4
    for n in apps:
        got = [r[n] for r in res]
        if n.startswith("ner"):
            assert_matches_reference(refs[n], "entities", TEXTS, [g["entities"] for g in got])
        else:
            assert_matches_reference(refs[n], "classify", TEXTS, got)
    # same adapter, different heads: different answers (the heads fan out)
    assert len(res[0]["tc_s0"]["probabilities"]) == 3 and len(res[0]["tc_s1"]["probabilities"]) == 4


def test_dedup_off_loads_and_runs_every_app(trunk_apps, shared_tc_apps):
    backbone, _ = trunk_apps
    names = ["tc_s0", "tc_s1", "tc_s2"]
    with Runtime(backbone, dedup=False) as rt:
        for n in names:
            rt.register_app(n, shared_tc_apps[n])
        assert rt.adapters_loaded == len(rt.backend.adapters) == 3
        rt.analyze(TEXTS, apps=names)
        assert rt.stats()["adapter_rows"] == 3 * len(TEXTS)


def test_unregister_one_of_two_sharing_apps_keeps_the_other(trunk_apps, shared_tc_apps):
    backbone, _ = trunk_apps
    ref = Reference(backbone, shared_tc_apps["tc_s1"])
    with Runtime(backbone) as rt:
        rt.register_app("tc_s0", shared_tc_apps["tc_s0"])
        rt.register_app("tc_s1", shared_tc_apps["tc_s1"])
        key = rt._apps["tc_s1"].key
        assert rt.adapters_loaded == 1
        rt.unregister_app("tc_s0")
        assert rt.adapters_loaded == 1 and key in rt.backend.adapters
        assert [(e["apps"], e["refs"]) for e in rt.adapters().values()] == [(["tc_s1"], 1)]
        assert_matches_reference(ref, "classify", TEXTS, rt.classify("tc_s1", TEXTS))
        rt.register_app("tc_s0", shared_tc_apps["tc_s0"])  # joins the loaded copy again
        assert rt._apps["tc_s0"].key == key and rt.adapters_loaded == 1
        rt.unregister_app("tc_s0")
        rt.unregister_app("tc_s1")
        assert rt.adapters_loaded == 0 and key not in rt.backend.adapters
        rt.register_app("tc_s1", shared_tc_apps["tc_s1"])  # loaded afresh under a new key
        assert rt._apps["tc_s1"].key != key
        assert_matches_reference(ref, "classify", TEXTS, rt.classify("tc_s1", TEXTS))


def test_sharing_app_churn_never_drops_the_adapter_in_use(trunk_apps, shared_tc_apps):
    """tc_s1 serves calls non-stop while tc_s0 (same adapter) is registered and removed again and again."""
    backbone, _ = trunk_apps
    want = Reference(backbone, shared_tc_apps["tc_s1"])
    with Runtime(backbone, max_wait_ms=1) as rt:
        rt.register_app("tc_s1", shared_tc_apps["tc_s1"])
        stop, outs, errors = threading.Event(), [], []

        def client():
            while not stop.is_set():
                try:
                    outs.append(rt.classify("tc_s1", TEXTS[:2]))
                except Exception as exc:  # noqa: BLE001 - collected, asserted below
                    errors.append(exc)

        workers = [threading.Thread(target=client) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            for _ in range(15):
                rt.register_app("tc_s0", shared_tc_apps["tc_s0"])
                rt.classify("tc_s0", TEXTS[:1])
                rt.unregister_app("tc_s0")
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
        assert not errors and len(outs) > 0 and rt.adapters_loaded == 1
    for out in outs[:: max(1, len(outs) // 10)]:
        assert_matches_reference(want, "classify", TEXTS[:2], out)


def test_adapt_tc_apps_of_one_run_share_its_tc_adapter(tiny_bert, tmp_path):
    """`mtpf adapt tc` copies the run's frozen `tc` adapter unchanged: two apps of one run are one adapter."""
    import json

    from mtpf.downstream.data import load_cls_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.tc import TCConfig, adapt_tc
    from conftest import make_fake_tpl_run
    from mtpf.runtime.core import lora_fingerprint

    run = make_fake_tpl_run(tiny_bert, tmp_path / "run")
    m = resolve(str(run), "run")
    outs = {}
    for name, labels in (("a", ["yes", "no"]), ("b", ["red", "green", "blue"])):
        data = tmp_path / f"data_{name}"
        data.mkdir()
        for split in ("train", "test"):
            rows = [{"text": f"{lab} example number {i}", "label": lab} for lab in labels for i in range(3)]
            (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        outs[name] = tmp_path / ("apps" if name == "a" else "apps/deeper") / name
        adapt_tc(m, load_cls_dataset(str(data)), outs[name], TCConfig(), progress=False)
    src = Path(m.adapters["tc"]) / "adapter_model.safetensors"
    for d in outs.values():
        assert (d / "adapter_model.safetensors").read_bytes() == src.read_bytes()
    assert lora_fingerprint(outs["a"]) == lora_fingerprint(outs["b"]) == lora_fingerprint(m.adapters["tc"])
    with Runtime(m.backbone, batching=False) as rt:
        rt.register_app("a", outs["a"])
        rt.register_app("b", outs["b"])
        assert rt.adapters_loaded == 1
        assert rt.app_info("a")["shared_layers"] == rt.app_info("b")["shared_layers"] > 0
