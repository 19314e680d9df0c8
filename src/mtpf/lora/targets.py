"""Exact LoRA target module names for BERT-like encoders.

PEFT matches a plain string target by suffix, so ``output.dense`` would also hit
``attention.output.dense``. We therefore always hand PEFT the full module names we mean.
"""
from __future__ import annotations

import re

from torch import nn

# Per model family: the layer stack prefix and the module suffix of each target part.
_FAMILIES = {
    # BERT, MiniLM (BertModel), RoBERTa, XLM-R, ELECTRA, NuNER (RoBERTa) share the HF BERT layout.
    "bert": {
        "layer_re": r"^(?:.*\.)?encoder\.layer\.(\d+)$",
        "query": ["attention.self.query"],
        "key": ["attention.self.key"],
        "value": ["attention.self.value"],
        "attn_out": ["attention.output.dense"],
        "mlp": ["intermediate.dense", "output.dense"],
    },
    "distilbert": {
        "layer_re": r"^(?:.*\.)?transformer\.layer\.(\d+)$",
        "query": ["attention.q_lin"],
        "key": ["attention.k_lin"],
        "value": ["attention.v_lin"],
        "attn_out": ["attention.out_lin"],
        "mlp": ["ffn.lin1", "ffn.lin2"],
    },
}


def _family(model: nn.Module) -> dict:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "distilbert":
        return _FAMILIES["distilbert"]
    names = {n for n, _ in model.named_modules()}
    if any(re.match(_FAMILIES["bert"]["layer_re"], n) for n in names):
        return _FAMILIES["bert"]
    if any(re.match(_FAMILIES["distilbert"]["layer_re"], n) for n in names):
        return _FAMILIES["distilbert"]
    raise ValueError(
        f"don't know where the transformer layers of {type(model).__name__} (model_type={model_type}) are; "
        "supported: BERT-like (encoder.layer.N) and DistilBERT-like (transformer.layer.N) encoders"
    )


def encoder_layers(model: nn.Module) -> list[str]:
    """Module names of the transformer layers, in depth order."""
    pattern = re.compile(_family(model)["layer_re"])
    found = []
    for name, _ in model.named_modules():
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


def select_layers(num_layers: int, layers: int | str) -> list[int]:
    """Indices of the last ``layers`` layers (or all)."""
    if layers == "all":
        return list(range(num_layers))
    if layers > num_layers:
        from mtpf.config import ConfigError

        raise ConfigError(f"asked for LoRA on the last {layers} layers but the model has only {num_layers}; "
                          "lower the layers setting")
    return list(range(num_layers - layers, num_layers))


def lora_target_modules(model: nn.Module, layers: int | str = "all", targets=("query", "key", "mlp")) -> list[str]:
    """Full names of the linear modules to adapt, e.g. ``encoder.layer.5.attention.self.query``."""
    family = _family(model)
    layer_names = encoder_layers(model)
    modules = dict(model.named_modules())
    out = []
    for idx in select_layers(len(layer_names), layers):
        for part in targets:
            for suffix in family[part]:
                name = f"{layer_names[idx]}.{suffix}"
                module = modules.get(name)
                # an already-injected LoRA layer wraps the Linear as ``base_layer``
                if not isinstance(getattr(module, "base_layer", module), nn.Linear):
                    raise ValueError(f"expected a Linear module at {name} for LoRA target {part!r}")
                out.append(name)
    return out


def layer_index(module_name: str) -> int | None:
    """The transformer-layer index inside a (possibly PEFT-prefixed) module or parameter name."""
    m = re.search(r"(?:encoder|transformer)\.layer\.(\d+)\.", module_name)
    return int(m.group(1)) if m else None
