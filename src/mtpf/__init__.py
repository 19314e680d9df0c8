"""mtpf: multi-task pre-finetuning of lightweight encoders."""
__version__ = "0.1.0"
