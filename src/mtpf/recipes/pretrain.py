"""Pre-finetuning recipe: ``mtpf pretrain CONFIG.yaml [key=value ...]``.

Strategies (paper Sections 4-6, Appendix B):
  ner       PF for NER: token cross-entropy against teacher cluster ids (first sub-token of each word)
  tc        PF for TC: InfoNCE with in-batch negatives on mean-pooled, L2-normalised embeddings
  mtpf      both losses on one shared encoder every step (optionally PCGrad on the backbone)
  mtpf-tpl  MTPF + task-primary LoRAs on the last N layers; each LoRA group only gets its task's gradient
  pf-lora   frozen backbone, LoRA only (last N layers or all), one adapter per task family

Reads top to bottom: ``PretrainConfig`` -> ``setup`` -> ``train`` (``train_step``) -> ``save_checkpoint``
-> ``export``. Runs single-process or under ``accelerate launch`` (DDP, contrastive negatives gathered
across processes with gradient).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mtpf.config import ConfigError, help_text, load_config, to_dict
from mtpf.data.io import DataError
from mtpf.device import on_every_process
from mtpf.lora import LoraSpec
from mtpf.stages import fsync_dir, fsync_tree, write_text_durable

STRATEGIES = ("ner", "tc", "mtpf", "mtpf-tpl", "pf-lora")
# Keys that may change between a run and its resumption. A new max_steps also stretches the learning-rate
# schedule (warm-up and decay are fractions of max_steps): resuming step 500 of 1000 with max_steps=2000 goes on
# from where a 2000-step schedule is at step 500, not from the old one.
# output_dir: the saved config is the folder's own, so another value means the folder was moved or copied.
RESUMABLE_CHANGES = {"resume", "max_steps", "log_every", "save_every", "keep_checkpoints", "progress", "num_workers",
                     "tokenize_num_proc", "full_attention_mask", "output_dir"}


@dataclass
class TaskLoras:
    ner: LoraSpec = field(default_factory=LoraSpec, metadata={"help": "LoRA group for the NER task."})
    tc: LoraSpec = field(default_factory=LoraSpec, metadata={"help": "LoRA group for the TC task."})


@dataclass
class PretrainConfig:
    strategy: Literal["ner", "tc", "mtpf", "mtpf-tpl", "pf-lora"] = field(
        default="mtpf-tpl", metadata={"help": "ner | tc | mtpf | mtpf-tpl | pf-lora"})
    model: str = field(default="packaged", metadata={"help": "Base encoder: local folder, hub name, or 'packaged'."})
    output_dir: str = field(default="runs/pretrain", metadata={"help": "Run folder (checkpoints, logs, exports)."})
    seed: int = field(default=42, metadata={"help": "Seed of weights init, sampling and dropout."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps (paper: 100k). May change on resume; "
                                                           "the learning-rate schedule follows the new value."})
    tasks: list[str] | None = field(default=None, metadata={
        "help": "Task families to train; default from the strategy (pf-lora: those with data)."})
    # --- NER pseudo-labels
    ner_data: list[str] = field(default_factory=list, metadata={
        "help": "Pseudo-label JSONL files/folders ({tokens, labels}); from `mtpf label`."})
    num_clusters: int | None = field(default=None, metadata={"help": "K; default: clusters.json or max label + 1."})
    ner_batch_size: int = field(default=256, metadata={"help": "Sentences per NER batch, all processes (paper: 256)."})
    # --- TC pairs
    pairs: list[Any] = field(default_factory=list, metadata={"help": (
        "Pair sources ({anchor, positive}), read through `datasets` (memory-mapped Arrow): a local "
        "JSONL/Parquet/Arrow file, a folder of them (one source per file), a save_to_disk folder, "
        "hub:NAME[:SUBSET], or a mapping {hub|path, subset, split, columns: [anchor_col, positive_col], name, streaming, rows}; "
        "streaming: true reads the source as a shuffled stream, never whole (rows: N = its size for weighting).")})
    pair_weights: Any = field(default="proportional", metadata={
        "help": "Source sampling: proportional | uniform | {source: weight}."})
    pair_temperature: float = field(default=1.0, metadata={
        "help": "proportional only: p_i ~ n_i^(1/T); T > 1 flattens towards uniform so one huge source cannot take every batch."})
    pair_size_cap: int | None = field(default=None, metadata={
        "help": "proportional only: count at most this many pairs per source when weighting (T5-style cap); null = off."})
    tc_batch_size: int = field(default=1024, metadata={"help": "Pairs per contrastive batch, all processes (paper: 1024)."})
    tc_mini_batch_size: int | None = field(default=64, metadata={
        "help": "GradCache chunk size (memory bound); null = no caching (whole batch in one graph)."})
    tc_pad_chunk: int | None = field(default=None, metadata={"help": (
        "Without GradCache: embed anchors and positives together, sorted by length, in chunks of at most this "
        "many padded tokens, in one graph (less padding, the same loss and gradients); 0 = one chunk per side; "
        "null = 0 on CUDA (each chunk costs kernel launches: on an H200 at batch 1024, chunks of 256 texts ran "
        "at 0.44x of the one-chunk bare loop), 512 on CPU (where every padded position costs: batch 64 of "
        "NLI pairs ran 1.26x -> see docs/benchmarks.md).")})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature tau."})
    symmetric: bool = field(default=False, metadata={"help": "Also score positives against anchors."})
    gather_negatives: bool = field(default=True, metadata={"help": "Use other processes' pairs as negatives."})
    # --- multi-task
    ner_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the NER loss."})
    tc_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the TC loss."})
    pcgrad: bool = field(default=False, metadata={"help": "PCGrad projection on the shared backbone gradients."})
    tpl: TaskLoras = field(default_factory=TaskLoras, metadata={
        "help": "Task-primary LoRA groups (mtpf-tpl) / PF-L adapters (pf-lora): layers, rank, alpha, targets."})
    # --- optimisation
    lr: float = field(default=2e-5, metadata={"help": "AdamW learning rate (paper: 2e-5)."})
    head_lr: float | None = field(default=None, metadata={"help": "Learning rate of the randomly initialised NER head."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Share of max_steps for linear warm-up."})
    scheduler: str = field(default="linear", metadata={"help": "transformers scheduler name (linear, cosine, constant_with_warmup)."})
    grad_accum: int = field(default=1, metadata={"help": (
        "Micro-batches per optimizer step. The step's gradient is the mean of the micro-batches' mean losses: "
        "each contrastive micro-batch keeps its own in-batch negatives (use tc_mini_batch_size, GradCache, to "
        "get MORE negatives in little memory), and NER token means are per micro-batch (mean of means).")})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": (
        "Gradient clipping; null = off. With two tasks, per ownership group: the shared backbone, and each "
        "task's own adapter and head (a task's LoRA never moves by the other task's loss).")})
    mixed_precision: Literal["auto", "no", "bf16"] = field(default="auto", metadata={
        "help": "auto: bf16 on a CUDA device that supports it, fp32 otherwise (bf16 is ~17x slower on CPUs without AMX)."})
    max_length: int = field(default=128, metadata={"help": "Max tokens per text (longer NER sentences are windowed)."})
    bucket_factor: int = field(default=50, metadata={"help": "NER length bucketing window, in batches."})
    cpu_speedups: bool = field(default=True, metadata={"help": (
        "On a CPU device: padding-free NER batches (BERT-type encoders) and a faster dropout RNG, the same "
        "training computed faster (mtpf/pretrain/cpu_speed.py). No effect on CUDA.")})
    full_attention_mask: bool | None = field(default=None, metadata={"help": (
        "Give the encoder a ready 4-D attention mask instead of the 2-D one, so that transformers does not read "
        "the mask on the host once per forward (a GPU sync that drains the kernel queue); the same attention. "
        "null = on CUDA, for encoders that pass a check at setup (mtpf.encoder.accepts_full_attention_mask).")})
    num_workers: int | None = field(default=None, metadata={"help": (
        "DataLoader workers building padded batches from the token cache; null = 4 on CUDA, 0 (in-process) on CPU.")})
    tokenize_num_proc: int | None = field(default=None, metadata={"help": (
        "Processes for the one-time tokenisation into the cache (.mtpf_cache/ beside local data, else "
        "HF_DATASETS_CACHE); null = up to 8 for sources over 200k rows, else 1.")})
    # --- interference analysis (paper Section 5, Figure 3)
    analysis_every: int | None = field(default=None, metadata={
        "help": "Steps between measurements of perturbed-sentence similarity and token homogeneity; null = off."})
    analysis_ner_data: str | None = field(default=None, metadata={
        "help": "NER dataset folder (ner/<name> layout) whose test split feeds the analysis, e.g. ../shared/data/ner/conll2003."})
    analysis_sentences: int = field(default=2000, metadata={"help": "Sentences per analysis measurement."})
    # --- bookkeeping
    log_every: int = field(default=10, metadata={"help": "Steps between metric log lines."})
    save_every: int = field(default=100, metadata={"help": "Steps between checkpoints."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many recent checkpoints to keep."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    tensorboard: bool = field(default=True, metadata={"help": "Also log to TensorBoard (output_dir/logs/tensorboard)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        # ranges checked here, when the config is read: the libraries would fail later with a traceback (or, for
        # a zero batch, loop forever; for temperature 0, train to NaN)
        for name in ("ner_batch_size", "tc_batch_size", "log_every", "save_every", "bucket_factor",
                     "analysis_sentences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:  # room for the special tokens and some words (at 2 no word keeps a label)
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        for name, low in (("tc_mini_batch_size", 1), ("tc_pad_chunk", 0), ("num_workers", 0), ("tokenize_num_proc", 1),
                          ("num_clusters", 2), ("analysis_every", 1), ("pair_size_cap", 1)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low} (or null), got {getattr(self, name)}")
        for name in ("lr", "temperature", "pair_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("head_lr", "max_grad_norm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (or null), got {getattr(self, name)}")
        for name in ("weight_decay", "ner_loss_weight", "tc_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        from transformers import SchedulerType

        if self.scheduler not in {s.value for s in SchedulerType}:
            raise ValueError(f"scheduler {self.scheduler!r} is not a transformers scheduler; use one of "
                             f"{sorted(s.value for s in SchedulerType)}")
        if self.grad_accum < 1:
            raise ValueError("grad_accum must be >= 1")
        if self.pcgrad and self.strategy == "pf-lora":  # its backbone is frozen: no shared gradient to project
            raise ValueError("pcgrad=true has no effect with strategy pf-lora (a frozen backbone: each task trains "
                             "its own adapter); drop pcgrad or use strategy mtpf / mtpf-tpl")
        if self.keep_checkpoints < 1:  # resume needs the latest; 0 would also read as "keep all" below
            raise ValueError("keep_checkpoints must be >= 1")
        if self.analysis_every is not None and not self.analysis_ner_data:
            raise ValueError("analysis_every needs analysis_ner_data (a NER dataset folder, e.g. ../shared/data/ner/conll2003)")
        from mtpf.data.pairs import parse_pair_spec

        for item in self.pairs:
            parse_pair_spec(item)
        for t in self.tasks or []:
            if t not in ("ner", "tc"):
                raise ValueError(f"unknown task {t!r} in tasks; use ner and/or tc")

    def resolved_tasks(self) -> list[str]:
        if self.tasks:
            return list(self.tasks)
        if self.strategy == "pf-lora":
            tasks = [t for t, d in (("ner", self.ner_data), ("tc", self.pairs)) if d]
            return tasks or ["ner", "tc"]
        return {"ner": ["ner"], "tc": ["tc"]}.get(self.strategy, ["ner", "tc"])


# ----------------------------------------------------------------------------------------------- recipe
class PretrainRecipe:
    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.step = 0

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import set_seed

        from mtpf.device import seed_dropout_per_rank

        cfg = self.cfg
        self.tasks = cfg.resolved_tasks()
        precision = cfg.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        # find_unused_parameters only where a parameter really gets no gradient in a pass: with two tasks, the
        # other task's head and adapter (the encoder's pooler is removed at load). It costs a graph walk per step.
        # broadcast_buffers=False: DDP would broadcast the buffers (BERT's constant position/token-type ids) before
        # every forward after the first, a collective; contrastive chunks cut by a token budget give the ranks
        # different numbers of forwards per step, so one rank waited in that broadcast while the other was in
        # InfoNCE's all_gather: a silent deadlock. Constant buffers need no broadcast.
        self.accelerator = Accelerator(
            mixed_precision=precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=len(self.tasks) > 1,
                                                           broadcast_buffers=False)],
            step_scheduler_with_optimizer=False,
            # Without GPUs accelerate only turns a torchrun launch into gloo DDP (MULTI_CPU) when told cpu=True.
            cpu=not torch.cuda.is_available(),
        )
        acc = self.accelerator
        world = acc.num_processes
        if world == 1 and "ACCELERATE_DYNAMO_BACKEND" in os.environ and not torch.cuda.is_available():
            # `accelerate launch --num_processes 2` without a config on a GPU-less machine silently starts ONE
            # process (accelerate's simple launcher): say so instead of training single-process unnoticed.
            print("mtpf pretrain: warning: accelerate started a single process. Without GPUs, pass "
                  "--config_file configs/accelerate/ddp.yaml (gloo DDP on CPU) to get --num_processes N.",
                  file=sys.stderr, flush=True)
        for name, size in (("ner_batch_size", cfg.ner_batch_size), ("tc_batch_size", cfg.tc_batch_size)):
            if size % world:
                raise ConfigError(f"{name}={size} must be divisible by the number of processes ({world})")
        self._check_output_dir()
        set_seed(cfg.seed)

        from mtpf.encoder import load_encoder, load_tokenizer

        self.tokenizer = load_tokenizer(cfg.model)
        self._setup_data()
        encoder = load_encoder(cfg.model)
        self.model, self.adapter_specs = self._build_model(encoder)
        if cfg.full_attention_mask or (cfg.full_attention_mask is None and acc.device.type == "cuda"):
            from mtpf.encoder import accepts_full_attention_mask

            encoder = self.model.encoder
            backbone = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
            self.model.full_mask = accepts_full_attention_mask(backbone)
            if cfg.full_attention_mask and not self.model.full_mask:
                raise ConfigError(f"full_attention_mask=true: {type(backbone).__name__} does not take a 4-D "
                                  "attention mask; set full_attention_mask=null")
        if cfg.cpu_speedups and acc.device.type == "cpu":
            from mtpf.pretrain import cpu_speed

            packable = cpu_speed.install(self.model.encoder)
            if "ner" in self.batches:
                self.batches["ner"].pack = packable
        self.optimizer = self._build_optimizer()
        from transformers import get_scheduler

        self.scheduler = get_scheduler(cfg.scheduler, self.optimizer,
                                       num_warmup_steps=int(cfg.warmup_ratio * cfg.max_steps),
                                       num_training_steps=cfg.max_steps)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        seed_dropout_per_rank(cfg.seed, acc.process_index)  # before _resume, which restores each rank's stream
        # No sampler state: batch k is a pure function of (seed, k), and k follows from the step.
        acc.register_for_checkpointing(self.scheduler, _StepCounter(self))
        self.shared_params, self.owned = self._parameter_ownership()
        if cfg.resume:
            self._resume()
        if acc.is_main_process:
            self._open_logs()
        self.tracker = None
        if cfg.analysis_every and acc.is_main_process:
            from mtpf.analysis.track import Tracker

            self.tracker = Tracker(cfg.analysis_ner_data, sentences=cfg.analysis_sentences, seed=cfg.seed)

    def _check_output_dir(self) -> None:
        cfg, ckpts = self.cfg, self.out / "checkpoints"
        saved = self.out / "pretrain_config.json"
        if ckpts.is_dir() and any(ckpts.glob("step-*")) and not cfg.resume:
            raise ConfigError(f"{self.out} already holds checkpoints; pass resume=true to continue it, "
                              "or choose another output_dir (nothing was overwritten)")
        if (self.out / "run.json").is_file() and not cfg.resume:
            raise ConfigError(f"{self.out} already holds a finished run (run.json); choose another output_dir "
                              "(nothing was overwritten)")
        if cfg.resume and saved.is_file():
            before = json.loads(saved.read_text())
            now = to_dict(cfg)
            defaults = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}  # keys added since
            changed = sorted(k for k in now if k not in RESUMABLE_CHANGES
                             and before.get(k, defaults.get(k)) != now[k])
            if changed:
                raise ConfigError(f"resume=true but {saved} differs in {changed}; only "
                                  f"{sorted(RESUMABLE_CHANGES)} may change when resuming")
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_durable(saved, json.dumps(to_dict(cfg), indent=2))

    def _setup_data(self) -> None:
        """Open every source through ``datasets`` (memory-mapped), tokenise once into the cache, build the
        index-space samplers and the per-task batch builders."""
        from mtpf.data import mapped_pages
        from mtpf.data.ner_pseudo import load_pseudo_label_dataset
        from mtpf.data.pairs import load_pair_sources
        from mtpf.data.pipeline import NerBatches, PairBatches, pad_multiple
        from mtpf.data.samplers import BucketBatchSampler, HierarchicalPairSampler
        from mtpf.data.token_cache import tokenize_pairs

        cfg, acc = self.cfg, self.accelerator
        if not (cfg.progress and acc.is_main_process):
            import datasets

            datasets.disable_progress_bars()
        rank, world, pad = acc.process_index, acc.num_processes, self.tokenizer.pad_token_id
        self.batches, self.data_files, self.hub_sources = {}, [], {}
        self.num_clusters = None
        if "ner" in self.tasks:
            if not cfg.ner_data:
                raise ConfigError(f"strategy {cfg.strategy} trains NER but ner_data is empty")
            with acc.main_process_first():  # the main process writes the cache, the others read it
                labelled = load_pseudo_label_dataset(cfg.ner_data, self.tokenizer, cfg.max_length,
                                                     cfg.num_clusters, cfg.tokenize_num_proc)
            self.num_clusters = labelled.num_labels
            self.data_files += labelled.sources
            self.ner_data = labelled.data
            import numpy as np

            lengths = np.asarray(labelled.data.data.column("length"))
            mapped_pages.release(labelled.data)
            try:
                sampler = BucketBatchSampler(lengths, cfg.ner_batch_size, cfg.seed, cfg.bucket_factor)
            except ValueError as exc:
                raise ConfigError(f"ner_data: {exc}; lower ner_batch_size") from None
            self.batches["ner"] = NerBatches(labelled.data, sampler, pad, rank, world, pad_multiple(acc.device))
        if "tc" in self.tasks:
            if not cfg.pairs:
                raise ConfigError(f"strategy {cfg.strategy} trains TC but pairs is empty")
            sources = load_pair_sources(cfg.pairs)
            self.pair_sources = {s.name: s for s in sources}
            self.data_files += [f for s in sources for f in s.files]
            self.hub_sources = {s.spec.label: s for s in sources if s.spec.hub}
            with acc.main_process_first():
                self.pair_tokens = {s.name: tokenize_pairs(s, self.tokenizer, cfg.max_length, cfg.tokenize_num_proc)
                                    for s in sources if not s.streaming}
            for s in sources:  # rows tokenize_pairs dropped (null, non-text or blank anchor/positive): say so
                if not s.streaming and (dropped := s.data.num_rows - len(self.pair_tokens[s.name])):
                    acc.print(f"pairs {s.spec.label}: skipped {dropped} of {s.data.num_rows} rows whose anchor or "
                              "positive is empty or not text")
            # Opening and tokenising faulted in pages of every source and cache file (record-batch headers, `map`):
            # unmap them here, since with DataLoader workers this process never gathers (and releases) a batch.
            mapped_pages.release(*(s.data for s in sources if not s.streaming), *self.pair_tokens.values())
            from mtpf.data.pipeline import StreamWindows

            streams = {s.name: StreamWindows(s.name, s.data, cfg.tc_batch_size, cfg.seed, self.tokenizer,
                                             cfg.max_length) for s in sources if s.streaming}
            try:
                sampler = HierarchicalPairSampler({s.name: len(s) if s.streaming else len(self.pair_tokens[s.name])
                                                   for s in sources}, cfg.tc_batch_size, cfg.seed,
                                                  cfg.pair_weights, cfg.pair_temperature, cfg.pair_size_cap)
            except ValueError as exc:
                if isinstance(exc, DataError):
                    raise
                raise ConfigError(str(exc)) from None
            budget = None
            if not cfg.tc_mini_batch_size:
                budget = cfg.tc_pad_chunk if cfg.tc_pad_chunk is not None else (
                    0 if acc.device.type == "cuda" else 512)
            self.batches["tc"] = PairBatches(self.pair_tokens, sampler, cfg.tc_mini_batch_size, pad, rank, world,
                                             streams, pad_multiple(acc.device), budget or None)
        import pyarrow as pa

        # Converting a source to Arrow (first run) leaves its buffers cached in pyarrow's allocator pool
        # (~200 MB for a 2M-pair JSONL), which would stay in RSS for the whole run.
        pa.default_memory_pool().release_unused()

    def _build_model(self, encoder):
        from mtpf.lora import add_task_adapters
        from mtpf.pretrain.model import MultiTaskEncoder

        cfg = self.cfg
        specs = {}
        if cfg.strategy in ("mtpf-tpl", "pf-lora"):
            specs = {t: getattr(cfg.tpl, t) for t in self.tasks}
            encoder = add_task_adapters(encoder, specs, train_backbone=cfg.strategy == "mtpf-tpl")
            adapters = {t: t for t in self.tasks}
        else:
            adapters = {t: None for t in self.tasks}
        torch.manual_seed(cfg.seed)  # the head's init must not depend on how many adapters were made
        model = MultiTaskEncoder(encoder, self.num_clusters, adapters)
        return model, {k: v.to_dict() for k, v in specs.items()}

    def _build_optimizer(self):
        cfg = self.cfg
        groups = {"decay": [], "no_decay": [], "head": []}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("ner_head."):
                groups["head"].append(p)
            elif p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name:
                groups["no_decay"].append(p)
            else:
                groups["decay"].append(p)
        return torch.optim.AdamW([
            {"params": groups["decay"], "weight_decay": cfg.weight_decay},
            {"params": groups["no_decay"], "weight_decay": 0.0},
            {"params": groups["head"], "weight_decay": cfg.weight_decay, "lr": cfg.head_lr or cfg.lr},
        ], lr=cfg.lr, fused=True)  # one kernel for all parameters (CPU and CUDA): the per-tensor loop costs host time

    def _parameter_ownership(self):
        model = self.accelerator.unwrap_model(self.model)
        owned_names = model.task_owned()
        params = dict(model.named_parameters())
        all_owned = {n for names in owned_names.values() for n in names}
        shared = [p for n, p in params.items() if p.requires_grad and n not in all_owned]
        return shared, {t: [params[n] for n in names] for t, names in owned_names.items()}

    # ------------------------------------------------------------------------------------------- train
    def train(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"pretrain {cfg.strategy}", unit="step",
                   disable=not (acc.is_main_process and cfg.progress), dynamic_ncols=True)
        self.model.train()
        self._open_loaders()
        last = {}
        if self.step == 0:
            self._analyse()
        window = self._new_window()
        while self.step < cfg.max_steps:
            # Losses stay on the device (no host sync per step); read back only at log steps.
            losses, tokens = self.train_step()
            window["tokens"] += tokens
            for t, v in losses.items():
                window["losses"][t].append(v)
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                last = self._log(window)
                bar.set_postfix({k: f"{v:.3f}" for k, v in last.items() if k.startswith("loss_")})
                window = None
            if cfg.analysis_every and (self.step % cfg.analysis_every == 0 or self.step == cfg.max_steps):
                self._analyse()
            if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
            if window is None:
                window = self._new_window()
        bar.close()
        if getattr(self, "feeder", None) is not None:
            self.feeder.close()
        return last

    def _new_window(self) -> dict:
        return {"tokens": 0, "start": time.perf_counter(), "losses": {t: [] for t in self.tasks}}

    def _open_loaders(self) -> None:
        """One DataLoader per task, starting at the first batch not consumed yet (pure function of k)."""
        from mtpf.data.pipeline import batch_loader

        cfg, cuda = self.cfg, self.accelerator.device.type == "cuda"
        workers = cfg.num_workers if cfg.num_workers is not None else (4 if cuda else 0)
        start = self.step * cfg.grad_accum
        if getattr(self, "feeder", None) is not None:
            self.feeder.close()
        self.feeder = None
        pairs = self.batches.get("tc")
        streamed = pairs is not None and bool(pairs.streams)
        if streamed:
            pairs.deferred = True  # the workers hand over placeholders; the feeder reads each stream once
        self.loaders = {t: iter(batch_loader(self.batches[t], start, workers, pin_memory=cuda)) for t in self.tasks}
        if streamed:  # started after the workers forked: they never share the feeder's thread or tokenizer
            from mtpf.data.pipeline import StreamFeeder

            self.feeder = StreamFeeder(pairs, start, pin=cuda)

    def _next_batch(self, task: str) -> dict:
        from mtpf.data.pipeline import to_device

        if not hasattr(self, "loaders"):
            self._open_loaders()
        batch = next(self.loaders[task])
        if "stream" in batch:
            batch = self.feeder.get(batch["k"])
        return to_device(batch, self.accelerator.device)

    def train_step(self) -> tuple[dict[str, torch.Tensor], int]:
        """One optimizer step: every task's micro-batches, then (PCGrad) combination, clip, step. Returns
        each task's loss as a detached device tensor and the number of non-padding tokens."""
        cfg = self.cfg
        losses, tokens = {}, 0
        task_grads = {}
        for ti, task in enumerate(self.tasks):
            total = 0.0
            for micro in range(cfg.grad_accum):
                # DDP all-reduces once per task under PCGrad (it needs each task's global gradient),
                # otherwise once per step.
                sync = micro == cfg.grad_accum - 1 and (cfg.pcgrad or ti == len(self.tasks) - 1)
                weight = (cfg.ner_loss_weight if task == "ner" else cfg.tc_loss_weight) / cfg.grad_accum
                step_fn = self._ner_micro_step if task == "ner" else self._tc_micro_step
                loss, n_tok = step_fn(self._next_batch(task), weight, sync)
                total = total + loss / cfg.grad_accum
                tokens += n_tok
            losses[task] = total
            if cfg.pcgrad and len(self.tasks) > 1:
                task_grads[task] = [p.grad.clone() if p.grad is not None else None for p in self.shared_params]
                for p in self.shared_params:
                    p.grad = None
        if task_grads:
            from mtpf.pretrain.pcgrad import flatten, pcgrad_combine, unflatten

            vecs = [flatten(task_grads[t], self.shared_params) for t in self.tasks]
            combined = unflatten(pcgrad_combine(vecs, seed=cfg.seed * 1_000_003 + self.step), self.shared_params)
            for p, g in zip(self.shared_params, combined):
                p.grad = g.clone()
        if cfg.max_grad_norm:
            self._clip(cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses, tokens

    def _clip(self, max_norm: float) -> None:
        """Gradient clipping. One task: one norm over all parameters. Two tasks: one norm per ownership group
        (the shared backbone; each task's own adapter and head), so a task-owned parameter's step never depends
        on the other task's gradient: the paper's task-primary LoRAs are "updated solely with the loss of their
        associated task" (Sec. 6), which one global norm broke (its factor included both losses)."""
        acc = self.accelerator
        if len(self.tasks) == 1:
            acc.clip_grad_norm_(self.model.parameters(), max_norm)
            return
        acc.unscale_gradients()  # once (fp16's scaler); then a plain norm per group
        for group in (self.shared_params, *self.owned.values()):
            group = [p for p in group if p.grad is not None]
            if group:
                torch.nn.utils.clip_grad_norm_(group, max_norm)

    def _sync_context(self, sync: bool):
        return contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)

    def _ner_micro_step(self, data: dict, weight: float, sync: bool) -> tuple[torch.Tensor, int]:
        from mtpf.losses import token_cross_entropy

        batch = data["batch"]
        acc = self.accelerator
        with self._sync_context(sync), acc.autocast():
            logits = self.model("ner", **batch)
            if acc.num_processes == 1:
                loss = token_cross_entropy(logits.float(), batch["labels"])
                to_backward = loss
            else:
                # Mean over the labelled tokens of ALL processes (DDP averages gradients over processes,
                # hence the * num_processes), so the step equals the single-process step on the full batch.
                labelled = (batch["labels"] != -100).sum()
                total = acc.reduce(labelled.clone(), reduction="sum").clamp_min(1)
                summed = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                    ignore_index=-100, reduction="sum")
                to_backward = summed / total * acc.num_processes
                loss = acc.reduce(summed.detach(), reduction="sum") / total
            acc.backward(to_backward * weight)
        return loss.detach(), data["tokens"]

    def _tc_micro_step(self, data: dict, weight: float, sync: bool) -> tuple[torch.Tensor, int]:
        from mtpf.losses import cached_info_nce_backward, info_nce
        from mtpf.losses.cached_info_nce import _unsort

        cfg = self.cfg

        def embed(chunk):
            with self.accelerator.autocast():
                return self.model("tc", **chunk).float()

        if "chunks" in data:  # anchors and positives in shared length-sorted chunks (PairBatches)
            with self._sync_context(sync):
                e = _unsort(torch.cat([embed(c) for c in data["chunks"]]), data["order"])
                n = data["n_anchor"]
                loss = info_nce(e[:n], e[n:], cfg.temperature, cfg.symmetric, cfg.gather_negatives)
                self.accelerator.backward(loss * weight)
            return loss.detach(), data["tokens"]
        a_chunks, p_chunks, a_order, p_order = data["a_chunks"], data["p_chunks"], data["a_order"], data["p_order"]
        if cfg.tc_mini_batch_size:
            no_sync = (lambda: self.accelerator.no_sync(self.model)) if sync else None
            with self._sync_context(sync):
                loss = cached_info_nce_backward(embed, a_chunks, p_chunks, cfg.temperature, cfg.symmetric,
                                                cfg.gather_negatives, loss_scale=weight, no_sync=no_sync,
                                                anchor_order=a_order, positive_order=p_order)
        else:
            with self._sync_context(sync):
                a = _unsort(torch.cat([embed(c) for c in a_chunks]), a_order)
                p = _unsort(torch.cat([embed(c) for c in p_chunks]), p_order)
                loss = info_nce(a, p, cfg.temperature, cfg.symmetric, cfg.gather_negatives)
                self.accelerator.backward(loss * weight)
        return loss.detach(), data["tokens"]

    # ------------------------------------------------------------------------------------------- logs
    def _open_logs(self) -> None:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out / "logs" / "metrics.jsonl"
        # Lines logged after the checkpoint we start from (a killed run) are logged again: drop them first.
        for name in ("metrics.jsonl", "analysis.jsonl"):
            _truncate_log(self.out / "logs" / name, self.step)
        self.tb = None
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides events at or after it that an earlier (killed) run wrote
            self.tb = SummaryWriter(str(self.out / "logs" / "tensorboard"), purge_step=self.step + 1)

    def _log(self, window: dict) -> dict:
        acc = self.accelerator
        losses = torch.stack([torch.stack(v).float().mean() if v else torch.zeros((), device=acc.device)
                              for v in window["losses"].values()]).to(acc.device)
        losses.cpu()  # waits for the device, so the window's wall time below is honest
        elapsed = time.perf_counter() - window["start"]
        stats = torch.tensor([window["tokens"], elapsed], dtype=torch.float64, device=acc.device)
        stats = acc.reduce(stats, reduction="sum")
        losses = acc.reduce(losses, reduction="mean").tolist()
        stats = stats.tolist()
        record = {
            "step": self.step,
            **{f"loss_{t}": float(v) for t, v in zip(window["losses"], losses)},
            "lr": self.scheduler.get_last_lr()[0],
            # tokens of every process / wall time of one process
            "tokens_per_s": float(stats[0] / (stats[1] / acc.num_processes)) if stats[1] > 0 else 0.0,
        }
        if acc.is_main_process:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for k, v in record.items():
                    if k != "step":
                        self.tb.add_scalar(k, v, self.step)
                self.tb.flush()
        return record

    def _analyse(self) -> None:
        """Findings 1 and 2 of the paper on the current weights, appended to logs/analysis.jsonl."""
        acc = self.accelerator
        if self.tracker is not None:
            model = acc.unwrap_model(self.model)
            adapters = {t: a for t, a in model.adapters.items() if a} or None
            record = {"step": self.step, **self.tracker.measure(model.encoder, self.tokenizer, adapters)}
            with open(self.out / "logs" / "analysis.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.model.train()
        acc.wait_for_everyone()

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Accelerate state (weights, optimizer, scheduler, RNGs, samplers, step), written atomically:
        into a temporary folder that is renamed only when complete, so a kill never leaves a torn checkpoint."""
        acc = self.accelerator
        ckpts = self.out / "checkpoints"
        final = ckpts / f"step-{self.step:08d}"
        tmp = ckpts / f".tmp-step-{self.step:08d}"
        if acc.is_main_process:
            ckpts.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            fsync_tree(tmp)  # on disk before the rename makes it the checkpoint a resume loads
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(ckpts)
            for old in sorted(ckpts.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _resume(self) -> None:
        ckpts = sorted((self.out / "checkpoints").glob("step-*"))
        if not ckpts:
            self.accelerator.print(f"resume=true but no checkpoint in {self.out / 'checkpoints'}: starting at step 0")
            return
        acc = self.accelerator
        for ckpt in reversed(ckpts):  # newest first; an unreadable one (a disk fault, a hand-copied half) falls back
            try:
                acc.load_state(str(ckpt))
                from accelerate.utils import RNG_STATE_NAME

                rng_file = ckpt / f"{RNG_STATE_NAME}_{acc.process_index}.pkl"
                if rng_file.exists():  # accelerate skips an unreadable one silently: the resume would not be exact
                    torch.load(rng_file, weights_only=False)
                ok = True
            except Exception as exc:  # safetensors, torch.load and pickle errors have no common base class
                rank = f" (process {acc.process_index})" if acc.num_processes > 1 else ""
                print(f"warning{rank}: checkpoint {ckpt} cannot be loaded ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:200]}); trying the one before it", flush=True)
                ok = False
            if not on_every_process(ok, acc):  # all resume from the same step: one that failed moves them all
                continue
            if acc.is_main_process:  # out of the way of resume and of pruning, which keep the newest by name
                for newer in ckpts[ckpts.index(ckpt) + 1:]:
                    aside = newer.with_name("unloadable-" + newer.name)
                    shutil.rmtree(aside, ignore_errors=True)  # one set aside by an earlier resume
                    newer.rename(aside)
            acc.print(f"resumed from {ckpt} (step {self.step})")
            return
        raise ConfigError(f"resume=true but no checkpoint in {self.out / 'checkpoints'} can be loaded (see the "
                          "warnings above); remove the broken ones, or start a new run in another output_dir")

    # ------------------------------------------------------------------------------------------- export
    def export(self, metrics: dict | None = None) -> dict | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return None
        from mtpf.data.pairs import source_fingerprint
        from mtpf.pretrain.export import export_run

        model = acc.unwrap_model(self.model)
        return export_run(model, self.tokenizer, self.out, to_dict(self.cfg), self.data_files, self.adapter_specs,
                          extra={"steps": self.step, "num_processes": acc.num_processes,
                                 "hub_data_fingerprints": {label: source_fingerprint(src) for label, src
                                                           in self.hub_sources.items()},
                                 "tasks": self.tasks, "last_metrics": metrics or {}})


class _StepCounter:
    """Puts the step number into accelerate's checkpoint."""

    def __init__(self, recipe: PretrainRecipe):
        self.recipe = recipe

    def state_dict(self) -> dict:
        return {"step": self.recipe.step}

    def load_state_dict(self, state: dict) -> None:
        self.recipe.step = int(state["step"])


def _truncate_log(path: Path, step: int) -> None:
    """Keep only the records of steps <= ``step`` (none when starting at 0), atomically."""
    if not path.is_file():
        return
    keep = []
    with open(path) as fh:
        for line in fh:
            try:
                if step and json.loads(line)["step"] <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def run(cfg: PretrainConfig) -> dict | None:
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    metrics = recipe.train()
    return recipe.export(metrics)


# ----------------------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-finetune an encoder (ner | tc | mtpf | mtpf-tpl | pf-lora)",
                       description=__doc__.split("\n\n")[1] if "\n\n" in __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (see configs/); keys can be overridden as key=value")
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nesting (tpl.ner.layers=4)")
    p.add_argument("--help-config", action="store_true", help="list every config key with default and help")
    p.set_defaults(func=_cli, interrupt_hint="interrupted; checkpoints are intact: re-run the same command with "
                                             "resume=true to continue from the last one")


def _cli(args) -> int:
    if args.help_config:
        print(help_text(PretrainConfig))
        print("\n  tpl.ner / tpl.tc (each a LoRA group):\n" + help_text(LoraSpec))
        return 0
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    cfg = load_config(PretrainConfig, config, overrides)
    from mtpf.data.io import DataError

    try:
        run_info = run(cfg)
    except DataError as exc:
        if exc.line is None and exc.path in {str(p) for p in cfg.ner_data} and "no such" in exc.problem:
            raise DataError(exc.path, None, f"{exc.problem}; ner_data holds pseudo-labels made by `mtpf label "
                                            f"... --out {exc.path}`: run that first (README: mtpf label)") from None
        raise
    if run_info:
        print(f"run folder: {cfg.output_dir}\n  backbone: {run_info['backbone']}")
        for name, path in run_info["adapters"].items():
            print(f"  adapter {name}: {path}")
        print(f"  sentence-transformer: {run_info['sentence_transformer']}")
    return 0


if __name__ == "__main__":  # accelerate launch -m mtpf.recipes.pretrain CONFIG key=value
    import sys

    from mtpf.cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
