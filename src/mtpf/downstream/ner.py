"""NER adaptation (paper Appendix A): token classification head + LoRA on the bare encoder, saved as an app adapter.

The parts live in their own modules; this one saves/loads app adapters and keeps the public names importable:

* :mod:`~mtpf.downstream.ner_config`: ``NerConfig`` and the recipes (``default``, ``paper``);
* :mod:`~mtpf.downstream.ner_data`: encoding (labels on first sub-tokens, windows of whole words), batches;
* :mod:`~mtpf.downstream.ner_model`: ``NerModel``, its LoRA (r 32 / alpha 64 on query, key, MLP of every
  layer, full module names from ``mtpf.lora.lora_target_modules``), partial init from a run's ``ner`` adapter;
* :mod:`~mtpf.downstream.ner_train`: the two-stage loop through accelerate, model selection on dev;
* :mod:`~mtpf.downstream.ner_checkpoint`: stage 2's epoch checkpoints, so a cut adaptation continues;
* :mod:`~mtpf.downstream.ner_metrics`: prediction per word, seqeval entity-level micro P/R/F1.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from mtpf.downstream.ner_config import QUICK, RECIPES, NerConfig  # noqa: F401
from mtpf.downstream.ner_data import IGNORE, EncodedNer, bucket_batches, encode_ner  # noqa: F401
from mtpf.downstream.ner_metrics import evaluate_split, predict_words, seqeval_scores  # noqa: F401
from mtpf.downstream.ner_model import NerModel, build_lora, init_from_adapter  # noqa: F401
from mtpf.downstream.ner_train import NerResult, train_ner  # noqa: F401


def save_ner_app(result: NerResult, model_ref, output: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write the adapted LoRA (PEFT format), head and label map as an app adapter folder (docs/formats.md)."""
    from safetensors.torch import save_file

    model = result.model
    if model is None:
        raise ValueError("save_ner_app needs train_ner(..., keep_model=True)")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    peft_model = model.encoder
    backbone_path = str(Path(model_ref.backbone).resolve()) if Path(model_ref.backbone).exists() else model_ref.backbone
    peft_model.peft_config["default"].base_model_name_or_path = backbone_path
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        app = Path(tmp) / "app"
        peft_model.save_pretrained(str(app))
        save_file({"weight": model.head.weight.detach().contiguous().cpu(),
                   "bias": model.head.bias.detach().contiguous().cpu()}, str(app / "head.safetensors"))
        meta = {"format": "mtpf-app/1", "task": "ner", "labels": list(result.labels),
                "backbone_fingerprint": model_ref.backbone_fingerprint(), "has_lora": True,
                "max_length": result.max_length,
                "metrics": {"test": result.test, **({"dev": result.dev} if result.dev else {})},
                "training": {"model": model_ref.ref, "selection": result.selection, "best_epoch": result.best_epoch,
                             "initialised_from_ner_adapter": result.initialised_modules, **(extra or {})}}
        (app / "mtpf_app.json").write_text(json.dumps(meta, indent=2))
        from mtpf.downstream.models import finish_app

        # the LoRA's base model relative to the final folder, and the model card, before the folder moves there:
        # a folder under its final name is complete
        finish_app(app, model_ref, final_dir=out)
        from mtpf.stages import fsync_dir, fsync_tree

        fsync_tree(app)  # on disk before it counts as the app (and `adapt ner` deletes its checkpoints)
        if out.exists():
            shutil.rmtree(out)
        os.replace(app, out)
        fsync_dir(out.parent)  # the rename itself
    return meta


def load_ner_app(app_dir: str | os.PathLike, backbone: str | None = None) -> tuple[NerModel, dict]:
    """Load an app adapter back onto its backbone (for checks and tests; the runtime has its own loader)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from mtpf.encoder import load_encoder

    app = Path(app_dir)
    meta = json.loads((app / "mtpf_app.json").read_text())
    if backbone is None:
        from mtpf.downstream.models import resolve_base_model

        backbone = resolve_base_model(app)  # recorded relative to the app folder, or a hub id
    base = backbone
    peft_model = PeftModel.from_pretrained(load_encoder(base), str(app))
    model = NerModel(peft_model, len(meta["labels"]))
    model.head.load_state_dict(load_file(str(app / "head.safetensors")))
    return model.eval(), meta
