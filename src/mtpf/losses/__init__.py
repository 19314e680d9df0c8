"""Pre-finetuning losses, one per file (sentence-transformers style)."""
from mtpf.losses.cached_info_nce import cached_info_nce_backward
from mtpf.losses.info_nce import info_nce
from mtpf.losses.token_ce import token_cross_entropy

__all__ = ["cached_info_nce_backward", "info_nce", "token_cross_entropy"]
