"""``mtpf export APP --hf``: an app adapter as a plain ecosystem folder that needs no mtpf to load.

* NER app -> a transformers ``AutoModelForTokenClassification`` folder: the backbone with the app's LoRA merged,
  the app's head as the model's ``classifier``, ``id2label``/``label2id`` from the app's BIO labels::

      pipeline("token-classification", model=OUT, aggregation_strategy="first")

  ``"first"`` tags each word by its first sub-token, the runtime's rule, so it returns the runtime's entities
  (words as the tokenizer splits them; the runtime splits inner hyphens/apostrophes differently). ``"simple"``
  gives the same entities when every word is one token. Checked for WordPiece tokenizers (BERT/MiniLM,
  DistilBERT); byte-level BPE (RoBERTa) tokenises raw text differently from pre-split words and can differ.
  The pipeline truncates texts over the app's max_length (the runtime windows them) and groups decomposed
  accents, CJK and zero-width characters by its own heuristics (docs/formats.md).
* TC app -> a sentence-transformers folder (LoRA merged, the app's pooling and normalisation), so
  ``SentenceTransformer(OUT).encode`` is the runtime's ``embed``, plus the classifier head in
  ``OUT/classifier/`` (``head.safetensors`` and ``config.json`` with the labels): ``softmax(e @ W.T + b)``.
  sentence-transformers has no linear-classifier module that keeps ``encode`` returning embeddings, hence the
  separate head.

Every folder gets a model card (README.md).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

TC_HEAD_USAGE = """```python
import json
import numpy as np
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{path}")
head = load_file("{path}/classifier/head.safetensors")
labels = json.load(open("{path}/classifier/config.json"))["labels"]
logits = model.encode(["I lost my card"]) @ head["weight"].T + head["bias"]
probs = np.exp(logits - logits.max(1, keepdims=True)); probs /= probs.sum(1, keepdims=True)
print([labels[i] for i in probs.argmax(1)])
```"""


def export_app_hf(app_dir: str | Path, encoder, tokenizer, out_dir: str | Path, backbone_ref: str) -> Path:
    """Write the app in ``app_dir`` (validated by :func:`mtpf.runtime.app.read_app`) to ``out_dir``.

    ``encoder`` is the bare backbone the app was trained on (fingerprint already checked by the caller)."""
    from mtpf import cards
    from mtpf.runtime.app import read_app
    from mtpf.runtime.onnx_export import merged_app_encoder

    spec = read_app(app_dir)
    merged = merged_app_encoder(encoder, spec.path) if spec.has_lora else encoder
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads((spec.path / "mtpf_app.json").read_text())
    base = cards.hub_base_model((meta.get("training") or {}).get("model")) or cards.hub_base_model(backbone_ref)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        folder = Path(tmp) / "export"
        if spec.task == "ner":
            _token_classification(spec, merged, tokenizer, folder)
        else:
            _sentence_transformer(spec, merged, tokenizer, folder, backbone_ref)
        _card(spec, meta, folder, base, out.name)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(folder), out)
    return out


def _token_classification(spec, merged, tokenizer, folder: Path) -> None:
    import torch
    from transformers import AutoModelForTokenClassification

    config = merged.config.__class__.from_dict(merged.config.to_dict())
    config.num_labels = spec.num_labels
    config.id2label = dict(enumerate(spec.labels))
    config.label2id = {label: i for i, label in enumerate(spec.labels)}
    config.architectures = None
    model = AutoModelForTokenClassification.from_config(config)
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, torch.nn.Linear) or classifier.in_features != spec.head_weight.shape[1]:
        raise ValueError(f"{config.model_type}: its AutoModelForTokenClassification has no linear `classifier` "
                         "on the last hidden state; --hf supports BERT-like encoders (BERT, DistilBERT, RoBERTa, ...)")
    state = {k: v for k, v in merged.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = model.base_model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("pooler.")]:
        raise ValueError(f"backbone weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(spec.head_weight))
        classifier.bias.copy_(torch.from_numpy(spec.head_bias))
    model.eval().save_pretrained(folder)
    tok = _copy_tokenizer(tokenizer, spec.max_length)
    tok.save_pretrained(folder)


def _sentence_transformer(spec, merged, tokenizer, folder: Path, backbone_ref: str) -> None:
    from safetensors.numpy import save_file
    from sentence_transformers import SentenceTransformer

    from mtpf.pretrain.export import pooler_restored, st_module_classes

    Transformer, Pooling, Normalize = st_module_classes()

    hf_dir = folder.parent / "hf"
    with pooler_restored(merged, backbone_ref):
        merged.save_pretrained(hf_dir)
    _copy_tokenizer(tokenizer, spec.max_length).save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=spec.max_length)
    modules = [transformer, Pooling(merged.config.hidden_size, pooling_mode=spec.pooling)]
    if spec.normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    (folder / "classifier").mkdir()
    save_file({"weight": spec.head_weight, "bias": spec.head_bias}, str(folder / "classifier" / "head.safetensors"))
    (folder / "classifier" / "config.json").write_text(json.dumps(
        {"labels": spec.labels, "input": "the sentence embedding (SentenceTransformer.encode)",
         "output": "logits = e @ weight.T + bias; softmax gives the probabilities"}, indent=2))


def _copy_tokenizer(tokenizer, max_length: int):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = min(int(max_length), tok.model_max_length)  # the app's limit (stride= can window)
    return tok


def _card(spec, meta: dict, folder: Path, base: str | None, name: str) -> None:
    from mtpf import cards

    training = meta.get("training") or {}
    datasets = cards.dataset_ids([training["dataset"]] if training.get("dataset") else [])
    if spec.task == "ner":
        usage = f"""```python
from transformers import pipeline

ner = pipeline("token-classification", model="{name}", aggregation_strategy="first")
ner("Meet Anna Smith in Paris on Monday.")
```
`aggregation_strategy="first"` tags a word by its first sub-token, as mtpf's runtime does."""
        cards.write_card(folder, "mtpf NER app (transformers export)",
                         f"An mtpf NER app with its LoRA merged into the encoder; labels: {', '.join(spec.labels)}.",
                         usage, base_model=base, datasets=datasets, metrics=cards.app_metrics(meta),
                         pipeline_tag="token-classification", tags=["ner"], model_name=name)
    else:
        cards.write_card(folder, "mtpf text-classification app (sentence-transformers export)",
                         f"An mtpf TC app: sentence embeddings ({spec.pooling} pooling"
                         f"{', L2-normalised' if spec.normalize else ''}, LoRA merged) and a linear classifier "
                         f"over {spec.num_labels} labels in `classifier/`.",
                         TC_HEAD_USAGE.format(path=name), base_model=base, datasets=datasets,
                         metrics=cards.app_metrics(meta), library_name="sentence-transformers",
                         # what the folder computes is embeddings (the classifier is beside it): tagged as
                         # sentence-transformers' own save() tags such a pipeline
                         pipeline_tag="sentence-similarity",
                         tags=["sentence-transformers", "sentence-similarity", "feature-extraction",
                               "text-classification", "tc"], model_name=name)
