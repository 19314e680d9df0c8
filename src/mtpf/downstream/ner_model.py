"""The NER model: a PEFT-wrapped bare encoder + a linear head, its LoRA, and partial initialisation from a run's
``ner`` task-primary adapter."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from mtpf.config import ConfigError
from mtpf.downstream.ner_config import NerConfig


class NerModel(nn.Module):
    """PEFT-wrapped bare encoder + a linear head on the last hidden state."""

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def hidden(self, input_ids, attention_mask=None, **packed):
        """``packed``: ``position_ids`` and ``mtpf_pack`` of a padding-free batch (mtpf.pretrain.cpu_speed)."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **packed).last_hidden_state

    def forward(self, input_ids, attention_mask=None, **packed):
        return self.head(self.hidden(input_ids, attention_mask, **packed))


def build_lora(encoder: nn.Module, cfg: NerConfig):
    from peft import LoraConfig, get_peft_model

    from mtpf.lora import lora_target_modules

    try:
        targets = lora_target_modules(encoder, cfg.lora_layers, cfg.lora_targets)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"LoRA targets: {exc}") from None
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none")
    model = get_peft_model(encoder, lcfg)
    return model, targets


def init_from_adapter(peft_model, adapter_dir: str | os.PathLike, cfg: NerConfig,
                      backbone_fingerprint: str | None = None, adapter_name: str = "default") -> list[str]:
    """Copy a PEFT LoRA folder's weights into the matching modules of ``peft_model``'s adapter (partial init).

    Returns the module names that were initialised. Ranks (and alphas) must agree; modules of the source
    adapter that the downstream LoRA does not cover are an error (they would be silently dropped).
    """
    from peft.utils import load_peft_weights

    folder = Path(adapter_dir)
    acfg_file = folder / "adapter_config.json"
    has_weights = any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin"))
    if not acfg_file.is_file() or not has_weights:
        raise ConfigError(f"{folder}: not a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors "
                          f"or adapter_model.bin)")
    acfg = json.loads(acfg_file.read_text())
    if int(acfg.get("r", -1)) != cfg.lora_rank:
        raise ConfigError(f"{folder}: the ner task-primary adapter has rank {acfg.get('r')} but the downstream LoRA "
                          f"rank is {cfg.lora_rank}; partial initialisation needs equal ranks "
                          f"(pass --lora-rank {acfg.get('r')}, or --no-adapter-init)")
    if int(acfg.get("lora_alpha", -1)) != cfg.lora_alpha:
        raise ConfigError(f"{folder}: the ner adapter has alpha {acfg.get('lora_alpha')} but the downstream LoRA "
                          f"alpha is {cfg.lora_alpha} (pass --lora-alpha {acfg.get('lora_alpha')})")
    meta_file = folder / "mtpf_adapter.json"
    if backbone_fingerprint and meta_file.is_file():
        meta_fp = json.loads(meta_file.read_text()).get("backbone_fingerprint")
        if meta_fp and meta_fp != backbone_fingerprint:
            raise ConfigError(f"{folder}: adapter was trained on backbone {meta_fp[:19]}..., "
                              f"not on this backbone ({backbone_fingerprint[:19]}...)")
    src = load_peft_weights(str(folder), device="cpu")  # PEFT's own reader: .safetensors, else a pickled .bin
    params = dict(peft_model.named_parameters())
    covered, missing = set(), []
    with torch.no_grad():
        for key, value in src.items():
            for part in ("lora_A", "lora_B"):
                marker = f".{part}.weight"
                if key.endswith(marker):
                    module = key[: -len(marker)]
                    target = f"{module}.{part}.{adapter_name}.weight"
                    if target not in params:
                        missing.append(module)
                        break
                    if params[target].shape != value.shape:
                        raise ConfigError(f"{folder}: {key} has shape {tuple(value.shape)}, the downstream LoRA "
                                          f"expects {tuple(params[target].shape)}")
                    params[target].copy_(value.to(params[target].dtype))
                    covered.add(module.removeprefix("base_model.model."))
                    break
    if missing:
        raise ConfigError(f"{folder}: the ner adapter covers modules the downstream LoRA does not target "
                          f"({sorted(set(missing))[:4]}...); add their parts to --lora-targets")
    return sorted(covered)


def inference_copy(model: NerModel) -> NerModel:
    """A copy with the LoRA merged into the weights: same outputs, no LoRA overhead per forward."""
    if not hasattr(model.encoder, "merge_and_unload"):
        return model
    enc = copy.deepcopy(model.encoder).merge_and_unload()
    out = NerModel.__new__(NerModel)
    nn.Module.__init__(out)
    out.encoder, out.head = enc, model.head
    return out
