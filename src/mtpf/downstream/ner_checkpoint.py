"""Epoch checkpoints of NER adaptation's stage 2, so an interrupted adaptation continues where it stopped.

The paper's recipe is 10 + 30 epochs; on a large dataset that is hours, and a Ctrl-C or a lost machine used to
start it again from the first epoch. After a stage-2 epoch each process writes what the rest of the run
depends on: the trainable weights (LoRA + head, not the frozen encoder), the optimizer and schedule, the shared
batch-order generator (numpy) and its own dropout generator (torch), and model selection's state (best dev
score, its weights, epochs without improvement). A resumed run skips stage 1 (its head is in the weights) and
goes on from the next epoch, and ends with the weights of an uninterrupted run (bit for bit on a CPU with one and two
processes, tested; GPU kernels are not bit-reproducible anyway; with more processes DDP may group the first
all-reduce after a resume differently, a difference in the last bits).

Writing one costs about 16 MB for MiniLM-L6 and 65 MB for BERT-base with the default LoRA (the trainable weights,
their two AdamW moments and the best weights so far: 4 floats per trainable parameter), so on a fast device
with short epochs it is written only when ``SECONDS_BETWEEN_SAVES`` (60; environment variable
``MTPF_NER_CHECKPOINT_SECONDS``) have passed since the last one: a re-run redoes at most that much training
plus the epoch that was cut (and, before the first save, everything).

A checkpoint is used only by the same adaptation (``identity``: model, data, recipe, share, seed, processes);
another one in the folder is replaced. Hand-written: accelerate's ``save_state`` would also store the frozen
encoder (all of its weights, every epoch) and has no place for model selection's state.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch


FORMAT = 1  # part of the identity: a checkpoint of another layout is another adaptation's


def _env_seconds() -> float:
    text = os.environ.get("MTPF_NER_CHECKPOINT_SECONDS", "60")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        print(f"warning: MTPF_NER_CHECKPOINT_SECONDS={text!r} is not a number of seconds >= 0; using 60")
        return 60.0
    return value


SECONDS_BETWEEN_SAVES = _env_seconds()  # 0: after every epoch


class EpochCheckpoint:
    """``FOLDER/rank<R>-e<EPOCH>.pt``, one file per process and saved epoch. A process deletes its older files only
    after every process has saved the newer epoch (the caller's barrier between :meth:`save` and :meth:`prune`),
    so a kill in between leaves an epoch that all processes have."""

    def __init__(self, folder: str | os.PathLike, identity: dict, rank: int = 0):
        self.folder = Path(folder)
        self.rank = rank
        identity = {**identity, "format": FORMAT}
        self.identity = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        self.last = time.monotonic()

    def _path(self, epoch: int) -> Path:
        return self.folder / f"rank{self.rank}-e{epoch:05d}.pt"

    def epochs(self) -> list[int]:
        """The epochs this process has a checkpoint of, newest first."""
        found = []
        for f in self.folder.glob(f"rank{self.rank}-e*.pt") if self.folder.is_dir() else []:
            try:
                found.append(int(f.stem.rsplit("-e", 1)[1]))
            except ValueError:
                continue
        return sorted(found, reverse=True)

    def load(self, epoch: int) -> dict | None:
        """The state this adaptation saved after ``epoch``, or None (another adaptation's, or unreadable)."""
        path = self._path(epoch)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: numpy RNG state
        except Exception as exc:  # torn by a crash, or not ours
            print(f"NER adaptation: checkpoint {path} is unreadable ({type(exc).__name__})")
            return None
        if not isinstance(state, dict) or state.get("identity") != self.identity:
            print(f"NER adaptation: checkpoint {path} belongs to another adaptation (model, data or recipe differ)")
            return None
        return state

    def due(self) -> bool:
        """Whether enough work was done since the last save (or the start) to write another checkpoint."""
        return time.monotonic() - self.last >= SECONDS_BETWEEN_SAVES

    def save(self, epoch: int, state: dict) -> None:
        from mtpf.stages import fsync_file

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(epoch)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({**state, "epoch": epoch, "identity": self.identity}, tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        self.last = time.monotonic()

    def prune(self, keep: int) -> None:
        """Delete this process's checkpoints older than epoch ``keep`` (once every process has saved ``keep``)."""
        for epoch in self.epochs():
            if epoch < keep:
                self._path(epoch).unlink(missing_ok=True)

    def drop_newer(self, epoch: int) -> None:
        """Delete this process's checkpoints newer than ``epoch`` (the one every process resumes from): a later
        save of those epochs must not meet a stale file of this process's."""
        for e in self.epochs():
            if e > epoch:
                self._path(e).unlink(missing_ok=True)


def rng_state(rng: np.random.Generator) -> dict:
    out = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
