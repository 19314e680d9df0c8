"""NER adaptation settings and the two named recipes.

* ``paper``: what the paper's Appendix A states (10 head-only epochs, 30 LoRA + head epochs, batch 64, AdamW lr
  2e-5 for both), with choices for what it leaves open: constant lr, no gradient clipping, weight decay 0.01 on
  weight matrices only, the best dev F1 of every epoch on the whole dev split. On small train sets it
  barely trains the fresh head (200 sentences: 4 batches an epoch, 40 head steps at 2e-5).
* ``default``: trains on 200 sentences as well as on 14k: its own learning rates for the fresh head (1e-3) and
  the LoRA weights (5e-4), a minimum number of optimizer steps per stage (so a small train set still gets enough
  updates), linear decay, and model selection whose cost follows the training set: a seeded dev subsample of at
  most ``dev_sentences``, scored every ``eval_every`` epochs (auto: as rarely as needed for the dev forward passes
  to cost at most half the training they select from), early stopping after ``patience`` scorings without a
  better dev F1 once the stage's minimum of steps is done.

Recipe-controlled fields left at ``None`` take the recipe's value; anything given explicitly wins. Giving
``epochs``/``epochs_warmup`` explicitly drops that stage's recipe minimum of steps (you asked for N epochs).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mtpf.config import ConfigError

RECIPES: dict[str, dict] = {
    "paper": {"epochs_warmup": 10, "epochs": 30, "batch_size": 64, "lr": 2e-5, "head_lr": None,
              "scheduler": "constant", "min_steps_warmup": 0, "min_steps": 0, "dev_sentences": 0, "eval_every": 1,
              "patience": 0},
    "default": {"epochs_warmup": 3, "epochs": 10, "batch_size": 16, "lr": 5e-4, "head_lr": 1e-3,
                "scheduler": "linear", "min_steps_warmup": 300, "min_steps": 400, "dev_sentences": 1000,
                "eval_every": 0, "patience": 4},
}
QUICK = {"epochs_warmup": 1, "epochs": 2}


@dataclass
class NerConfig:
    recipe: str = field(default="default", metadata={
        "help": "default (works from 200 to 14k sentences) or paper (Appendix A as stated); sets the fields below "
                "that are not given"})
    epochs_warmup: int | None = field(default=None, metadata={"help": "Stage 1: epochs training the head alone."})
    epochs: int | None = field(default=None, metadata={"help": "Stage 2: epochs training LoRA + head (at most, "
                                                               "with early stopping)."})
    batch_size: int | None = field(default=None, metadata={"help": "Sentences per batch."})
    lr: float | None = field(default=None, metadata={"help": "AdamW learning rate of the LoRA weights."})
    head_lr: float | None = field(default=None, metadata={"help": "Learning rate of the head; None = lr."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper 0.01)."})
    scheduler: str | None = field(default=None, metadata={"help": "constant | linear (decay to 0 within a stage)."})
    min_steps_warmup: int | None = field(default=None, metadata={
        "help": "Stage 1 runs at least this many optimizer steps (more epochs on a small train set)."})
    min_steps: int | None = field(default=None, metadata={"help": "Stage 2 runs at least this many steps."})
    dev_sentences: int | None = field(default=None, metadata={
        "help": "Model selection scores a seeded dev subsample of this many sentences; 0 = the whole dev split."})
    eval_every: int | None = field(default=None, metadata={
        "help": "Score dev every N stage-2 epochs; 0 = auto (dev forward passes cost <= the training they select)."})
    patience: int | None = field(default=None, metadata={
        "help": "Stop stage 2 after this many dev scorings without improvement; 0 = never."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping; None = off."})
    cpu_speedups: bool = field(default=False, metadata={
        "help": "On a CPU: padding-free LoRA-stage batches and a faster dropout RNG (mtpf/pretrain/cpu_speed.py). "
                "Off by default: at batch 16 the LoRA step is bound by per-op overhead, not padding or dropout "
                "(129 vs 135 ms per step here), and the dropout stream would differ from earlier runs."})
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank (paper 32)."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha (paper 64)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_layers: str = field(default="all", metadata={"help": "all, or N = the last N layers."})
    lora_targets: list = field(default_factory=lambda: ["query", "key", "mlp"], metadata={
        "help": "Parts of each layer that get LoRA (paper: query, key, mlp)."})
    init_from_ner_adapter: bool = field(default=True, metadata={
        "help": "Initialise the covered layers' LoRA from the model's ner task-primary adapter."})
    max_length: int | None = field(default=None, metadata={"help": "Token limit per window; default the model's."})
    select: str = field(default="auto", metadata={"help": "auto (dev if present), dev, last."})
    eval_batch_size: int = field(default=64, metadata={"help": "Sentences per inference batch."})

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}")
        preset = dict(RECIPES[self.recipe])
        if self.epochs_warmup is not None:
            preset["min_steps_warmup"] = 0
        if self.epochs is not None:
            preset["min_steps"] = 0
        for key, value in preset.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.epochs_warmup < 0 or self.epochs < 0 or self.epochs_warmup + self.epochs < 1:
            raise ConfigError("epochs_warmup and epochs must be >= 0 and not both 0")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        for key in ("lr", "head_lr", "lora_alpha"):  # (torch / peft would fail later, with a traceback)
            if getattr(self, key) is not None and not getattr(self, key) > 0:  # head_lr None: the paper's, = lr
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.weight_decay < 0 or (self.max_grad_norm is not None and self.max_grad_norm <= 0):
            raise ConfigError("weight_decay must be >= 0 and max_grad_norm > 0 (or null)")
        if self.eval_batch_size < 1 or (self.max_length is not None and self.max_length < 8):
            raise ConfigError("eval_batch_size must be >= 1 and max_length >= 8")
        for key in ("min_steps_warmup", "min_steps", "dev_sentences", "eval_every", "patience"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.select not in ("auto", "dev", "last"):
            raise ConfigError(f"select must be auto, dev or last, got {self.select!r}")
        if self.scheduler not in ("constant", "linear"):
            raise ConfigError(f"scheduler must be constant or linear, got {self.scheduler!r}")
        from mtpf.lora.config import TARGET_PARTS

        unknown = [t for t in self.lora_targets if t not in TARGET_PARTS]
        if unknown or not self.lora_targets:
            raise ConfigError(f"lora_targets: unknown {unknown or 'empty list'}; choose from {', '.join(TARGET_PARTS)}")
        if str(self.lora_layers) != "all":
            try:
                self.lora_layers = int(self.lora_layers)
            except ValueError:
                raise ConfigError(f"lora_layers must be 'all' or an integer, got {self.lora_layers!r}") from None

    def to_dict(self) -> dict:
        return asdict(self)
