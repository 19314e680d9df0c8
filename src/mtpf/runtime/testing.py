"""Random app adapters in the ``mtpf-app/1`` format, for tests and speed benchmarks.

They follow docs/formats.md exactly (PEFT LoRA folder + head.safetensors + mtpf_app.json), so the runtime
cannot tell them from the output of ``mtpf adapt``; only their weights are random.
"""
from __future__ import annotations

import json
from pathlib import Path

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
TC_LABELS = ["negative", "neutral", "positive"]


def make_app_adapter(out_dir: str | Path, backbone: str | Path, task: str = "tc", labels: list[str] | None = None,
                     lora: bool = True, rank: int = 4, alpha: int = 8, layers: int | str = "all",
                     targets=("query", "key", "mlp"), seed: int = 0, lora_std: float = 0.3,
                     normalize: bool = True, max_length: int = 256, encoder=None, fingerprint: str | None = None,
                     lora_from: str | Path | None = None) -> str:
    """Write a random NER or TC app adapter for ``backbone`` to ``out_dir``; returns the folder.

    ``lora_B`` is drawn at random (PEFT initialises it to zero) so every app computes different outputs.
    ``lora_from``: copy the LoRA files of that app folder instead (what ``mtpf adapt tc`` does with the run's
    frozen ``tc`` task-primary adapter: every TC app carries the same adapter, only the head is its own).
    Pass an already loaded ``encoder``/``fingerprint`` to save re-loading the backbone for many apps.
    """
    import torch
    from safetensors.torch import save_file

    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.lora import lora_target_modules

    if task not in ("ner", "tc"):
        raise ValueError(f"task must be ner or tc, got {task!r}")
    labels = list(labels or (NER_LABELS if task == "ner" else TC_LABELS))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc = encoder if encoder is not None else load_encoder(str(backbone))
    fp = fingerprint or fingerprint_model(enc)
    hidden = enc.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    if lora_from is not None:
        import shutil

        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(Path(lora_from) / f, out / f)
        lora = True
    elif lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(target_modules=lora_target_modules(enc, layers, list(targets)), r=rank, lora_alpha=alpha,
                         lora_dropout=0.0, bias="none")
        peft_model = get_peft_model(enc, cfg)
        try:
            with torch.no_grad():
                for name, p in peft_model.named_parameters():
                    if "lora_B" in name or "lora_A" in name:
                        p.copy_(torch.randn(p.shape, generator=gen) * lora_std)
            peft_model.peft_config["default"].base_model_name_or_path = str(Path(backbone).resolve())
            peft_model.save_pretrained(str(out))
        finally:
            peft_model.unload()  # give the caller its bare encoder back (LoRA layers removed)
    weight = torch.randn(len(labels), hidden, generator=gen) * (2.0 / hidden ** 0.5)
    bias = torch.randn(len(labels), generator=gen) * 0.1
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(out / "head.safetensors"))
    meta = {
        "format": "mtpf-app/1",
        "task": task,
        "labels": labels,
        "backbone_fingerprint": fp,
        "has_lora": lora,
        "max_length": max_length,
        "metrics": {},
    }
    if task == "tc":
        meta.update({"pooling": "mean", "normalize": normalize})
    (out / "mtpf_app.json").write_text(json.dumps(meta, indent=2))
    return str(out)


def make_demo_apps(root: str | Path, arch: str = "bert", n_ner: int = 2, n_tc: int = 2, head_only_tc: int = 1,
                   rank: int = 4, seed: int = 0) -> tuple[str, dict[str, str]]:
    """A tiny random backbone under ``root/backbone`` and random apps under ``root/apps/<name>``.

    Apps: ``ner0..`` (LoRA + token head), ``tc0..`` (LoRA + head) and ``tch0..`` (head only, no LoRA).
    Returns ``(backbone_dir, {name: adapter_dir})``.
    """
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.testing import make_tiny_encoder

    root = Path(root)
    backbone = make_tiny_encoder(root / "backbone", arch, seed=seed)
    enc = load_encoder(backbone)
    fp = fingerprint_model(enc)
    apps = {}
    k = seed * 100
    for i in range(n_ner):
        apps[f"ner{i}"] = make_app_adapter(root / "apps" / f"ner{i}", backbone, "ner", rank=rank, seed=k + i,
                                           encoder=enc, fingerprint=fp)
    for i in range(n_tc):
        apps[f"tc{i}"] = make_app_adapter(root / "apps" / f"tc{i}", backbone, "tc", rank=rank, seed=k + 50 + i,
                                          encoder=enc, fingerprint=fp)
    for i in range(head_only_tc):
        apps[f"tch{i}"] = make_app_adapter(root / "apps" / f"tch{i}", backbone, "tc", lora=False, seed=k + 80 + i,
                                           encoder=enc, fingerprint=fp, normalize=False)
    return backbone, apps
