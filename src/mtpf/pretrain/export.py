"""Write a finished pre-finetuning run in the ecosystem's formats.

    RUN/backbone/              HF model + tokenizer (AutoModel.from_pretrained works)
    RUN/adapters/{ner,tc}/     PEFT LoRA folders (PeftModel.from_pretrained(backbone, path) works)
                               + mtpf_adapter.json (task, LoRA spec, fingerprint of the backbone)
    RUN/heads/ner_clusters/    the pseudo-label head used in pre-finetuning (safetensors + config.json)
    RUN/sentence_transformer/  backbone (+ tc adapter merged) + mean pooling + normalize
    RUN/run.json               config, versions, data fingerprints, backbone fingerprint
    */README.md                model cards (Hub YAML metadata: base model, datasets, the mtpf command)

Saved encoders carry their pooler again (``load_encoder`` drops it, mtpf never uses it), so loading a folder
with ``AutoModel`` / sentence-transformers reports no newly initialised weights. Adapters record their base model
relative to their own folder (``../../backbone``), not as an absolute path of this machine; PEFT does not resolve
that path itself, so load an adapter with its base given: ``PeftModel.from_pretrained(AutoModel.from_pretrained(
"RUN/backbone"), "RUN/adapters/tc")`` (``AutoPeftModel.from_pretrained("RUN/adapters/tc")`` does not find it).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
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


def pooler_state(source: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """The pooler tensors (``pooler.*`` or ``<prefix>.pooler.*``) of a saved model: a local folder or a hub model
    already in the local cache. Keys without the ``pooler.`` prefix; empty when there is none."""
    from safetensors import safe_open

    from mtpf.encoder import resolve_model

    if source is None:
        return {}
    path = Path(resolve_model(source))
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(source), allow_patterns=["*.safetensors"], local_files_only=True))
        except (OSError, ValueError):  # not cached (or not a hub model): a fresh pooler it is
            return {}
    state = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open handles are not iterable
                m = re.match(r"^(?:\w+\.)?pooler\.(.+)$", key)
                if m:
                    state[m.group(1)] = fh.get_tensor(key)
    return state


def source_max_length(source: str | os.PathLike | None) -> int | None:
    """The token limit of the model pre-finetuning started from when it is a sentence-transformers model (its
    ``max_seq_length``: 256 for all-MiniLM-L6-v2), None otherwise. The run's sentence-transformers folder keeps
    it, so that a run is embedded with the same limit as its base model (they were 512 vs 256: the evaluation
    truncated the base's long texts and not the run's)."""
    from mtpf.downstream.models import st_folder_of, st_max_length

    folder = st_folder_of(str(source)) if source is not None else None
    return st_max_length(folder) if folder is not None else None


@contextlib.contextmanager
def pooler_restored(encoder: torch.nn.Module, source: str | os.PathLike | None):
    """While saving: put back the pooler that ``load_encoder`` drops, so ``AutoModel.from_pretrained`` of the
    saved folder finds every weight. The pooler is never trained or used by mtpf; its weights come from
    ``source`` (the model the encoder was loaded from), else a fresh initialisation."""
    if getattr(encoder, "pooler", "absent") is not None:  # has its pooler, or the architecture has none
        yield encoder
        return
    from transformers import AutoModel

    pooler = AutoModel.from_config(encoder.config).pooler
    state = pooler_state(source)
    if pooler is not None and state:
        try:
            pooler.load_state_dict(state)
        except RuntimeError:  # another architecture's pooler: keep the fresh one
            pass
    param = next(encoder.parameters())
    encoder.pooler = pooler.to(param.device, param.dtype) if pooler is not None else None
    try:
        yield encoder
    finally:
        encoder.pooler = None


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
    # run.json marks a complete run folder (models.resolve, reproduce.py): an earlier export's goes before its
    # backbone is replaced, so a resumed run killed while exporting is not taken for the earlier, whole one
    (out / "run.json").unlink(missing_ok=True)
    from mtpf import cards

    encoder = model.encoder
    backbone = clean_backbone(encoder)
    fp = fingerprint_model(backbone)
    base = config.get("model")
    hub_base = cards.hub_base_model(base)
    datasets = cards.dataset_ids([*data_files, *_hub_sources(config)])

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_backbone = Path(tmp) / "backbone"
        with pooler_restored(backbone, base):
            backbone.save_pretrained(tmp_backbone)
        tokenizer.save_pretrained(tmp_backbone)
        cards.backbone_card(tmp_backbone, config.get("strategy"), hub_base, datasets)
        _replace_dir(tmp_backbone, out / "backbone")

    adapters = {}
    if hasattr(encoder, "peft_config"):
        adapters_dir = out / "adapters"
        adapters_dir.mkdir(exist_ok=True)
        for name in encoder.peft_config:
            encoder.peft_config[name].base_model_name_or_path = str((out / "backbone").resolve())
            with tempfile.TemporaryDirectory(dir=adapters_dir) as tmp:
                encoder.save_pretrained(tmp, selected_adapters=[name])
                # then relative to the adapter's own folder: the run stays loadable wherever it is moved or
                # uploaded (PEFT reads the base's config while saving, hence not set before)
                _set_base_model(Path(tmp) / name, RUN_ADAPTER_BASE)
                meta = {
                    "format": "mtpf-adapter/1",
                    "task": name,
                    "kind": "task-primary" if config.get("strategy") == "mtpf-tpl" else "pf-lora",
                    "backbone_fingerprint": fp,
                    "lora": adapter_specs.get(name, {}),
                }
                saved = Path(tmp) / name
                (saved / ADAPTER_META).write_text(json.dumps(meta, indent=2))
                cards.adapter_card(saved, name, meta["kind"], hub_base, datasets)
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
                                         adapter=model.adapters.get("tc") if "tc" in model.adapters else None,
                                         pooler_source=base, card={"base_model": hub_base, "datasets": datasets})

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
        "command": cards.command_line(),
        **(extra or {}),
    }
    from mtpf.stages import fsync_tree, write_text_durable

    for part in ("backbone", "adapters", "heads", "sentence_transformer"):  # on disk before run.json says done
        if (out / part).is_dir():
            fsync_tree(out / part)
    write_text_durable(out / "run.json", json.dumps(run, indent=2))
    cards.run_card(out)
    return run


RUN_ADAPTER_BASE = "../../backbone"
"""``base_model_name_or_path`` of a run's adapters: RUN/backbone, relative to RUN/adapters/<task>/."""


def _set_base_model(adapter_dir: Path, base: str) -> None:
    cfg = adapter_dir / "adapter_config.json"
    data = json.loads(cfg.read_text())
    data["base_model_name_or_path"] = base
    cfg.write_text(json.dumps(data, indent=2, sort_keys=True))


def _hub_sources(config: dict) -> list[str]:
    """``hub:`` data references anywhere in a pretrain config (pair sets, corpora)."""
    found = []

    def walk(x):
        if isinstance(x, str) and x.startswith("hub:"):
            found.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(config)
    return found


def st_module_classes():
    """sentence-transformers' Transformer, Pooling and Normalize modules: from
    ``sentence_transformers.sentence_transformer.modules`` (>= 5; importing ``sentence_transformers.models`` is
    deprecated there and to be removed), else ``sentence_transformers.models`` (3.x, 4.x)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def export_sentence_transformer(encoder, tokenizer, out_dir: Path, adapter: str | None,
                                pooler_source: str | None = None, card: dict | None = None) -> str:
    """Backbone with the ``adapter`` LoRA merged (if any) + mean pooling + normalisation."""
    from sentence_transformers import SentenceTransformer

    Transformer, Pooling, Normalize = st_module_classes()
    if hasattr(encoder, "peft_config"):
        merged = copy.deepcopy(encoder)
        merged = merged.merge_and_unload(adapter_names=[adapter]) if adapter else merged.unload()
    else:
        merged = encoder
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        hf_dir = Path(tmp) / "hf"
        with pooler_restored(merged, pooler_source):
            merged.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        limit = source_max_length(pooler_source) or min(512, tokenizer.model_max_length)
        transformer = Transformer(str(hf_dir), max_seq_length=limit)
        dim = merged.config.hidden_size
        st = SentenceTransformer(modules=[transformer, Pooling(dim, pooling_mode="mean"), Normalize()], device="cpu")
        st_tmp = Path(tmp) / "st"
        st.save(str(st_tmp))
        from mtpf import cards

        cards.sentence_transformer_card(st_tmp, adapter, **(card or {}))
        _replace_dir(st_tmp, out_dir)
    return str(out_dir)
