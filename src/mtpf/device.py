"""One place that turns ``--device auto|cpu|cuda|cuda:N`` into a ``torch.device`` (and says what runs in bf16).

Every command with a ``--device`` option (adapt, evaluate, evaluate-runtime, analyze, demo) calls
:func:`resolve_device`; ``auto`` is CUDA when a GPU is visible, else the CPU. Mixed precision follows the
pre-finetuning recipe: bf16 autocast on a CUDA device that supports it, fp32 everywhere else (bf16 is much
slower than fp32 on CPUs without AMX).
"""
from __future__ import annotations

import contextlib

from mtpf.config import ConfigError

CHOICES_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"


def is_main_process() -> bool:
    """True in a single process and on rank 0 of an ``accelerate launch`` / ``torchrun`` launch (their ``RANK``
    variable, read without starting accelerate's state): the process that writes shared outputs (app folders,
    results.json, tables) when ``mtpf adapt ner`` / ``mtpf evaluate`` train on several processes."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def on_every_process(flag: bool, acc) -> bool:
    """Whether ``flag`` holds on every process of ``acc`` (an ``accelerate.Accelerator``); collective: every
    process calls it. Resumes use it so that all processes load the same checkpoint or all move on."""
    if acc.num_processes == 1:
        return flag
    import torch

    return bool(acc.gather(torch.tensor([int(flag)], device=acc.device)).min().item())


def seed_dropout_per_rank(seed: int, rank: int) -> None:
    """Give each process of a DDP run its own dropout stream, after DDP has copied rank 0's weights.

    Every rank starts from the same ``torch.manual_seed(seed)`` (weight init must agree), so without this every
    rank would draw the same dropout masks for its (different) examples, and a 16-GPU run would have 1/16 of the
    dropout noise it should. Rank 0 keeps its stream, so a single-process run is unchanged; rank r > 0 reseeds
    torch's generator (CPU and CUDA) with ``seed * 1_000_003 + r``. A checkpoint stores every rank's generator
    (accelerate's ``random_states_{rank}.pkl``), so a resumed run continues each rank's own stream.
    """
    if rank:
        import torch

        torch.manual_seed(seed * 1_000_003 + rank)


def resolve_device(spec: str | None = "auto"):
    """``"auto"|"cpu"|"cuda"|"cuda:N"`` (or a ``torch.device``) -> ``torch.device``; a clear ConfigError for a GPU
    that is not there."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    text = str(spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, colon, index = text.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):  # "cuda:" or "cuda:x": not a device
        raise ConfigError(f"--device {spec!r}: expected {CHOICES_HELP}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA GPU is available on this machine (use --device cpu or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device(text)


def add_device_argument(parser, what: str = "models") -> None:
    parser.add_argument("--device", default="auto", help=f"device for {what}: {CHOICES_HELP} (default auto)")


def bf16_supported(device) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device):
    """bf16 autocast on a CUDA device that supports it (as the pre-finetuning recipe), a no-op elsewhere."""
    import torch

    if bf16_supported(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_kwargs(factory, device) -> dict:
    """``{"device": "..."}`` for a constructor that takes ``device=`` (e.g. ``mtpf.runtime.Runtime``); ``{}`` for one
    that runs on the CPU only, which is an error when a GPU was asked for explicitly."""
    import inspect

    resolved = resolve_device(device)
    if "device" in inspect.signature(factory).parameters:
        return {"device": str(resolved)}
    if resolved.type != "cpu" and str(device) != "auto":
        raise ConfigError(f"--device {device}: {getattr(factory, '__name__', factory)} runs on the CPU only")
    return {}
