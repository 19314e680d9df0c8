"""LoRA pieces: which modules to target, task-primary adapter groups, routing of task gradients."""
from mtpf.lora.config import LoraSpec
from mtpf.lora.targets import encoder_layers, lora_target_modules
from mtpf.lora.tpl import active_adapter, add_task_adapters, adapter_parameters

__all__ = [
    "LoraSpec",
    "encoder_layers",
    "lora_target_modules",
    "active_adapter",
    "add_task_adapters",
    "adapter_parameters",
]
