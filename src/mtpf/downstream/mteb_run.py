"""Cross-check with the official ``mteb`` package (online: mteb downloads its task data from the hub).

``mtpf evaluate --model LABEL=PATH --mteb-tasks Banking77Classification,EmotionClassification --output OUT``
loads each model's sentence-transformers form (``RUN/sentence_transformer`` for an mtpf run: the backbone with
the ``tc`` adapter merged, mean pooling, Normalize) and runs ``mteb.evaluate`` on it; results land in
``OUT/mteb/<label>/`` as mteb writes them, and a summary ``OUT/mteb/summary.json``.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from mtpf.config import ConfigError


def sentence_transformer_path(ref: str) -> str:
    from mtpf.encoder import PACKAGED, packaged_model_path

    if ref == PACKAGED:
        return packaged_model_path()
    p = Path(ref)
    if (p / "run.json").is_file():
        st = p / "sentence_transformer"
        if not (st / "modules.json").is_file():
            raise ConfigError(f"mtpf run {p} has no sentence_transformer/ export")
        return str(st)
    return ref  # a sentence-transformers or HF folder, or a hub name


def run_mteb(models: list[tuple[str, str]], task_names: list[str], out: Path,
             device: str = "cpu") -> dict:  # pragma: no cover - online
    import mteb
    from sentence_transformers import SentenceTransformer

    try:
        tasks = mteb.get_tasks(tasks=task_names, languages=["eng"])
    except Exception as exc:
        raise ConfigError(f"--mteb-tasks: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for label, ref in models:
        try:
            model = SentenceTransformer(sentence_transformer_path(ref), device=device)
            cache = mteb.ResultCache(cache_path=str(out / _slug(label)))
            result = mteb.evaluate(model, tasks, cache=cache, overwrite_strategy="only-missing")
        except Exception as exc:  # re-raised below unless it is a network failure
            if not is_network_error(exc):
                raise
            raise ConfigError(
                f"--mteb-tasks needs the Hugging Face Hub (mteb downloads each task's data) and it could not be "
                f"reached: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} -- run it online, "
                "or evaluate on local data without --mteb-tasks") from None
        summary[label] = {tr.task_name: tr.get_score() for tr in result.task_results}
        print(label, json.dumps(summary[label], indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def is_network_error(exc: BaseException) -> bool:
    """Network / offline-mode failures (requests, httpx, huggingface_hub, datasets), also when wrapped."""
    net = [OSError]
    for module in ("httpx", "httpx2"):  # huggingface_hub 2.x talks through httpx2, whose classes are its own
        try:
            net.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    net = tuple(net)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, net):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
