"""Write a finished pre-finetuning run in the ecosystem's formats.

    RUN/backbone/              HF model + tokenizer (AutoModel.from_pretrained works)
    RUN/adapters/{ner,tc}/     PEFT LoRA folders (PeftModel.from_pretrained(backbone, path) works)
                               + mtpf_adapter.json (task, LoRA spec, fingerprint of the backbone)
    RUN/heads/ner_clusters/    the pseudo-label head used in pre-finetuning (safetensors + config.json)
    RUN/sentence_transformer/  backbone (+ tc adapter merged) + mean pooling + normalize
    RUN/run.json               config, versions, data fingerprints, backbone fingerprint
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mtpf.encoder import fingerprint_model

ADAPTER_META = "mtpf_adapter.json"


def file_fingerprint(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def versions() -> dict:
    import accelerate
    import peft
    import sentence_transformers
    import transformers

    from mtpf import __version__

    return {
        "mtpf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def clean_backbone(encoder: torch.nn.Module) -> torch.nn.Module:
    """The encoder without any LoRA layers (a copy when it is a PeftModel)."""
    if hasattr(encoder, "peft_config"):
        return copy.deepcopy(encoder).unload()
    return encoder


def export_run(model, tokenizer, out_dir: str | Path, config: dict, data_files: list[str], adapter_specs: dict,
               extra: dict | None = None) -> dict:
    """Write backbone, adapters, heads, sentence-transformer and run.json; returns run.json's content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    backbone = clean_backbone(encoder)
    fp = fingerprint_model(backbone)

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_backbone = Path(tmp) / "backbone"
        backbone.save_pretrained(tmp_backbone)
        tokenizer.save_pretrained(tmp_backbone)
        _replace_dir(tmp_backbone, out / "backbone")

    adapters = {}
    if hasattr(encoder, "peft_config"):
        adapters_dir = out / "adapters"
        adapters_dir.mkdir(exist_ok=True)
        for name in encoder.peft_config:
            encoder.peft_config[name].base_model_name_or_path = str((out / "backbone").resolve())
            with tempfile.TemporaryDirectory(dir=adapters_dir) as tmp:
                encoder.save_pretrained(tmp, selected_adapters=[name])
                meta = {
                    "format": "mtpf-adapter/1",
                    "task": name,
                    "kind": "task-primary" if config.get("strategy") == "mtpf-tpl" else "pf-lora",
                    "backbone_fingerprint": fp,
                    "lora": adapter_specs.get(name, {}),
                }
                saved = Path(tmp) / name
                (saved / ADAPTER_META).write_text(json.dumps(meta, indent=2))
                _replace_dir(saved, adapters_dir / name)
            adapters[name] = str(adapters_dir / name)

    heads = {}
    if getattr(model, "ner_head", None) is not None:
        from safetensors.torch import save_file

        head_dir = out / "heads" / "ner_clusters"
        head_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.ner_head.state_dict().items()},
                  str(head_dir / "head.safetensors"))
        (head_dir / "config.json").write_text(json.dumps({
            "num_clusters": model.ner_head.out_features, "hidden_size": model.ner_head.in_features,
            "adapter": model.adapters.get("ner"), "backbone_fingerprint": fp,
        }, indent=2))
        heads["ner_clusters"] = str(head_dir)

    st_dir = export_sentence_transformer(encoder, tokenizer, out / "sentence_transformer",
                                         adapter=model.adapters.get("tc") if "tc" in model.adapters else None)

    run = {
        "format": "mtpf-run/1",
        "config": config,
        "versions": versions(),
        "data_fingerprints": {f: file_fingerprint(f) for f in data_files},
        "backbone_fingerprint": fp,
        "backbone": str(out / "backbone"),
        "adapters": adapters,
        "heads": heads,
        "sentence_transformer": st_dir,
        **(extra or {}),
    }
    tmp_json = out / "run.json.tmp"
    tmp_json.write_text(json.dumps(run, indent=2))
    os.replace(tmp_json, out / "run.json")
    return run


def export_sentence_transformer(encoder, tokenizer, out_dir: Path, adapter: str | None) -> str:
    """Backbone with the ``adapter`` LoRA merged (if any) + mean pooling + normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    if hasattr(encoder, "peft_config"):
        merged = copy.deepcopy(encoder)
        merged = merged.merge_and_unload(adapter_names=[adapter]) if adapter else merged.unload()
    else:
        merged = encoder
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        hf_dir = Path(tmp) / "hf"
        merged.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        transformer = Transformer(str(hf_dir), max_seq_length=min(512, tokenizer.model_max_length))
        dim = transformer.get_embedding_dimension()
        st = SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode="mean"), Normalize()], device="cpu")
        st_tmp = Path(tmp) / "st"
        st.save(str(st_tmp))
        _replace_dir(st_tmp, out_dir)
    return str(out_dir)
