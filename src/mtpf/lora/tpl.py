"""Task-primary LoRAs (MTPF-TPL, Section 6 of the paper).

Two named PEFT adapters (``ner`` and ``tc``) live on the same encoder. Each task's forward pass runs with
only its own adapter active, so autograd routes each task loss to its own group, while the shared
backbone (trainable, unlike ordinary LoRA) collects the gradient of both.

Why this is written by hand: PEFT's ``set_adapter`` also flips ``requires_grad`` off for the inactive
adapter. We must switch the active adapter several times inside one optimisation step without touching
``requires_grad`` (the other group's accumulated gradient must survive, and DDP registers its hooks once),
and PEFT has no public switch that only changes which adapter runs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from mtpf.lora.config import LoraSpec
from mtpf.lora.targets import lora_target_modules


def peft_lora_config(model: nn.Module, spec: LoraSpec):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=lora_target_modules(model, spec.layers, spec.targets),
        bias="none",
    )


def add_task_adapters(model: nn.Module, specs: dict[str, LoraSpec], train_backbone: bool):
    """Wrap ``model`` in a PeftModel carrying one LoRA adapter per task name.

    ``train_backbone=True`` is MTPF-TPL (backbone shared and trained by every task);
    ``False`` is PF-L (frozen backbone, LoRA only).
    """
    from peft import get_peft_model

    if not specs:
        raise ValueError("add_task_adapters needs at least one adapter spec")
    names = list(specs)
    peft_model = get_peft_model(model, peft_lora_config(model, specs[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, peft_lora_config(peft_model.get_base_model(), specs[name]))
    for pname, param in peft_model.named_parameters():
        param.requires_grad = ("lora_" in pname) or train_backbone
    return peft_model


def _tuner_layers(model: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def active_adapter(model: nn.Module, name: str | None) -> Iterator[None]:
    """Run the enclosed forward passes with only adapter ``name`` active (``None``: no adapter at all).

    Only the choice of adapter changes; ``requires_grad`` is left alone (see module docstring).
    """
    layers = _tuner_layers(model)
    saved = [layer._active_adapter for layer in layers]
    try:
        for layer in layers:
            if name is None:
                layer._active_adapter = []
            elif name in layer.lora_A:
                layer._active_adapter = [name]
            else:  # this layer is not covered by the adapter (e.g. TPL only on the last layers)
                layer._active_adapter = []
        yield
    finally:
        for layer, old in zip(layers, saved):
            layer._active_adapter = old


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The LoRA parameters that belong to adapter ``name``."""
    return {
        n: p
        for n, p in model.named_parameters()
        if f".lora_A.{name}." in n or f".lora_B.{name}." in n or f".lora_embedding_A.{name}" in n
    }
