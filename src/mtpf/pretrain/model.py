"""The model being pre-finetuned: one encoder, optional task-primary adapters, the pseudo-label head.

A single ``nn.Module`` whose ``forward(task, ...)`` runs one task family, so that DDP (which hooks a
module's forward/backward) sees every task's pass and the task's adapter is switched inside forward.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from mtpf.encoder import encoder_inputs, full_attention_mask, mean_pool
from mtpf.lora import active_adapter


class MultiTaskEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, num_clusters: int | None, adapters: dict[str, str | None]):
        super().__init__()
        self.encoder = encoder
        self.adapters = adapters  # task -> adapter name active for that task (None: plain backbone)
        hidden = encoder.config.hidden_size if hasattr(encoder.config, "hidden_size") else encoder.config.dim
        self.ner_head = nn.Linear(hidden, num_clusters) if num_clusters else None
        self.full_mask = False  # set by the recipe (PretrainConfig.full_attention_mask)

    def _adapter_context(self, task: str):
        if not hasattr(self.encoder, "peft_config"):
            return contextlib.nullcontext()
        return active_adapter(self.encoder, self.adapters.get(task))

    def forward(self, task: str, **batch) -> torch.Tensor:
        """``ner`` -> per-token cluster logits; ``tc`` -> mean-pooled sentence embeddings."""
        inputs = encoder_inputs(batch)
        if self.full_mask and "mtpf_pack" not in inputs and inputs.get("attention_mask") is not None:
            # a ready 4-D mask: no host read of the mask per forward (mtpf.encoder.full_attention_mask)
            inputs["attention_mask"] = full_attention_mask(self.encoder.config, inputs["attention_mask"],
                                                           self.encoder.dtype)
        with self._adapter_context(task):
            hidden = self.encoder(**inputs).last_hidden_state
        if task == "ner":
            return self.ner_head(hidden)
        if task == "tc":
            return mean_pool(hidden, batch["attention_mask"])
        raise ValueError(f"unknown task {task!r}")

    def task_owned(self) -> dict[str, list[str]]:
        """Parameter names that belong to one task only (its adapter, its head)."""
        owned = {t: [] for t in self.adapters}
        for name, _ in self.named_parameters():
            for task, adapter in self.adapters.items():
                if adapter and (f".lora_A.{adapter}." in name or f".lora_B.{adapter}." in name):
                    owned[task].append(name)
            if name.startswith("ner_head.") and "ner" in owned:
                owned["ner"].append(name)
        return owned
