"""What ``mtpf export PATH --onnx`` writes, by the kind of PATH.

* run folder (run.json / backbone/):  RUN/onnx/backbone/ and RUN/onnx/adapters/<task>/ (task-primary LoRA merged)
* app adapter (mtpf_app.json):        APP/onnx/ — the backbone with the app's LoRA merged (the backbone alone
                                      when the app has no LoRA); the head stays in APP/head.safetensors
* backbone folder or "packaged":      --out/ (required)

Each folder holds model.onnx[, model.int8.onnx] and export.json (see :mod:`mtpf.runtime.onnx_export`).

``mtpf export APP --hf [--out DIR]`` (default APP/hf) writes the app as a plain transformers /
sentence-transformers folder instead (see :mod:`mtpf.runtime.hf_export`).
"""
from __future__ import annotations

from pathlib import Path


def export_path(path: str, out: str | None = None, int8: bool = False, backbone: str | None = None,
                strict: bool = True) -> dict[str, dict]:
    from mtpf import cards
    from mtpf.encoder import fingerprint_model, load_encoder, load_tokenizer, resolve_model
    from mtpf.runtime.app import read_app
    from mtpf.runtime.onnx_export import adapter_fingerprint, export_encoder_dir, merged_app_encoder

    p = Path(path)
    reports: dict[str, dict] = {}
    if (p / "mtpf_app.json").is_file():
        spec = read_app(p)
        ref, encoder, fp = _app_backbone(p, spec, backbone)
        model = merged_app_encoder(encoder, p) if spec.has_lora else encoder
        out_dir = Path(out) if out else p / "onnx"
        reports[str(out_dir)] = export_encoder_dir(
            model, load_tokenizer(ref), out_dir, int8=int8, kind="app", backbone_fingerprint=fp,
            adapter_fingerprint=adapter_fingerprint(p) if spec.has_lora else None, source=str(p), strict=strict)
        cards.onnx_card(out_dir, ref, "app", int8)
        return reports

    is_run = (p / "run.json").is_file() or (p / "backbone" / "config.json").is_file()
    ref = resolve_model(path)  # first: a path that is nothing (no folder, no hub model) is named as such
    if not is_run and out is None:
        raise ValueError(f"{path} is a bare backbone: pass --out DIR")
    if not is_run and not (Path(ref) / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a run folder, app adapter or model folder")
    encoder = load_encoder(ref).eval()
    tokenizer = load_tokenizer(ref)
    fp = fingerprint_model(encoder)
    root = Path(out) if out else p / "onnx"
    bb_dir = root / "backbone" if is_run else root
    reports[str(bb_dir)] = export_encoder_dir(encoder, tokenizer, bb_dir, int8=int8, kind="backbone",
                                              backbone_fingerprint=fp, source=str(ref), strict=strict)
    cards.onnx_card(bb_dir, path if path == "packaged" else ref, "backbone", int8)
    if is_run and (p / "adapters").is_dir():
        for adapter in sorted(d for d in (p / "adapters").iterdir() if (d / "adapter_config.json").is_file()):
            merged = merged_app_encoder(encoder, adapter)
            out_dir = root / "adapters" / adapter.name
            reports[str(out_dir)] = export_encoder_dir(
                merged, tokenizer, out_dir, int8=int8, kind="adapter", backbone_fingerprint=fp,
                adapter_fingerprint=adapter_fingerprint(adapter), source=str(adapter), strict=strict)
            cards.onnx_card(out_dir, ref, "adapter", int8)
    return reports


def _app_backbone(p: Path, spec, backbone: str | None):
    """(reference, loaded encoder, fingerprint) of the backbone an app was trained on, checked by fingerprint."""
    from mtpf.downstream.models import resolve_base_model
    from mtpf.encoder import fingerprint_model, load_encoder, resolve_model

    if backbone is None and spec.has_lora:
        backbone = resolve_base_model(p)
    if backbone is None:  # a head-only app: the model its mtpf_app.json says it was trained on, if still there
        import json

        trained_on = (json.loads((p / "mtpf_app.json").read_text()).get("training") or {}).get("model")
        if trained_on == "packaged" or (trained_on and Path(trained_on).exists()):
            backbone = trained_on
    if not backbone:
        raise ValueError(f"{p}: pass --backbone (the backbone the app was trained on)")
    ref = resolve_model(backbone)
    encoder = load_encoder(ref).eval()
    fp = fingerprint_model(encoder)
    if fp != spec.backbone_fingerprint:
        raise ValueError(f"{p} was trained on backbone {spec.backbone_fingerprint[:23]}..., but {ref} is "
                         f"{fp[:23]}...; pass the right --backbone")
    return ref, encoder, fp


def export_app_hf_path(path: str, out: str | None = None, backbone: str | None = None) -> str:
    """``mtpf export APP --hf``: the app as a transformers (NER) / sentence-transformers (TC) folder."""
    from mtpf.encoder import load_tokenizer
    from mtpf.runtime.app import read_app
    from mtpf.runtime.hf_export import export_app_hf

    p = Path(path)
    if not (p / "mtpf_app.json").is_file():
        raise ValueError(f"{path}: --hf exports app adapters (a folder with mtpf_app.json); a run's backbone and "
                         "sentence_transformer/ folders are already plain Hugging Face folders")
    spec = read_app(p)
    ref, encoder, _ = _app_backbone(p, spec, backbone)
    return str(export_app_hf(p, encoder, load_tokenizer(ref), Path(out) if out else p / "hf", ref))
