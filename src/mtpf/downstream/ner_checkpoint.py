"""Epoch checkpoints of NER adaptation's stage 2, so an interrupted adaptation continues where it stopped.

The paper's recipe is 10 + 30 epochs; on a large dataset that is hours, and a Ctrl-C or a lost machine used to
start it again from the first epoch. After a stage-2 epoch each process writes what the rest of the run
depends on: the trainable weights (LoRA + head, not the frozen encoder), the optimizer and schedule, the shared
batch-order generator (numpy) and its own dropout generator (torch), and model selection's state (best dev
score, its weights, epochs without improvement). A resumed run skips stage 1 (its head is in the weights) and
goes on from the next epoch, and ends with the weights of an uninterrupted run.

Writing one costs a few tens of MB (LoRA, its optimizer state and the best weights so far), so on a fast device
with short epochs it is written only when ``SECONDS_BETWEEN_SAVES`` (60; environment variable
``MTPF_NER_CHECKPOINT_SECONDS``) have passed since the last one: at most that much work is redone.

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


SECONDS_BETWEEN_SAVES = float(os.environ.get("MTPF_NER_CHECKPOINT_SECONDS", 60))  # 0: after every epoch


class EpochCheckpoint:
    def __init__(self, folder: str | os.PathLike, identity: dict, rank: int = 0):
        self.folder = Path(folder)
        self.rank = rank
        self.identity = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        self.path = self.folder / f"rank{rank}.pt"
        self.last = time.monotonic()

    def due(self) -> bool:
        """Whether enough work was done since the last save (or the start) to write another checkpoint."""
        return time.monotonic() - self.last >= SECONDS_BETWEEN_SAVES

    def load(self) -> dict | None:
        """The state saved by this adaptation, or None (no checkpoint, another adaptation's, unreadable)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)  # our own file: numpy RNG state
        except Exception as exc:  # torn by a crash, or not ours: train from the start
            print(f"NER adaptation: checkpoint {self.path} is unreadable ({type(exc).__name__}); starting over")
            return None
        if state.get("identity") != self.identity:
            print(f"NER adaptation: checkpoint {self.path} belongs to another adaptation; starting over")
            return None
        return state

    def save(self, state: dict) -> None:
        from mtpf.stages import fsync_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({**state, "identity": self.identity}, tmp)
        fsync_file(tmp)
        os.replace(tmp, self.path)
        self.last = time.monotonic()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


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
