"""Configuration of one LoRA group (a task-primary adapter or a downstream adapter)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


TARGET_PARTS = ("query", "key", "value", "attn_out", "mlp")  # what a LoRA target may name, in any family


@dataclass
class LoraSpec:
    """Where and how big a LoRA group is.

    The defaults are the paper's: rank 32, alpha 64, on query/key of attention and the MLP
    (intermediate + output dense) of the last two layers for task-primary LoRAs
    (Section 6; Appendix A uses the same targets on all layers downstream).
    """

    layers: int | str = field(
        default=2,
        metadata={"help": "How many final transformer layers get LoRA; an int N (last N layers) or 'all'."},
    )
    rank: int = field(default=32, metadata={"help": "LoRA rank r."})
    alpha: int = field(default=64, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    targets: list[str] = field(
        default_factory=lambda: ["query", "key", "mlp"],
        metadata={"help": "Parts of each layer: any of query, key, value, attn_out, mlp (both MLP matrices)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) and self.layers != "all":
            try:
                self.layers = int(self.layers)
            except ValueError:
                raise ValueError(f"lora layers must be an integer or 'all', got {self.layers!r}") from None
        if isinstance(self.layers, int) and self.layers < 1:
            raise ValueError(f"lora layers must be >= 1, got {self.layers}")
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        unknown = set(self.targets) - set(TARGET_PARTS)
        if unknown:
            raise ValueError(f"unknown lora targets {sorted(unknown)}; choose from {', '.join(TARGET_PARTS)}")

    def to_dict(self) -> dict:
        return asdict(self)
