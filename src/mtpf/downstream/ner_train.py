"""The NER adaptation loop (paper Appendix A), through ``accelerate``: device, bf16 autocast on CUDA, and DDP when
launched with several processes.

* Stage 1: the encoder is frozen and only the linear head trains. The frozen encoder's outputs do not change,
  so they are computed once (eval mode) and the head trains on them.
* Stage 2: LoRA + head train together (the head keeps its own learning rate); the model is scored on dev every
  ``eval_every`` epochs and the best-scoring state is kept (``select``); ``patience`` stops early.
* The recipe (:mod:`mtpf.downstream.ner_config`) decides epochs, minimum steps, learning rates and how much dev
  data model selection reads. With several processes each takes every N-th batch of the same seeded order.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from mtpf.config import ConfigError
from mtpf.data.pipeline import to_device
from mtpf.device import on_every_process, seed_dropout_per_rank
from mtpf.downstream.ner_config import NerConfig
from mtpf.downstream.ner_data import IGNORE, EncodedNer, bucket_batches, encode_ner, pad_pieces
from mtpf.downstream.ner_metrics import evaluate_split
from mtpf.downstream.ner_model import NerModel, build_lora, init_from_adapter


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
    epochs: dict | None = None  # {"warmup": run, "lora": planned, "lora_run": run (early stopping)}
    dev_sentences: int | None = None  # dev sentences model selection scored (a seeded subsample or all)
    device: str | None = None
    resumed_after_epoch: int | None = None  # continued from a checkpoint after this stage-2 epoch (seconds: since)

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("model",)}


def _optimizer(params_with_names, lr, weight_decay):
    decay = [p for n, p in params_with_names if p.ndim >= 2]
    no_decay = [p for n, p in params_with_names if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _scheduler(opt, kind: str, total: int):
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, total)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _trainable_state(model: NerModel) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or n.startswith("head.")}


def _accelerator(device):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from mtpf.device import bf16_supported

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate puts a single process on the current CUDA device
    precision = "bf16" if bf16_supported(device) else "no"
    state = AcceleratorState._shared_state
    if state and PartialState().num_processes == 1 and (
            state.get("_mixed_precision", precision) != precision or PartialState().device.type != device.type):
        # accelerate's state is a process-wide singleton that refuses another precision (and keeps the first
        # device): a second adaptation on another device in the same process must start it afresh. Private
        # API, checked by tests/test_device.py::test_accelerate_state_reset_api_exists (accelerate pinned < 2).
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision)


def _process_share(batches: list, world: int, rank: int) -> list:
    """This process's batches of an epoch: equal shares, since DDP needs every process to take the same number
    of steps (fewer batches than processes: each takes one, repeating)."""
    if world == 1:
        return batches
    batches = (batches * world)[:world] if len(batches) < world else batches
    return batches[: len(batches) - len(batches) % world][rank::world]


def _epochs(requested: int, min_steps: int, batches_per_epoch: int) -> int:
    """``requested`` epochs, more when that is fewer than ``min_steps`` optimizer steps (small train sets)."""
    if requested == 0:
        return 0
    return max(requested, math.ceil(min_steps / max(1, batches_per_epoch)))


def _resume_point(ckpt, acc) -> dict | None:
    """The newest checkpoint every process has and can load, or None (start over). Collective: every process
    calls it."""
    mine = ckpt.epochs()
    if acc.num_processes == 1:
        candidates = mine
    else:  # each process lists its newest few epochs; keep those all of them have
        listed = torch.full((4,), -1, dtype=torch.long, device=acc.device)
        listed[: min(4, len(mine))] = torch.tensor(mine[:4], dtype=torch.long)
        rows = acc.gather(listed).view(acc.num_processes, 4).tolist()
        candidates = sorted(set.intersection(*(set(r) for r in rows)) - {-1}, reverse=True)
    for epoch in candidates:
        state = ckpt.load(epoch)
        if on_every_process(state is not None, acc):
            ckpt.drop_newer(epoch)
            return state
    ckpt.prune(2**31)  # starting over: another adaptation's or unusable checkpoints go
    return None


def _agreed(flag: bool, acc) -> bool:
    """Rank 0's ``flag`` on every process (each decides on its own clock; they must save the same epochs)."""
    if acc.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(flag)], device=acc.device), from_process=0).item())


def auto_eval_every(dev: int, train: int, world: int = 1) -> int:
    """Epochs between dev scorings such that scoring costs at most half the training it selects from.

    A dev forward costs about a third of a training step per sentence, so scoring every ``e`` epochs costs
    ``dev / 3`` against ``e * train / world`` per process: every process trains on its share of an epoch but
    scores the whole dev set (DDP), hence ``ceil(2 * dev * world / (3 * train))``.
    """
    return max(1, math.ceil(2 * dev * world / (3 * max(1, train))))


def train_ner(model_ref, dataset, cfg: NerConfig, fraction: float = 1.0, seed: int = 42, progress: bool = True,
              keep_model: bool = False, device="auto", checkpoint_dir=None) -> NerResult:
    """Adapt ``model_ref`` to ``dataset`` (a :class:`~mtpf.downstream.data.NerDataset`) and score it.

    ``checkpoint_dir``: where stage 2 saves a checkpoint after an epoch (at most once a minute); a run cut short
    continues from it (:mod:`~mtpf.downstream.ner_checkpoint`). The caller deletes it once the result is
    written."""
    from tqdm.auto import tqdm

    from mtpf.device import resolve_device
    from mtpf.downstream.data import subsample
    from mtpf.downstream.models import max_length_for
    from mtpf.encoder import fingerprint_model, load_encoder, load_tokenizer

    t0 = time.perf_counter()
    acc = _accelerator(resolve_device(device))
    progress = progress and acc.is_main_process
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
    train_enc = encode_ner(tokenizer, [train.tokens[i] for i in keep], tag_ids([train.tags[i] for i in keep]),
                           max_length)
    evals = {}
    for split in ("dev", "test"):
        if split in dataset.splits:
            s = dataset.splits[split]
            tokens, tags = s.tokens, s.tags
            if split == "dev" and 0 < cfg.dev_sentences < len(s):  # a seeded subsample, its own generator
                rows = np.sort(np.random.default_rng(seed + 2).choice(len(s), cfg.dev_sentences, replace=False))
                tokens, tags = [s.tokens[i] for i in rows], [s.tags[i] for i in rows]
            evals[split] = (encode_ner(tokenizer, tokens, tag_ids(tags), max_length), tags)
    select = cfg.select
    if select == "auto":
        select = "dev" if "dev" in evals else "last"
    if select == "dev" and "dev" not in evals:
        raise ConfigError(f"{dataset.name}: select=dev but the dataset has no dev split")

    ckpt, resumed = None, None
    if checkpoint_dir is not None and cfg.epochs:
        from mtpf.downstream.ner_checkpoint import EpochCheckpoint

        identity = {"model": model_ref.fingerprint("ner" if cfg.init_from_ner_adapter else None),
                    "dataset": [dataset.name, getattr(dataset, "fingerprint", None), len(train)],
                    "recipe": cfg.to_dict(), "fraction": fraction, "seed": seed, "processes": acc.num_processes,
                    "device": acc.device.type}
        ckpt = EpochCheckpoint(checkpoint_dir, identity, acc.process_index)
        resumed = _resume_point(ckpt, acc)

    peft_model, _targets = build_lora(encoder, cfg)
    initialised = []
    if cfg.init_from_ner_adapter and "ner" in model_ref.adapters:
        initialised = init_from_adapter(peft_model, model_ref.adapters["ner"], cfg, backbone_fp)
    torch.manual_seed(seed + 1)
    model = NerModel(peft_model, len(labels)).to(acc.device)
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("head.") or "lora_" in n

    history = []
    head_lr = cfg.head_lr or cfg.lr
    head_params = [(n, p) for n, p in model.named_parameters() if n.startswith("head.")]
    world, rank = acc.num_processes, acc.process_index
    # ---------------- stage 1: frozen encoder, head only (features computed once)
    epochs_warmup = 0
    if resumed is not None:  # stage 1 finished before the checkpoint: its head is in the saved weights
        epochs_warmup, history = resumed["epochs_warmup"], resumed["history"]
    elif cfg.epochs_warmup:
        feats, flabels, spans = _frozen_features(model, train_enc, pad_id, cfg.eval_batch_size, acc, progress)
        opt = _optimizer(head_params, head_lr, cfg.weight_decay)
        n_batches = math.ceil(len(train_enc.ids) / cfg.batch_size)
        epochs_warmup = _epochs(cfg.epochs_warmup, cfg.min_steps_warmup, n_batches)
        sched = _scheduler(opt, cfg.scheduler, epochs_warmup * n_batches)
        bar = tqdm(range(epochs_warmup), desc="stage 1 (head)", unit="epoch", leave=False,
                   disable=not progress, dynamic_ncols=True)
        model.head.train()
        for epoch in bar:  # every process trains the same head; DDP broadcasts rank 0's copy in stage 2
            perm = rng.permutation(len(spans))
            total = torch.zeros((), dtype=torch.float64, device=acc.device)  # read once per epoch, not per step
            for s in range(0, len(perm), cfg.batch_size):
                rows = np.concatenate([np.arange(*spans[j]) for j in perm[s : s + cfg.batch_size]])
                if len(rows) == 0:
                    continue
                with torch.profiler.record_function("mtpf.ner.head_step"):
                    rows = torch.from_numpy(rows).to(acc.device, non_blocking=True)
                    loss = nn.functional.cross_entropy(model.head(feats[rows]), flabels[rows])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += loss.detach()
            history.append({"stage": 1, "epoch": epoch + 1, "loss": total.item() / max(1, n_batches)})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        del feats, flabels
    # ---------------- stage 2: LoRA + head
    best, best_epoch, best_state, epochs, epochs_run = -1.0, 0, None, 0, 0
    if cfg.epochs:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
        opt = _optimizer(trainable, cfg.lr, cfg.weight_decay)
        for g in _optimizer(head_params, head_lr, cfg.weight_decay).param_groups:
            opt.add_param_group(g)
        # optimizer steps per epoch of this process (DDP: its share): the schedule, the minimum of steps and the
        # mean loss all count those
        n_batches = len(_process_share(list(range(math.ceil(len(train_enc.ids) / cfg.batch_size))), world, 0))
        epochs = _epochs(cfg.epochs, cfg.min_steps, n_batches)
        sched = _scheduler(opt, cfg.scheduler, epochs * n_batches)
        eval_every = cfg.eval_every
        if not eval_every and "dev" in evals:
            eval_every = auto_eval_every(len(evals["dev"][1]), len(keep), world)
        pack = False
        if cfg.cpu_speedups and acc.device.type == "cpu":
            from mtpf.pretrain import cpu_speed

            pack = cpu_speed.install(model.encoder)
        wrapped, opt = acc.prepare(model, opt)
        seed_dropout_per_rank(seed + 1, rank)  # the batch order (numpy rng) stays shared: each rank takes its share
        lengths = [len(x) for x in train_enc.ids]
        since_best = 0
        if resumed is not None:
            from mtpf.downstream.ner_checkpoint import restore_rng

            with torch.no_grad():
                params = dict(model.named_parameters())
                for n, v in resumed["weights"].items():
                    params[n].copy_(v)
            opt.load_state_dict(resumed["optimizer"])
            sched.load_state_dict(resumed["scheduler"])
            restore_rng(rng, resumed["rng"])
            best, best_epoch, best_state = resumed["best"], resumed["best_epoch"], resumed["best_state"]
            since_best, epochs_run = resumed["since_best"], resumed["epoch"]
            if acc.is_main_process:
                print(f"NER adaptation: resumed after stage-2 epoch {epochs_run} of {epochs} ({ckpt.folder})")
        bar = tqdm(total=epochs * n_batches, initial=epochs_run * n_batches, desc="stage 2 (LoRA+head)",
                   unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
        for epoch in range(epochs_run, epochs):
            wrapped.train()
            total = torch.zeros((), dtype=torch.float64, device=acc.device)  # read at log points only
            batches = _process_share(bucket_batches(lengths, cfg.batch_size, rng), world, rank)
            for k, b in enumerate(batches):
                with torch.profiler.record_function("mtpf.ner.train_step"):
                    batch = pad_pieces(train_enc, b, pad_id, acc.device, pack=pack)
                    labels_b = batch.pop("labels")
                    with acc.autocast():
                        logits = wrapped(**batch)
                    loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels_b.flatten(),
                                                       ignore_index=IGNORE)
                    opt.zero_grad(set_to_none=True)
                    acc.backward(loss)
                    if cfg.max_grad_norm:
                        acc.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.max_grad_norm)
                    opt.step()
                    sched.step()
                    total += loss.detach()
                bar.update(1)
                if progress and (k + 1) % 50 == 0:  # a device read: every 50 steps, not every step
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            epochs_run = epoch + 1
            if acc.num_processes > 1:  # the epoch's loss over every rank's share, not rank 0's alone
                total = acc.reduce(total, reduction="mean")
            rec = {"stage": 2, "epoch": epoch + 1, "loss": total.item() / max(1, n_batches)}
            bar.set_postfix(epoch=epoch + 1, loss=f"{rec['loss']:.3f}")
            if select == "dev" and (epochs_run % eval_every == 0 or epochs_run == epochs):
                dev_enc, dev_tags = evals["dev"]
                rec["dev"] = evaluate_split(model, dev_enc, dev_tags, labels, pad_id, cfg.eval_batch_size)
                if acc.num_processes > 1:  # every rank decides on rank 0's score: a last-bit difference between
                    from accelerate.utils import broadcast  # ranks would split early stopping (then a deadlock)

                    f1 = torch.tensor([rec["dev"]["f1"]], dtype=torch.float64, device=acc.device)
                    rec["dev"]["f1"] = float(broadcast(f1, from_process=0).item())
                since_best += 1
                if rec["dev"]["f1"] > best:
                    best, best_epoch, best_state, since_best = rec["dev"]["f1"], epochs_run, _trainable_state(model), 0
            history.append(rec)
            # early stopping, never below the stage's minimum of steps
            stopped = cfg.patience and since_best >= cfg.patience and epochs_run * n_batches >= cfg.min_steps
            if ckpt is not None and epochs_run < epochs and not stopped and _agreed(ckpt.due(), acc):
                from mtpf.downstream.ner_checkpoint import rng_state  # (the last epoch needs no restart point)

                ckpt.save(epochs_run, {
                    "epochs_warmup": epochs_warmup, "history": history, "weights": _trainable_state(model),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(rng),
                    "best": best, "best_epoch": best_epoch, "best_state": best_state, "since_best": since_best})
                acc.wait_for_everyone()  # every process has this epoch before any deletes its older one
                ckpt.prune(epochs_run)
            if stopped:
                break
        bar.close()
    if select == "dev" and best_state is not None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, v in best_state.items():
                params[n].copy_(v)
    else:
        best_epoch = epochs_run or epochs_warmup
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
        labels=labels, epochs={"warmup": epochs_warmup, "lora": epochs, "lora_run": epochs_run},
        dev_sentences=len(evals["dev"][1]) if "dev" in evals else None, device=str(acc.device),
        resumed_after_epoch=resumed["epoch"] if resumed is not None else None)


@torch.inference_mode()
def _frozen_features(model: NerModel, enc: EncodedNer, pad_id: int, batch_size: int, acc, progress: bool = False):
    """Hidden states (fp32) at the labelled positions of every piece (encoder in eval mode), and each piece's
    rows, on the accelerator's device."""
    from tqdm.auto import tqdm

    model.eval()
    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.ids[i]))
    # Labelled positions are found on the host (labels are CPU tensors before the copy) and gathered on the
    # device with one index per batch: no device read per sentence (a boolean index on a CUDA tensor is one).
    chunks, label_chunks, counts = [], [], torch.zeros(len(enc.ids), dtype=torch.long)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc="stage 1 (frozen encoder outputs)", unit="batch", leave=False,
                  disable=not progress, dynamic_ncols=True):
        b = order[s : s + batch_size]
        cpu = pad_pieces(enc, b, pad_id)  # host side
        mask = cpu["labels"] != IGNORE
        flat = mask.flatten().nonzero().squeeze(1)  # row-major: piece by piece, position by position
        label_chunks.append(cpu["labels"].flatten()[flat])
        counts[torch.tensor(b)] = mask.sum(1)
        with torch.profiler.record_function("mtpf.ner.features"):  # device side
            batch = to_device(cpu, acc.device)
            with acc.autocast():
                hidden = model.hidden(batch["input_ids"], batch["attention_mask"]).float()
            chunks.append(hidden.flatten(0, 1).index_select(0, flat.to(acc.device, non_blocking=True)))
    # rows are in length order; put them back in piece order (one gather on the device): piece i's rows start
    # at sorted_start[i] in the length-ordered rows and at piece_start[i] in piece order
    n = counts.numpy()
    sorted_start = np.zeros(len(n), dtype=np.int64)
    sorted_start[order] = np.cumsum(n[order]) - n[order]
    piece_start = np.cumsum(n) - n
    index = torch.from_numpy(np.repeat(sorted_start - piece_start, n) + np.arange(int(n.sum())))
    spans = [(int(a), int(a + c)) for a, c in zip(piece_start, n)]
    if chunks:
        feats = torch.cat(chunks).index_select(0, index.to(acc.device, non_blocking=True))
        labels = torch.cat(label_chunks)[index].to(acc.device, non_blocking=True)
    else:
        feats = torch.zeros(0, device=acc.device)
        labels = torch.zeros(0, dtype=torch.long, device=acc.device)
    return feats, labels, spans
