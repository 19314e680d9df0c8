"""`mtpf export APP --hf`: app adapters as plain transformers / sentence-transformers folders, loaded without mtpf."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtpf.cli import main as cli_main

# one WordPiece token per word: pipeline's "simple" (per token) and the runtime (per word) see the same units
SINGLE_TOKEN_TEXTS = ["john smith went to paris and london with mary on monday .",
                      "the company said berlin , new york and rome are big cities"]
# words of several sub-tokens and punctuation glued to words: "first" aggregation is the runtime's word rule
MIXED_TEXTS = ["Meet Anna Smithers in Parisville, unbelievably quickly!",
               "Obama visited Grubenhagen schools on Monday."]

PIPELINE_SCRIPT = r"""
import json, sys
from transformers import pipeline
ner = pipeline("token-classification", model=sys.argv[1], aggregation_strategy=sys.argv[2], device="cpu")
texts = json.loads(sys.argv[3])
out = [[{"type": e["entity_group"], "start": int(e["start"]), "end": int(e["end"]), "score": float(e["score"])}
        for e in ner(t)] for t in texts]
assert not [m for m in sys.modules if m == "mtpf" or m.startswith("mtpf.")], "mtpf was imported"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from mtpf.runtime.testing import make_demo_apps

    return make_demo_apps(tmp_path_factory.mktemp("hf"), n_ner=1, n_tc=1, head_only_tc=0, seed=3)


def _runtime_entities(backbone, app, texts):
    from mtpf.runtime import Runtime

    with Runtime(backbone) as rt:
        rt.register_app("ner", app)
        return rt.extract_entities("ner", texts)


def _pipeline_entities(folder, strategy, texts):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(folder), strategy, json.dumps(texts)],
                         check=False, capture_output=True, text=True, env=env, cwd=str(folder.parent), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _same(runtime, pipe):
    assert sum(len(x) for x in runtime) >= 2  # the random app does find entities: the comparison means something
    for want, got in zip(runtime, pipe):
        assert [(e["type"], e["start"], e["end"]) for e in want] == [(e["type"], e["start"], e["end"]) for e in got]
        np.testing.assert_allclose([e["score"] for e in want], [e["score"] for e in got], atol=1e-4)


def test_ner_app_exports_to_a_token_classification_pipeline_with_the_runtimes_entities(demo, tmp_path,
                                                                                       one_torch_thread):
    from transformers import AutoConfig

    backbone, apps = demo
    out = tmp_path / "ner-hf"
    assert cli_main(["export", apps["ner0"], "--hf", "--out", str(out)]) == 0
    cfg = AutoConfig.from_pretrained(out)
    labels = json.loads((Path(apps["ner0"]) / "mtpf_app.json").read_text())["labels"]
    assert cfg.id2label == dict(enumerate(labels)) and cfg.label2id == {x: i for i, x in enumerate(labels)}
    assert not (out / "adapter_config.json").exists()  # LoRA merged: a plain transformers folder
    _same(_runtime_entities(backbone, apps["ner0"], SINGLE_TOKEN_TEXTS),
          _pipeline_entities(out, "simple", SINGLE_TOKEN_TEXTS))
    _same(_runtime_entities(backbone, apps["ner0"], MIXED_TEXTS), _pipeline_entities(out, "first", MIXED_TEXTS))


def test_tc_app_exports_to_sentence_transformers_with_a_usable_head(demo, tmp_path, one_torch_thread):
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from mtpf.runtime import Runtime

    backbone, apps = demo
    out = tmp_path / "tc-st"
    assert cli_main(["export", apps["tc0"], "--hf", "--out", str(out)]) == 0
    texts = ["I lost my card", "where is my money transfer", "great service, thanks"]
    with Runtime(backbone) as rt:
        rt.register_app("tc", apps["tc0"])
        want_emb = rt.embed("tc", texts)
        want = rt.classify("tc", texts)

    model = SentenceTransformer(str(out), device="cpu")  # the documented lines of the model card
    head = load_file(str(out / "classifier" / "head.safetensors"))
    labels = json.loads((out / "classifier" / "config.json").read_text())["labels"]
    emb = model.encode(texts)
    logits = emb @ head["weight"].T + head["bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(emb, want_emb, atol=1e-5)
    assert [labels[i] for i in probs.argmax(1)] == [w["label"] for w in want]
    np.testing.assert_allclose(probs.max(1), [w["score"] for w in want], atol=1e-5)
    _, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"]  # pooler saved: no newly initialised weights
    assert "TC_HEAD_USAGE" not in (out / "README.md").read_text() and "classifier/head.safetensors" in \
        (out / "README.md").read_text()
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")  # written in a temporary folder: still named after the real one
    assert card.data.model_name == "tc-st" if card.data.eval_results else card.data.model_name is None
    # what SentenceTransformer(out) computes is embeddings: tagged as sentence-transformers tags its own folders
    assert card.data.pipeline_tag == "sentence-similarity" and card.data.library_name == "sentence-transformers"


def test_hf_export_never_replaces_a_folder_silently(tmp_path, capsys, demo):
    _, apps = demo
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    assert cli_main(["export", apps["tc0"], "--hf", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "thesis.txt").read_text() == "keep me"
    assert cli_main(["export", apps["tc0"], "--hf", "--onnx", "--out", str(tmp_path / "both")]) == 2
    assert "two commands" in capsys.readouterr().err and not (tmp_path / "both").exists()
    assert cli_main(["export", apps["tc0"], "--hf", "--out", str(out), "--overwrite"]) == 0
    assert (out / "modules.json").is_file() and not (out / "thesis.txt").exists()


def test_hf_export_refuses_a_run_folder_with_one_line(tmp_path, capsys, demo):
    backbone, _ = demo
    assert cli_main(["export", backbone, "--hf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hf exports app adapters" in err[0]


def test_mtpf_adapt_ner_output_is_portable_and_exports(tiny_bert, tmp_path, one_torch_thread):
    """The real `mtpf adapt ner` output: relative base model, a model card, and an --hf export that the
    pipeline serves with the runtime's entities."""
    import random

    from huggingface_hub import ModelCard

    rng = random.Random(0)
    names, places = ["john", "mary", "anna"], ["paris", "london", "berlin"]
    data = tmp_path / "data" / "toyner"
    data.mkdir(parents=True)
    for split, n in (("train", 24), ("dev", 6), ("test", 6)):
        rows = []
        for _ in range(n):
            rows.append({"tokens": [rng.choice(names), "went", "to", rng.choice(places), "."],
                         "tags": ["B-PER", "O", "O", "B-LOC", "O"]})
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    app = tmp_path / "apps" / "toy-ner"
    assert cli_main(["adapt", "ner", "--model", tiny_bert, "--data", str(data), "--output", str(app),
                     "--epochs-warmup", "1", "--epochs", "1", "--batch-size", "8", "--no-progress"]) == 0
    base = json.loads((app / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not Path(base).is_absolute() and (app / base).resolve() == Path(tiny_bert).resolve()
    card = ModelCard.load(app / "README.md")
    assert card.data.datasets == ["toyner"] and "f1" in {e.metric_type for e in card.data.eval_results}
    assert "mtpf adapt ner" in card.text or "pytest" in card.text
    assert card.data.model_name == "toy-ner" and 'register_app("app", "toy-ner")' in card.text

    out = tmp_path / "toy-ner-hf"
    assert cli_main(["export", str(app), "--hf", "--out", str(out)]) == 0  # base model found from the relative path
    texts = ["john went to paris .", "mary and anna went to london and berlin ."]
    want = _runtime_entities(tiny_bert, str(app), texts)
    got = _pipeline_entities(out, "simple", texts)
    for w, g in zip(want, got):
        assert [(e["type"], e["start"], e["end"]) for e in w] == [(e["type"], e["start"], e["end"]) for e in g]


def test_a_head_only_app_exports_without_backbone(tiny_bert, tmp_path, capsys, one_torch_thread):
    """A head-only TC app has no adapter_config.json to name its backbone: `mtpf export` takes the model its
    mtpf_app.json was trained on (fingerprint checked) instead of asking for --backbone."""
    sample = Path(__file__).resolve().parents[1] / "src" / "mtpf" / "sample_data" / "cls" / "sample_intents"
    app = tmp_path / "intents"
    assert cli_main(["adapt", "tc", "--model", tiny_bert, "--data", str(sample), "--output", str(app),
                     "--no-progress"]) == 0
    assert not (app / "adapter_config.json").exists()
    assert cli_main(["export", str(app), "--hf", "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "modules.json").is_file()
    import shutil

    shutil.move(tiny_bert, tmp_path / "moved")  # the model it was trained on is gone: ask for --backbone
    try:
        assert cli_main(["export", str(app), "--onnx"]) == 2
        assert "pass --backbone" in capsys.readouterr().err
    finally:
        shutil.move(tmp_path / "moved", tiny_bert)
