"""ONNX export: graphs equal PyTorch within the stated tolerance; the runtime's ONNX backend agrees with torch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mtpf.runtime import Runtime
from mtpf.runtime.onnx_export import FP32_ATOL, INT8_MIN_MEAN_COSINE, read_export
from mtpf.runtime.testing import make_demo_apps

TEXTS = ["Barack Obama visited Berlin and Paris last week.", "How do I reset my card PIN?", "ok"]



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_apps(tmp_path_factory.mktemp("exp"), n_ner=1, n_tc=1, head_only_tc=1)


def test_export_backbone_and_app_cli(demo, tmp_path):
    from mtpf.cli import main

    backbone, apps = demo
    assert main(["export", backbone, "--onnx", "--int8", "--out", str(tmp_path / "bb")]) == 0
    meta = read_export(tmp_path / "bb")
    assert meta["kind"] == "backbone" and set(meta["files"]) == {"fp32", "int8"}
    v = meta["verification"]
    assert v["fp32"]["passed"] and v["fp32"]["max_abs_diff"] <= FP32_ATOL
    assert v["int8"]["passed"] and v["int8"]["mean_cosine"] >= INT8_MIN_MEAN_COSINE
    assert (tmp_path / "bb" / "model.onnx").is_file() and (tmp_path / "bb" / "model.int8.onnx").is_file()
    # an app with LoRA: merged graph, verified against the PEFT model (LoRA applied on the fly)
    assert main(["export", apps["tc0"], "--onnx", "--out", str(tmp_path / "app")]) == 0
    meta = read_export(tmp_path / "app")
    assert meta["kind"] == "app" and meta["adapter_fingerprint"] and meta["verification"]["fp32"]["passed"]
    assert main(["export", str(tmp_path / "nothing"), "--onnx", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", backbone]) == 2  # no format chosen


def test_export_run_folder(demo, tmp_path):
    """A run folder (RUN/backbone + RUN/adapters/<task>) exports backbone and merged task-primary adapters."""
    import shutil

    from mtpf.runtime.export_cli import export_path

    backbone, apps = demo
    run = tmp_path / "run"
    shutil.copytree(backbone, run / "backbone")
    shutil.copytree(apps["tc0"], run / "adapters" / "tc", ignore=shutil.ignore_patterns("mtpf_app.json",
                                                                                          "head.safetensors"))
    (run / "run.json").write_text(json.dumps({"format": "mtpf-run/1"}))
    reports = export_path(str(run))
    assert set(reports) == {str(run / "onnx" / "backbone"), str(run / "onnx" / "adapters" / "tc")}
    assert all(r["verification"]["fp32"]["passed"] for r in reports.values())


def test_onnx_backend_matches_torch(demo, tmp_path):
    backbone, apps = demo
    with Runtime(backbone) as ref, Runtime(backbone, backend="onnx", onnx_dir=tmp_path / "onnx") as rt, \
            Runtime(backbone, backend="onnx", int8=True, onnx_dir=tmp_path / "onnx8") as rt8:
        for r in (ref, rt, rt8):
            for name, d in apps.items():
                r.register_app(name, d)
        for name in ("tc0", "tch0"):
            a, b, c = ref.embed(name, TEXTS), rt.embed(name, TEXTS), rt8.embed(name, TEXTS)
            np.testing.assert_allclose(a, b, atol=1e-4)
            cos = (a * c).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)
            assert cos.min() > 0.9
        x, y = ref.extract_entities("ner0", TEXTS), rt.extract_entities("ner0", TEXTS)
        assert [[(s["type"], s["start"], s["end"]) for s in spans] for spans in x] == \
            [[(s["type"], s["start"], s["end"]) for s in spans] for spans in y]
        # the backbone export is reused by a second runtime (fingerprint matches), not redone
        stamp = (tmp_path / "onnx" / "layered" / "layer_0.onnx").stat().st_mtime_ns
        with Runtime(backbone, backend="onnx", onnx_dir=tmp_path / "onnx"):
            pass
        assert (tmp_path / "onnx" / "layered" / "layer_0.onnx").stat().st_mtime_ns == stamp
        rt.unregister_app("tc0")
        assert "tc0" not in rt.apps()


def test_onnx_shared_backbone_equals_merged_graphs(tmp_path_factory, tmp_path):
    """One copy of the backbone (per-layer graphs with LoRA inputs) answers like one merged graph per app.

    Tolerance: fp32 within 1e-4 of the merged graphs (embeddings, TC probabilities) and the same NER spans;
    int8, mean cosine >= 0.99 between the layouts (the shared one keeps the LoRA path in fp32, the merged one
    quantises the merged weights, so they round differently).
    """
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.runtime.testing import make_app_adapter
    from mtpf.testing import make_tiny_encoder

    root = tmp_path_factory.mktemp("shared")
    backbone = make_tiny_encoder(root / "bb", "bert", layers=4)
    enc = load_encoder(backbone)
    fp = fingerprint_model(enc)
    apps = {"tc_all": make_app_adapter(root / "tc_all", backbone, "tc", encoder=enc, fingerprint=fp, seed=1),
            "tc_l2": make_app_adapter(root / "tc_l2", backbone, "tc", layers=2, encoder=enc, fingerprint=fp, seed=2),
            "ner_l1": make_app_adapter(root / "ner_l1", backbone, "ner", layers=1, encoder=enc, fingerprint=fp,
                                       seed=3),
            "tc_head": make_app_adapter(root / "tc_head", backbone, "tc", lora=False, encoder=enc, fingerprint=fp)}
    texts = TEXTS + ["Anna Smith flew from Paris to Berlin on Monday morning.", TEXTS[0]]
    for int8 in (False, True):
        with Runtime(backbone, backend="onnx", int8=int8, onnx_dir=tmp_path / f"s{int8}") as shared, \
                Runtime(backbone, backend="onnx", int8=int8, onnx_merged=True, onnx_dir=tmp_path / f"m{int8}") as merged:
            for rt in (shared, merged):
                for name, d in apps.items():
                    rt.register_app(name, d)
            # one copy of the backbone: no per-app graph, apps are their LoRA matrices
            assert shared.backend.sessions == {} and set(shared.backend.loras) == {
                shared._apps[n].key for n in ("tc_all", "tc_l2", "ner_l1")}
            assert {n: shared.app_info(n)["shared_layers"] for n in apps} == {
                "tc_all": 0, "tc_l2": 2, "ner_l1": 3, "tc_head": 4}
            for name in ("tc_all", "tc_l2", "tc_head"):
                a, b = shared.embed(name, texts), merged.embed(name, texts)
                if int8:
                    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                    assert cos.mean() >= 0.99, name
                else:
                    np.testing.assert_allclose(a, b, atol=1e-4)
            if not int8:
                res = shared.analyze(texts, apps=list(apps))  # trunk + fan-out on ONNX
                want = merged.extract_entities("ner_l1", texts)
                assert [[(s["type"], s["start"], s["end"]) for s in r["ner_l1"]["entities"]] for r in res] == \
                    [[(s["type"], s["start"], s["end"]) for s in spans] for spans in want]
                np.testing.assert_allclose([list(r["tc_l2"]["probabilities"].values()) for r in res],
                                           [list(c["probabilities"].values()) for c in merged.classify("tc_l2", texts)],
                                           atol=1e-4)


@pytest.mark.parametrize("layered", [True, False])
def test_an_interrupted_or_failed_export_is_not_reused(layered, tmp_path, monkeypatch):
    """The ONNX cache of a backbone: a re-export killed after some graphs were replaced leaves no export.json
    (the old one would vouch for the new graphs), and an export that failed verification is exported again
    instead of being served."""
    from mtpf.encoder import load_encoder
    from mtpf.runtime import onnx_export as ox
    from mtpf.testing import make_tiny_encoder
    from transformers import AutoTokenizer

    export, read = (ox.export_layered_dir, ox.read_layered) if layered else (ox.export_encoder_dir, ox.read_export)
    model_a = make_tiny_encoder(tmp_path / "a", "bert", layers=2)
    tok = AutoTokenizer.from_pretrained(model_a)
    enc_a = load_encoder(model_a).eval()
    out = tmp_path / "onnx"
    meta = export(enc_a, tok, out, int8=True, backbone_fingerprint="A")
    assert read(out)["backbone_fingerprint"] == "A" and ox.verified(meta, "int8")

    enc_b = load_encoder(make_tiny_encoder(tmp_path / "b", "bert", layers=2, seed=1)).eval()
    calls = []

    def dies(src, dst):  # B's export is killed while quantising (layered: after its first graph is in place)
        calls.append(src)
        if len(calls) == (2 if layered else 1):
            raise KeyboardInterrupt
        return real(src, dst)

    real = ox.quantize_int8
    monkeypatch.setattr(ox, "quantize_int8", dies)
    with pytest.raises(KeyboardInterrupt):
        export(enc_b, tok, out, int8=True, backbone_fingerprint="B")
    assert read(out) is None  # nothing vouches for the mix of A's and B's graphs: the runtime re-exports
    monkeypatch.setattr(ox, "quantize_int8", real)

    monkeypatch.setattr(ox, "INT8_MIN_MEAN_COSINE", 1.01)  # no int8 graph can pass
    with pytest.raises(ox.ExportVerificationError):
        export(enc_a, tok, out, int8=True, backbone_fingerprint="A")
    failed = read(out)
    assert failed["backbone_fingerprint"] == "A"  # kept for inspection ...
    assert ox.verified(failed, "fp32") and not ox.verified(failed, "int8")  # ... but int8 is not reusable
