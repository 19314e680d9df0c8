"""LoRA pieces: which modules to target, task-primary adapter groups, routing of task gradients."""
from mtpf.lora.config import LoraSpec
from mtpf.lora.targets import encoder_layers, lora_target_modules
from mtpf.lora.tpl import active_adapter, adapter_parameters, add_task_adapters

__all__ = [
    "LoraSpec",
    "active_adapter",
    "adapter_parameters",
    "add_task_adapters",
    "encoder_layers",
    "lora_target_modules",
]
