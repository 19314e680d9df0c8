"""mtpf switches LoRA adapters by writing PEFT's private ``_active_adapter`` list on each LoRA layer
(``mtpf.lora.tpl.active_adapter``; the runtime's fast switch): PEFT's public ``set_adapter`` resets
``requires_grad`` on every call, which breaks task-primary training and costs ~10 ms per switch.

This test pins the private contract. If it fails after a PEFT upgrade, PEFT changed how the active adapter is
stored: adapt mtpf.lora.tpl and mtpf.runtime.backends before raising the `peft<...` bound in pyproject.toml.
"""
from __future__ import annotations

import torch
from torch import nn


def _two_adapter_model():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("lin", nn.Linear(8, 8))
    model = get_peft_model(base, LoraConfig(target_modules=["lin"], r=2, lora_alpha=4, init_lora_weights=False),
                           adapter_name="ner")
    model.add_adapter("tc", LoraConfig(target_modules=["lin"], r=2, lora_alpha=4, init_lora_weights=False))
    return model.eval()


def test_peft_lora_layers_still_store_the_active_adapter_in__active_adapter():
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = _two_adapter_model()
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers, "no PEFT BaseTunerLayer found"
    for layer in layers:
        assert hasattr(layer, "_active_adapter"), (
            "PEFT's LoRA layers no longer have `_active_adapter`: mtpf's adapter switching "
            "(mtpf.lora.tpl.active_adapter, runtime backends) must be ported before upgrading PEFT")
        assert hasattr(layer, "lora_A") and hasattr(layer, "_disable_adapters")


def test_writing__active_adapter_selects_the_same_adapter_as_set_adapter():
    from mtpf.lora.tpl import active_adapter

    model = _two_adapter_model()
    x = torch.randn(3, 8)
    with torch.no_grad():
        model.set_adapter("tc")
        public_b = model(x)
        model.set_adapter("ner")
        public_a = model(x)
        with model.disable_adapter():
            public_none = model(x)
        assert not torch.allclose(public_a, public_b)
        with active_adapter(model, "tc"):
            assert model.base_model.model.lin.active_adapters == ["tc"]
            torch.testing.assert_close(model(x), public_b)
        with active_adapter(model, None):
            torch.testing.assert_close(model(x), public_none)
        torch.testing.assert_close(model(x), public_a)  # restored on exit
