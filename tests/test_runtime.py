"""The shared-backbone runtime: mixed-batch correctness, fingerprint refusal, hot (un)registration."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from mtpf.runtime import (
    AppError,
    FingerprintMismatchError,
    Runtime,
    TaskMismatchError,
    UnknownAppError,
    split_words,
)
from mtpf.runtime.app import decode_bio, read_app
from mtpf.runtime.testing import make_app_adapter, make_demo_apps

TEXTS = [
    "Barack Obama visited Berlin and Paris last week with Angela Merkel.",
    "How do I reset my card PIN?",
    "ok",
    "Apple Inc. reported earnings of 3.5 billion dollars on Tuesday, said Tim Cook in New York.",
]



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_apps(tmp_path_factory.mktemp("rt"))


class Reference:
    """Each app's model run alone: a fresh encoder (+ its LoRA via PeftModel), no runtime code involved."""

    def __init__(self, backbone, app_dir):
        from peft import PeftModel

        from mtpf.encoder import load_encoder, load_tokenizer

        self.spec = read_app(app_dir)
        self.tok = load_tokenizer(backbone)
        model = load_encoder(backbone).eval()
        if self.spec.has_lora:
            model = PeftModel.from_pretrained(model, app_dir).eval()
        self.model = model
        self.w = torch.from_numpy(self.spec.head_weight)
        self.b = torch.from_numpy(self.spec.head_bias)

    @torch.no_grad()
    def embed(self, text):
        from mtpf.encoder import mean_pool

        enc = self.tok([text], return_tensors="pt", truncation=True, max_length=self.spec.max_length)
        h = self.model(**enc).last_hidden_state
        e = mean_pool(h, enc["attention_mask"])[0]
        return torch.nn.functional.normalize(e, dim=-1) if self.spec.normalize else e

    def probs(self, text):
        return torch.softmax(self.embed(text) @ self.w.T + self.b, -1).numpy()

    @torch.no_grad()
    def entities(self, text):
        words = split_words(text)
        enc = self.tok([[w for w, _, _ in words]], is_split_into_words=True, return_tensors="pt")
        probs = torch.softmax(self.model(**enc).last_hidden_state[0] @ self.w.T + self.b, -1)
        firsts = {}
        for pos, wid in enumerate(enc.word_ids(0)):
            if wid is not None:
                firsts.setdefault(wid, pos)
        tags = [self.spec.labels[int(probs[firsts[j]].argmax())] for j in range(len(words))]
        scores = [float(probs[firsts[j]].max()) for j in range(len(words))]
        return decode_bio(text, words, tags, scores)


@pytest.fixture(scope="module")
def refs(demo):
    backbone, apps = demo
    return {name: Reference(backbone, d) for name, d in apps.items()}


def assert_matches_reference(ref, op, texts, out):
    for text, got in zip(texts, out):
        if op == "embed":
            np.testing.assert_allclose(got, ref.embed(text).numpy(), atol=1e-5, rtol=1e-4)
        elif op == "classify":
            np.testing.assert_allclose(list(got["probabilities"].values()), ref.probs(text), atol=1e-5)
            assert got["label"] == ref.spec.labels[int(ref.probs(text).argmax())]
        else:
            want = ref.entities(text)
            assert [(s["type"], s["start"], s["end"], s["text"]) for s in got] == \
                [(s["type"], s["start"], s["end"], s["text"]) for s in want]
            np.testing.assert_allclose([s["score"] for s in got], [s["score"] for s in want], atol=1e-5)


@pytest.mark.parametrize("mode", ["mixed", "grouped"])
def test_mixed_batch_equals_each_app_alone(demo, refs, mode):
    backbone, apps = demo
    # a long max-wait so that every request below lands in ONE micro-batch
    with Runtime(backbone, mode=mode, max_wait_ms=500, max_batch_size=64, adaptive_wait=False) as rt:
        for name, d in apps.items():
            rt.register_app(name, d)
        calls = []
        for name in apps:
            ops = ["entities"] if name.startswith("ner") else ["classify", "embed"]
            for op in ops:
                calls.append((name, op, rt.submit(name, op, TEXTS)))
        outs = [(name, op, f.result(timeout=60)) for name, op, f in calls]
        assert rt.stats()["batches"] == 1
        assert rt.stats()["batch_apps_mean"] == len(apps)
    for name, op, out in outs:
        assert len(out) == len(TEXTS)
        assert_matches_reference(refs[name], op, TEXTS, out)
    # the apps really differ (random LoRAs / heads): a mix-up between rows would be caught
    embs = {n: o for n, op, o in outs if op == "embed"}
    assert not np.allclose(embs["tc0"], embs["tc1"], atol=1e-3)


def test_entity_spans_are_character_offsets(demo):
    backbone, apps = demo
    with Runtime(backbone) as rt:
        rt.register_app("ner0", apps["ner0"])
        out = rt.extract_entities("ner0", TEXTS)
    assert sum(len(spans) for spans in out) > 0  # a head that tags nothing would make the loop below vacuous
    for text, spans in zip(TEXTS, out):
        for s in spans:
            assert text[s["start"]:s["end"]] == s["text"]
            assert 0.0 < s["score"] <= 1.0
            assert s["type"] in {"PER", "LOC", "ORG"}


def test_split_words_and_bio_decoding():
    text = "Dr. O'Neil visited state-of-the-art labs (N.Y.)!"
    words = split_words(text)
    assert [w for w, _, _ in words] == ["Dr", ".", "O'Neil", "visited", "state-of-the-art", "labs", "(", "N", ".",
                                        "Y", ".", ")", "!"]
    assert all(text[s:e] == w for w, s, e in words)
    text = "Anna Smith met Bob in New York"
    words = split_words(text)
    tags = ["B-PER", "I-PER", "O", "I-PER", "O", "B-LOC", "I-LOC"]
    spans = decode_bio(text, words, tags, [0.9, 0.7, 1, 0.5, 1, 0.8, 0.6])
    assert [(s["type"], s["text"]) for s in spans] == [("PER", "Anna Smith"), ("PER", "Bob"), ("LOC", "New York")]
    assert spans[0]["score"] == pytest.approx(0.8)
    # a type change inside I- tags starts a new span
    spans = decode_bio("a b", split_words("a b"), ["B-PER", "I-LOC"], [1, 1])
    assert [(s["type"], s["text"]) for s in spans] == [("PER", "a"), ("LOC", "b")]


def test_fingerprint_refusal(demo, tmp_path):
    backbone, _ = demo
    from mtpf.testing import make_tiny_encoder

    other = make_tiny_encoder(tmp_path / "other", "bert", seed=1)
    foreign = make_app_adapter(tmp_path / "foreign", other, "tc")
    with Runtime(backbone) as rt:
        with pytest.raises(FingerprintMismatchError, match="trained on backbone"):
            rt.register_app("foreign", foreign)
        assert rt.apps() == {}
        # a hand-edited fingerprint is refused too, even when the shapes would fit
        meta = json.loads((tmp_path / "foreign" / "mtpf_app.json").read_text())
        meta["backbone_fingerprint"] = "sha256:" + "0" * 64
        (tmp_path / "foreign" / "mtpf_app.json").write_text(json.dumps(meta))
        with pytest.raises(FingerprintMismatchError):
            rt.register_app("foreign", foreign)


def test_errors_are_clear(demo, tmp_path):
    backbone, apps = demo
    with Runtime(backbone) as rt:
        rt.register_app("ner0", apps["ner0"])
        rt.register_app("tc0", apps["tc0"])
        with pytest.raises(UnknownAppError):
            rt.classify("nope", ["x"])
        with pytest.raises(TaskMismatchError):
            rt.classify("ner0", ["x"])
        with pytest.raises(TaskMismatchError):
            rt.extract_entities("tc0", ["x"])
        with pytest.raises(AppError, match="already registered"):
            rt.register_app("tc0", apps["tc1"])
        with pytest.raises(AppError, match="not an mtpf app adapter"):
            rt.register_app("bad", tmp_path)
        assert rt.classify("tc0", []) == []
        assert rt.embed("tc0", []).shape == (0, 32)
        assert rt.extract_entities("ner0", ["", "   "]) == [[], []]
        # longer than max_length: truncated, still answered; offsets stay valid
        long = " ".join(["Paris"] * 400)
        spans = rt.extract_entities("ner0", [long])[0]
        assert all(long[s["start"]:s["end"]] == s["text"] for s in spans)
        with pytest.raises(UnknownAppError):
            rt.unregister_app("nope")


def test_hot_register_unregister_loses_no_request(demo, refs):
    backbone, apps = demo
    rt = Runtime(backbone, max_wait_ms=2, max_batch_size=16)
    rt.register_app("tc0", apps["tc0"])
    rt.register_app("ner1", apps["ner1"])
    stop = threading.Event()
    accepted, refused, results, errors = [], [], [], []
    lock = threading.Lock()

    def client(app, op, k):
        i = 0
        while not stop.is_set():
            text = TEXTS[(i + k) % len(TEXTS)]
            i += 1
            try:
                fut = rt.submit(app, op, [text])
            except UnknownAppError:
                with lock:
                    refused.append(app)
                time.sleep(0.001)
                continue
            with lock:
                accepted.append(app)
            try:
                out = fut.result(timeout=60)
            except Exception as exc:  # noqa: BLE001 - any failure is a lost request
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                results.append((app, op, text, out[0]))

    threads = [threading.Thread(target=client, args=a) for a in
               [("tc0", "embed", 0), ("ner1", "entities", 1), ("hot", "embed", 2), ("hot", "embed", 3)]]
    for t in threads:
        t.start()
    for cycle in range(6):  # the "hot" app alternates between two adapters and absence
        rt.register_app("hot", apps["tc1" if cycle % 2 == 0 else "tch0"])
        time.sleep(0.15)
        rt.unregister_app("hot")
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    rt.close()
    assert not errors
    assert len(results) == len(accepted) > 0
    assert refused  # calls during the gaps were refused up front, not accepted and dropped
    assert {a for a, *_ in results} == {"tc0", "ner1", "hot"}
    # every stable-app answer is the right one (no mix-up under churn)
    for app, op, text, out in results[:200]:
        if app == "tc0":
            np.testing.assert_allclose(out, refs["tc0"].embed(text).numpy(), atol=1e-5)
        elif app == "hot":
            ok = [np.allclose(out, refs[n].embed(text).numpy(), atol=1e-5) for n in ("tc1", "tch0")]
            assert any(ok)
