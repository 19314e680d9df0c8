"""NER adaptation (paper Appendix A): token classification head + LoRA on the bare encoder.

* LoRA rank 32, alpha 64 on query and key of every attention layer and on both MLP matrices, given to PEFT as
  full module names (``mtpf.lora.lora_target_modules``) so ``output.dense`` never also hits
  ``attention.output.dense``.
* A run's ``ner`` task-primary adapter initialises the LoRA modules of the layers it covers (partial
  initialisation); the other layers start fresh. The ``tc`` adapter is not used.
* Stage 1: the encoder is frozen and only the linear head trains (``epochs_warmup``, paper 10). The frozen
  encoder's outputs do not change, so they are computed once (eval mode) and the head trains on them.
  Stage 2: LoRA + head train together (``epochs``, paper 30). Batch 64, AdamW lr 2e-5, weight decay 0.01.
* Labels on the first sub-token of each word; sentences longer than the model's limit are cut into windows of
  whole words. Entity-level micro P/R/F1 with seqeval's default (conlleval-compatible) mode.
* Model selection: the stage-2 epoch with the best dev F1 when there is a dev split, else the final epoch.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtpf.config import ConfigError

IGNORE = -100


@dataclass
class NerConfig:
    epochs_warmup: int = field(default=10, metadata={"help": "Stage 1: epochs training the head alone (paper 10)."})
    epochs: int = field(default=30, metadata={"help": "Stage 2: epochs training LoRA + head (paper 30)."})
    batch_size: int = field(default=64, metadata={"help": "Sentences per batch (paper 64)."})
    lr: float = field(default=2e-5, metadata={"help": "AdamW learning rate (paper 2e-5)."})
    head_lr: float | None = field(default=None, metadata={"help": "Learning rate of the head; default lr."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper 0.01)."})
    scheduler: str = field(default="constant", metadata={"help": "constant | linear (decay to 0 within a stage)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping; None = off."})
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
        if self.epochs_warmup < 0 or self.epochs < 0 or self.epochs_warmup + self.epochs < 1:
            raise ConfigError("epochs_warmup and epochs must be >= 0 and not both 0")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.select not in ("auto", "dev", "last"):
            raise ConfigError(f"select must be auto, dev or last, got {self.select!r}")
        if self.scheduler not in ("constant", "linear"):
            raise ConfigError(f"scheduler must be constant or linear, got {self.scheduler!r}")
        if str(self.lora_layers) != "all":
            try:
                self.lora_layers = int(self.lora_layers)
            except ValueError:
                raise ConfigError(f"lora_layers must be 'all' or an integer, got {self.lora_layers!r}") from None

    def to_dict(self) -> dict:
        return asdict(self)


QUICK = {"epochs_warmup": 1, "epochs": 2}


# ----------------------------------------------------------------------------------------------- encoding
@dataclass
class EncodedNer:
    ids: list[list[int]]  # one entry per piece (a sentence, or a window of a long sentence)
    labels: list[list[int]]  # class id on each word's first sub-token, IGNORE elsewhere
    sentence: list[int]  # piece -> sentence index
    words: list[list[int]]  # piece -> word index (within its sentence) of every labelled position, in order
    n_words: list[int]  # sentence -> number of words
    n_windowed: int = 0  # sentences that had to be split into windows


def _first_subtoken(word_ids, offset: int = 0):
    positions, words, previous = [], [], None
    for pos, wid in enumerate(word_ids):
        if wid is not None and wid != previous:
            positions.append(pos)
            words.append(wid + offset)
        previous = wid
    return positions, words


def encode_ner(tokenizer, tokens: list[list[str]], tag_ids: list[list[int]] | None, max_length: int) -> EncodedNer:
    enc_all = EncodedNer([], [], [], [], [len(t) for t in tokens])
    step = 2048
    for start in range(0, len(tokens), step):
        chunk = tokens[start : start + step]
        enc = tokenizer(chunk, is_split_into_words=True, truncation=False)
        for i, words in enumerate(chunk):
            s = start + i
            ids = enc["input_ids"][i]
            tags = tag_ids[s] if tag_ids is not None else [0] * len(words)
            if len(ids) <= max_length:
                _add_piece(enc_all, ids, enc.word_ids(i), tags, s, 0)
            else:
                enc_all.n_windowed += 1
                for lo, hi in _windows(tokenizer, words, max_length):
                    w = tokenizer(words[lo:hi], is_split_into_words=True, truncation=True, max_length=max_length)
                    _add_piece(enc_all, w["input_ids"], w.word_ids(), tags[lo:hi], s, lo)
    return enc_all


def _add_piece(out: EncodedNer, ids, word_ids, tags, sentence: int, offset: int) -> None:
    positions, words = _first_subtoken(word_ids)
    labels = [IGNORE] * len(ids)
    for p, w in zip(positions, words):
        labels[p] = tags[w]
    out.ids.append(list(ids))
    out.labels.append(labels)
    out.sentence.append(sentence)
    out.words.append([w + offset for w in words])


def _windows(tokenizer, words: list[str], max_length: int):
    """Consecutive word ranges whose sub-tokens (plus special tokens) fit in ``max_length``."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    pieces = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    counts = [0] * len(words)
    for wid in pieces.word_ids():
        if wid is not None:
            counts[wid] += 1
    lo, used = 0, 0
    for i, c in enumerate(counts):
        c = min(c, budget)
        if i > lo and used + c > budget:
            yield lo, i
            lo, used = i, 0
        used += c
    yield lo, len(words)


def bucket_batches(lengths, batch_size: int, rng: np.random.Generator, window: int = 50) -> list[list[int]]:
    """Shuffle, sort windows of ``batch_size * window`` by length, cut into batches (the last one may be short),
    shuffle the batches: little padding, random order, every example once per epoch."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    span = batch_size * window
    for s in range(0, len(order), span):
        chunk = order[s : s + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[b : b + batch_size].tolist() for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ----------------------------------------------------------------------------------------------- model
class NerModel(nn.Module):
    """PEFT-wrapped bare encoder + a linear head on the last hidden state."""

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def hidden(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids, attention_mask):
        return self.head(self.hidden(input_ids, attention_mask))


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
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    acfg_file = folder / "adapter_config.json"
    weights_file = folder / "adapter_model.safetensors"
    if not acfg_file.is_file() or not weights_file.is_file():
        raise ConfigError(f"{folder}: not a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)")
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
    src = load_file(str(weights_file))
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


# ----------------------------------------------------------------------------------------------- training
def _pad(ids_list, labels_list, pad_id):
    from mtpf.data.samplers import pad_batch

    return pad_batch(ids_list, pad_id, labels_list)


def _optimizer(params_with_names, lr, weight_decay):
    decay = [p for n, p in params_with_names if p.ndim >= 2]
    no_decay = [p for n, p in params_with_names if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _scheduler(opt, kind: str, total: int):
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, total)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _inference_copy(model: NerModel) -> NerModel:
    """A copy with the LoRA merged into the weights: same outputs, no LoRA overhead per forward."""
    if not hasattr(model.encoder, "merge_and_unload"):
        return model
    enc = copy.deepcopy(model.encoder).merge_and_unload()
    out = NerModel.__new__(NerModel)
    nn.Module.__init__(out)
    out.encoder, out.head = enc, model.head
    return out


@torch.inference_mode()
def predict_words(model: NerModel, enc: EncodedNer, pad_id: int, batch_size: int = 128) -> list[list[int]]:
    """Class id per word (first sub-token); words without any sub-token get class 0 (``O``)."""
    was_training = model.training
    model.eval()
    model = _inference_copy(model)
    preds = [[0] * n for n in enc.n_words]
    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.ids[i]))
    for s in range(0, len(order), batch_size):
        b = order[s : s + batch_size]
        batch = _pad([enc.ids[i] for i in b], [enc.labels[i] for i in b], pad_id)
        logits = model(batch["input_ids"], batch["attention_mask"])
        best = logits.argmax(-1)
        for row, i in enumerate(b):
            pos = (batch["labels"][row] != IGNORE).nonzero().flatten().tolist()
            for p, w in zip(pos, enc.words[i]):
                preds[enc.sentence[i]][w] = int(best[row, p])
    if was_training:
        model.train()
    return preds


def seqeval_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro precision/recall/F1, seqeval default mode (conlleval-compatible)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0)),
            "f1": float(f1_score(gold, pred, zero_division=0))}


def evaluate_split(model, enc: EncodedNer, gold_tags: list[list[str]], labels: list[str], pad_id: int,
                   batch_size: int) -> dict:
    pred = predict_words(model, enc, pad_id, batch_size)
    return seqeval_scores(gold_tags, [[labels[c] for c in row] for row in pred])


def _trainable_state(model: NerModel) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or n.startswith("head.")}


@dataclass
class NerResult:
    test: dict
    dev: dict | None
    selection: str
    best_epoch: int
    history: list
    initialised_modules: list
    n_train_sentences: int
    n_windowed: dict
    max_length: int
    seconds: float
    model: NerModel | None = None
    labels: list | None = None

    def record(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("model",)}
        return d


def train_ner(model_ref, dataset, cfg: NerConfig, fraction: float = 1.0, seed: int = 42, progress: bool = True,
              keep_model: bool = False) -> NerResult:
    """Adapt ``model_ref`` to ``dataset`` (a :class:`~mtpf.downstream.data.NerDataset`) and score it."""
    from tqdm.auto import tqdm

    from mtpf.downstream.data import subsample
    from mtpf.downstream.models import max_length_for
    from mtpf.encoder import fingerprint_model, load_encoder, load_tokenizer

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    labels = dataset.labels
    label_id = {t: i for i, t in enumerate(labels)}
    tokenizer = load_tokenizer(model_ref.backbone)
    encoder = load_encoder(model_ref.backbone)
    if "backbone" not in model_ref._fingerprints:
        model_ref._fingerprints["backbone"] = fingerprint_model(encoder)
    backbone_fp = model_ref._fingerprints["backbone"]
    max_length = max_length_for(model_ref, tokenizer, encoder.config, cfg.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tag_ids(tags):  # unseen test/dev tags (only when allowed) are scored but never trained on
        return [[label_id.get(t, 0) for t in row] for row in tags]

    train = dataset.splits["train"]
    keep = subsample(len(train), fraction, seed)
    train_tokens = [train.tokens[i] for i in keep]
    train_enc = encode_ner(tokenizer, train_tokens, tag_ids([train.tags[i] for i in keep]), max_length)
    evals = {}
    for split in ("dev", "test"):
        if split in dataset.splits:
            s = dataset.splits[split]
            evals[split] = (encode_ner(tokenizer, s.tokens, tag_ids(s.tags), max_length), s.tags)
    select = cfg.select
    if select == "auto":
        select = "dev" if "dev" in evals else "last"
    if select == "dev" and "dev" not in evals:
        raise ConfigError(f"{dataset.name}: select=dev but the dataset has no dev split")

    peft_model, _targets = build_lora(encoder, cfg)
    initialised = []
    if cfg.init_from_ner_adapter and "ner" in model_ref.adapters:
        initialised = init_from_adapter(peft_model, model_ref.adapters["ner"], cfg, backbone_fp)
    torch.manual_seed(seed + 1)
    model = NerModel(peft_model, len(labels))
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("head.") or "lora_" in n

    history = []
    head_params = [(n, p) for n, p in model.named_parameters() if n.startswith("head.")]
    # ---------------- stage 1: frozen encoder, head only (features computed once)
    if cfg.epochs_warmup:
        feats, flabels, spans = _frozen_features(model, train_enc, pad_id, cfg.eval_batch_size, progress)
        opt = _optimizer(head_params, cfg.head_lr or cfg.lr, cfg.weight_decay)
        n_batches = math.ceil(len(train_enc.ids) / cfg.batch_size)
        sched = _scheduler(opt, cfg.scheduler, cfg.epochs_warmup * n_batches)
        bar = tqdm(range(cfg.epochs_warmup), desc="stage 1 (head)", unit="epoch", leave=False,
                   disable=not progress, dynamic_ncols=True)
        model.head.train()
        for epoch in bar:
            perm = rng.permutation(len(spans))
            total = 0.0
            for s in range(0, len(perm), cfg.batch_size):
                rows = np.concatenate([np.arange(*spans[j]) for j in perm[s : s + cfg.batch_size]])
                if len(rows) == 0:
                    continue
                loss = nn.functional.cross_entropy(model.head(feats[rows]), flabels[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
            history.append({"stage": 1, "epoch": epoch + 1, "loss": total / max(1, n_batches)})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        del feats, flabels
    # ---------------- stage 2: LoRA + head
    best, best_epoch, best_state = -1.0, 0, None
    if cfg.epochs:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
        opt = _optimizer(trainable, cfg.lr, cfg.weight_decay)
        head_group = _optimizer(head_params, cfg.head_lr or cfg.lr, cfg.weight_decay).param_groups
        for g in head_group:
            opt.add_param_group(g)
        n_batches = math.ceil(len(train_enc.ids) / cfg.batch_size)
        sched = _scheduler(opt, cfg.scheduler, cfg.epochs * n_batches)
        lengths = [len(x) for x in train_enc.ids]
        bar = tqdm(total=cfg.epochs * n_batches, desc="stage 2 (LoRA+head)", unit="batch", leave=False,
                   disable=not progress, dynamic_ncols=True)
        for epoch in range(cfg.epochs):
            model.train()
            total = 0.0
            for b in bucket_batches(lengths, cfg.batch_size, rng):
                batch = _pad([train_enc.ids[i] for i in b], [train_enc.labels[i] for i in b], pad_id)
                logits = model(batch["input_ids"], batch["attention_mask"])
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                   ignore_index=IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                                   cfg.max_grad_norm)
                opt.step()
                sched.step()
                total += loss.item()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            rec = {"stage": 2, "epoch": epoch + 1, "loss": total / max(1, n_batches)}
            if select == "dev":
                dev_enc, dev_tags = evals["dev"]
                rec["dev"] = evaluate_split(model, dev_enc, dev_tags, labels, pad_id, cfg.eval_batch_size)
                if rec["dev"]["f1"] > best:
                    best, best_epoch, best_state = rec["dev"]["f1"], epoch + 1, _trainable_state(model)
            history.append(rec)
        bar.close()
    if select == "dev" and best_state is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, v in best_state.items():
                params[n].copy_(v)
    else:
        best_epoch = cfg.epochs or cfg.epochs_warmup
    results = {}
    for split, (enc, tags) in evals.items():
        if split == "dev" and select == "dev" and best_state is not None:
            results[split] = next(h["dev"] for h in history if h.get("epoch") == best_epoch and "dev" in h)
            continue  # the selected epoch's dev score, already computed with these weights
        results[split] = evaluate_split(model, enc, tags, labels, pad_id, cfg.eval_batch_size)
    model.eval()
    return NerResult(
        test=results["test"], dev=results.get("dev"), selection=select if cfg.epochs else "last",
        best_epoch=best_epoch, history=history, initialised_modules=initialised, n_train_sentences=len(keep),
        n_windowed={"train": train_enc.n_windowed, **{s: e.n_windowed for s, (e, _) in evals.items()}},
        max_length=max_length, seconds=time.perf_counter() - t0, model=model if keep_model else None,
        labels=labels)


@torch.inference_mode()
def _frozen_features(model: NerModel, enc: EncodedNer, pad_id: int, batch_size: int, progress: bool = False):
    """Hidden states at the labelled positions of every piece (encoder in eval mode), and each piece's rows."""
    from tqdm.auto import tqdm

    model.eval()
    per_piece: list = [None] * len(enc.ids)
    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.ids[i]))
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc="stage 1 (frozen encoder outputs)", unit="batch", leave=False,
                  disable=not progress, dynamic_ncols=True):
        b = order[s : s + batch_size]
        batch = _pad([enc.ids[i] for i in b], [enc.labels[i] for i in b], pad_id)
        hidden = model.hidden(batch["input_ids"], batch["attention_mask"])
        for row, i in enumerate(b):
            mask = batch["labels"][row] != IGNORE
            per_piece[i] = (hidden[row][mask].clone(), batch["labels"][row][mask].clone())
    spans, start = [], 0
    for h, _ in per_piece:
        spans.append((start, start + len(h)))
        start += len(h)
    feats = torch.cat([h for h, _ in per_piece]) if per_piece else torch.zeros(0)
    labels = torch.cat([y for _, y in per_piece]) if per_piece else torch.zeros(0, dtype=torch.long)
    return feats, labels, spans


# ----------------------------------------------------------------------------------------------- app adapter
def save_ner_app(result: NerResult, model_ref, output: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write the adapted LoRA (PEFT format), head and label map as an app adapter folder (docs/formats.md)."""
    from safetensors.torch import save_file

    model = result.model
    if model is None:
        raise ValueError("save_ner_app needs train_ner(..., keep_model=True)")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    peft_model = model.encoder
    backbone_path = str(Path(model_ref.backbone).resolve()) if Path(model_ref.backbone).exists() else model_ref.backbone
    peft_model.peft_config["default"].base_model_name_or_path = backbone_path
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        app = Path(tmp) / "app"
        peft_model.save_pretrained(str(app))
        save_file({"weight": model.head.weight.detach().contiguous().cpu(),
                   "bias": model.head.bias.detach().contiguous().cpu()}, str(app / "head.safetensors"))
        meta = {"format": "mtpf-app/1", "task": "ner", "labels": list(result.labels),
                "backbone_fingerprint": model_ref.backbone_fingerprint(), "has_lora": True,
                "max_length": result.max_length,
                "metrics": {"test": result.test, **({"dev": result.dev} if result.dev else {})},
                "training": {"model": model_ref.ref, "selection": result.selection, "best_epoch": result.best_epoch,
                             "initialised_from_ner_adapter": result.initialised_modules, **(extra or {})}}
        (app / "mtpf_app.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(app, out)
    return meta


def load_ner_app(app_dir: str | os.PathLike, backbone: str | None = None) -> tuple[NerModel, dict]:
    """Load an app adapter back onto its backbone (for checks and tests; the runtime has its own loader)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from mtpf.encoder import load_encoder

    app = Path(app_dir)
    meta = json.loads((app / "mtpf_app.json").read_text())
    base = backbone or json.loads((app / "adapter_config.json").read_text())["base_model_name_or_path"]
    peft_model = PeftModel.from_pretrained(load_encoder(base), str(app))
    model = NerModel(peft_model, len(meta["labels"]))
    model.head.load_state_dict(load_file(str(app / "head.safetensors")))
    return model.eval(), meta

