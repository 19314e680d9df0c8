"""Score what is actually deployed: app adapters served by :class:`mtpf.runtime.Runtime` (e.g. the int8 ONNX
backbone + merged adapters), with the suite's own protocols, so the cost of deployment shows up as one more row
of the paper's tables.

* NER: each app adapter (saved by ``mtpf adapt ner`` or ``mtpf evaluate --save-apps``) tags the test split of
  its dataset through ``Runtime.tag_words`` (the gold words as given, as in the suite); entity-level micro F1 with
  seqeval. The runtime truncates sentences past the app's ``max_length`` (words beyond it are tagged ``O``)
  where the suite windows them; ``truncated_words`` counts them.
* TC: one TC app (its ``tc`` LoRA, pooling and normalisation) embeds the texts of every classification dataset
  through ``Runtime.embed``; the MTEB protocol of :func:`mtpf.downstream.tc.evaluate_tc` runs on those
  embeddings (the app's own head is not used).

Cells are records of the ``mtpf-eval/1`` format, so ``mtpf.downstream.tables.write_outputs`` puts them next to
the suite's rows.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mtpf.downstream.suite import RESULTS_FORMAT, _hash, _write_json, load_results
from mtpf.downstream.tc import TCConfig


class RuntimeEmbedder:
    """The suite's ``Embedder`` interface over ``Runtime.embed`` (memory cache only)."""

    def __init__(self, runtime, app: str, fingerprint: str, normalize: bool, chunk: int = 256):
        self.runtime, self.app, self.fingerprint, self.chunk = runtime, app, fingerprint, chunk
        self.model_ref = type("RuntimeModel", (), {"normalize": normalize})()

    def cache(self, dataset_fp: str):
        from mtpf.downstream.embed import EmbeddingCache

        return EmbeddingCache(None, self.fingerprint, dataset_fp)

    def compute(self, texts: list[str]):
        futures = [self.runtime.submit(self.app, "embed", texts[i:i + self.chunk])
                   for i in range(0, len(texts), self.chunk)]
        # the runtime truncates at the app's max_length too; not counted here
        return np.concatenate([f.result() for f in futures]), np.zeros(len(texts), dtype=bool)


def _truncated_words(runtime, app: str, sentences: list[list[str]]) -> int:
    spec = runtime.app_info(app)
    limit = min(spec["max_length"], runtime.model_max_length)
    n = 0
    for words in sentences:
        enc = runtime.tokenizer(words, is_split_into_words=True, truncation=False)
        ids = enc.word_ids()
        last_kept = {w for w in ids[: limit - 1] if w is not None}
        n += len(words) - len(last_kept)
    return n


def evaluate_runtime(backbone: str, label: str, output: str | Path, *, ner_apps: list[tuple[str, str]] = (),
                     tc_app: str | None = None, cls: list[str] = (), backend: str = "onnx", int8: bool = True,
                     tc_cfg: TCConfig | None = None, seed: int = 42, num_threads: int | None = None,
                     onnx_dir: str | None = None, progress: bool = True, device: str = "auto") -> dict:
    """Evaluate app adapters served by a Runtime; cells go to ``OUTPUT/results.json`` (resumable by key).

    ``ner_apps``: (dataset folder or hub name, app adapter folder) pairs. ``tc_app``: a TC app adapter folder whose
    embedding is scored on every ``cls`` dataset under the MTEB protocol. ``device``: where the runtime runs
    (``Runtime(..., device=...)``: PyTorch on CUDA, ONNX Runtime's CUDA provider when installed).
    """
    from tqdm.auto import tqdm

    from mtpf.device import device_kwargs
    from mtpf.downstream.data import load_cls_dataset, load_ner_dataset
    from mtpf.downstream.ner import seqeval_scores
    from mtpf.downstream.tc import evaluate_tc
    from mtpf.runtime import Runtime
    from mtpf.runtime.app import read_app

    tc_cfg = tc_cfg or TCConfig()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = load_results(results_path)
    done = {c["key"] for c in results["cells"]}
    engine = {"backend": backend, "int8": bool(int8) if backend == "onnx" else False}
    # read every input before the slow part: a bad folder fails in seconds
    ner_sets = [(ref, load_ner_dataset(ref), read_app(app), app) for ref, app in ner_apps]
    cls_sets = [(ref, load_cls_dataset(ref)) for ref in cls]
    tc_spec = read_app(tc_app) if tc_app else None
    if cls_sets and tc_spec is None:
        raise ValueError("classification datasets need a TC app adapter (tc_app)")
    for _, ds, spec, app in ner_sets:
        if spec.task != "ner":
            raise ValueError(f"{app}: a {spec.task.upper()} app, expected an NER app adapter")
    if tc_spec is not None and tc_spec.task != "tc":
        raise ValueError(f"{tc_app}: a {tc_spec.task.upper()} app, expected a TC app adapter")

    # cells are keyed by content, not by path: an app retrained into the same folder (`--overwrite`) is scored
    # again; the backbone is the one each app was trained on (registration refuses any other)
    specs = {str(app): spec for _, _, spec, app in ner_sets} | ({str(tc_app): tc_spec} if tc_spec else {})
    prints = {app: _app_fingerprint(spec) for app, spec in specs.items()}

    def key_of(task, app, dataset_fp, extra):
        return _hash({"task": task, "runtime": engine, "backbone": specs[str(app)].backbone_fingerprint,
                      "app": prints[str(app)], "dataset": dataset_fp, "seed": seed, **extra})

    wanted = {key_of("ner", app, ds.fingerprint, {}) for _, ds, _, app in ner_sets}
    wanted |= {key_of("tc", tc_app, ds.fingerprint, tc_cfg.to_dict()) for _, ds in cls_sets}

    todo = [(ref, ds, spec, app) for ref, ds, spec, app in ner_sets
            if key_of("ner", app, ds.fingerprint, {}) not in done]
    tc_todo = [(ref, ds) for ref, ds in cls_sets
               if key_of("tc", tc_app, ds.fingerprint, tc_cfg.to_dict()) not in done]
    if not todo and not tc_todo:
        return _current(results, results_path, wanted, label)
    rt = Runtime(backbone, backend=backend, int8=int8, num_threads=num_threads, onnx_dir=onnx_dir,
                 max_batch_size=64, **device_kwargs(Runtime, device))
    try:
        for ref, ds, spec, app in tqdm(todo, desc=f"runtime NER ({label})", disable=not progress):
            t0 = time.perf_counter()
            name = f"ner-{len(rt.apps())}"
            rt.register_app(name, app)
            test = ds.splits["test"]
            futures = [rt.submit(name, "tags", test.tokens[i:i + 64]) for i in range(0, len(test), 64)]
            pred = [tags for f in futures for tags in f.result()]
            metrics = seqeval_scores(test.tags, pred)
            training = json.loads((Path(app) / "mtpf_app.json").read_text()).get("training", {})
            results["cells"].append({
                "key": key_of("ner", app, ds.fingerprint, {}), "task": "ner", "model": label,
                "model_ref": f"{backbone} + {app}", "runtime": engine, "app": str(app), "dataset": ds.name,
                "dataset_ref": ref, "dataset_fingerprint": ds.fingerprint, "split": "test",
                "fraction": float(training.get("fraction", 1.0)), "seed": int(training.get("seed", seed)),
                "main_metric": "f1", "main_score": metrics["f1"], "metrics": metrics,
                "suite_test_metrics": spec.metrics.get("test"),
                "truncated_words": _truncated_words(rt, name, test.tokens),
                "seconds": round(time.perf_counter() - t0, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            rt.unregister_app(name)
            _write_json(results_path, results)
        if tc_todo:
            rt.register_app("tc", tc_app)
            fp = _hash({"runtime": engine, "backbone": tc_spec.backbone_fingerprint, "app": prints[str(tc_app)]})
            embedder = RuntimeEmbedder(rt, "tc", fp, tc_spec.normalize)
            for ref, ds in tqdm(tc_todo, desc=f"runtime TC ({label})", disable=not progress):
                t0 = time.perf_counter()
                res = evaluate_tc(embedder, ds, tc_cfg, seed)
                per = res.pop("scores_per_experiment")
                results["cells"].append({
                    "key": key_of("tc", tc_app, ds.fingerprint, tc_cfg.to_dict()), "task": "tc", "model": label,
                    "model_ref": f"{backbone} + {tc_app}", "runtime": engine, "app": str(tc_app),
                    "dataset": ds.name, "dataset_ref": ref, "dataset_fingerprint": ds.fingerprint,
                    "split": res["split"], "fraction": 1.0, "seed": seed, "config": tc_cfg.to_dict(),
                    "main_metric": "accuracy", "main_score": res["accuracy"],
                    "metrics": {"accuracy": res["accuracy"], "accuracy_std": res["accuracy_std"], "f1": res["f1"]},
                    "scores_per_experiment": per, **{k: v for k, v in res.items() if k not in ("accuracy", "f1")},
                    "seconds": round(time.perf_counter() - t0, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
                _write_json(results_path, results)
    finally:
        rt.close()
    results["format"] = RESULTS_FORMAT
    _write_json(results_path, results)
    return _current(results, results_path, wanted, label)


def _current(results: dict, path: Path, wanted: set[str], label: str) -> dict:
    """The cells of this call (the file keeps every cell it ever held), under this call's ``label``: a row
    relabelled since its cells ran keeps them, and another engine's or app's cells in the same folder stay out."""
    cells = [c for c in results["cells"] if c["key"] in wanted]
    if any(c["model"] != label for c in cells):
        for c in cells:
            c["model"] = label
        _write_json(path, results)
    return {**results, "cells": cells}


def _app_fingerprint(spec) -> str:
    """What the runtime computes with for an app: its LoRA (the runtime's own ``lora_fingerprint``, as adapter
    sharing uses), its head and the settings it is served with; not the folder's other files (a model card, an
    ``--hf`` or ONNX export beside them), which neither change the scores nor should be hashed."""
    import hashlib

    from mtpf.runtime.core import lora_fingerprint

    meta = {"lora": lora_fingerprint(spec.path) if spec.has_lora else None, "task": spec.task, "labels": spec.labels,
            "pooling": spec.pooling, "normalize": spec.normalize, "max_length": spec.max_length}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(spec.head_weight.tobytes() + spec.head_bias.tobytes())
    return h.hexdigest()
