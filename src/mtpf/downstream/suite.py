"""``mtpf evaluate``: every (model, dataset, fraction, seed) cell, resumable, written as results.json, tables in the
paper's layout (tables.md, tables.csv) and a chart (chart.png).

A cell is identified by a key hashed from its task, the model fingerprint (backbone + the adapter the task uses),
the dataset fingerprint, the fraction, the seed and the task's config: a cell whose key is already in
``results.json`` is not recomputed, and changing any of those recomputes exactly the affected cells.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from mtpf.config import ConfigError
from mtpf.device import is_main_process
from mtpf.downstream.ner import NerConfig
from mtpf.downstream.tc import TCConfig

RESULTS_FORMAT = "mtpf-eval/1"
CHECKPOINTS = ".checkpoints"  # OUTPUT/.checkpoints/<cell>: epoch checkpoints of NER cells under way


@dataclass
class SuiteConfig:
    models: list[tuple[str, str]]  # (label, ref)
    output: str
    ner: list[str] = field(default_factory=list)
    cls: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [42])
    base: str | None = None
    ner_cfg: NerConfig = field(default_factory=NerConfig)
    tc_cfg: TCConfig = field(default_factory=TCConfig)
    cache_dir: str | None = None
    allow_unseen_labels: bool = False
    save_apps: bool = False
    progress: bool = True
    device: str = "auto"  # where NER adapts and TC embeds (mtpf.device.resolve_device); not part of a cell's key

    def __post_init__(self):
        if not self.models:
            raise ConfigError("give at least one --model")
        labels = [m[0] for m in self.models]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"model labels must be unique, got {labels}")
        if self.base is not None and self.base not in labels:
            raise ConfigError(f"--base {self.base!r} is not one of the model labels {labels}")
        if not self.ner and not self.cls:
            raise ConfigError("give at least one --ner or --cls dataset")
        if self.ner and not self.fractions:
            raise ConfigError("give at least one NER train fraction (--fractions, e.g. 1.0 or 0.1,0.2,0.5)")
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ConfigError(f"fractions must be in (0, 1], got {f}")
        if not self.seeds:
            raise ConfigError("give at least one seed")
        for name, values in (("fractions", [float(f) for f in self.fractions]), ("seeds", list(self.seeds))):
            if len(set(values)) != len(values):  # the same cell would run (and count) twice
                raise ConfigError(f"--{name} lists a value twice: {values}")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Cell:
    task: str
    model: object  # ModelRef
    dataset: object
    dataset_ref: str
    fraction: float
    seed: int
    config: dict
    key: str = ""

    @property
    def name(self) -> str:
        frac = "" if self.fraction == 1 else f" @{self.fraction:g}"
        return f"{self.task.upper()} {self.dataset.name}{frac} | {self.model.label} | seed {self.seed}"


def load_results(path: Path) -> dict:
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if (isinstance(data, dict) and data.get("format") == RESULTS_FORMAT and isinstance(data.get("cells"), list)
                    and all(isinstance(c, dict) and "key" in c for c in data["cells"])):
                return data
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        bak = path.with_suffix(".json.bak")
        os.replace(path, bak)
        print(f"warning: {path} was unreadable; moved to {bak} and starting over")
    return {"format": RESULTS_FORMAT, "cells": []}


def read_cells(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(cells, model labels) of a results.json, each cell under its model's current label: a model relabelled
    since its cells ran keeps them (matched by the model reference).

    results.json keeps every cell it ever held (a resumed or re-configured run skips what it has), so one
    (model, task, dataset, fraction, seed) may appear under an older recipe or build too: only the newest counts,
    as in the suite's own tables, or two recipes would be averaged as if they were two seeds."""

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it as an mtpf evaluate results.json ({exc})") from None
    if not (isinstance(data, dict) and isinstance(data.get("cells"), list)
            and all(isinstance(c, dict) and {"model", "task", "dataset", "fraction"} <= set(c) for c in data["cells"])):
        raise ConfigError(f"{path}: not an mtpf evaluate results.json (no list of cells with model, task, dataset, "
                          "fraction)")
    label_of = {m["ref"]: m["label"] for m in data.get("models", [])}
    newest = {}
    for i, c in enumerate(data["cells"]):
        c["model"] = label_of.get(c.get("model_ref"), c["model"])
        slot = (c["model"], c["task"], c["dataset"], float(c["fraction"]), c.get("seed"))
        if slot not in newest or (c.get("finished") or "", i) >= newest[slot][0]:
            newest[slot] = ((c.get("finished") or "", i), c)
    return [c for _, c in newest.values()], [m["label"] for m in data.get("models", [])]


def app_folder_name(label: str, dataset: str, fraction: float, seed: int) -> str:
    """Folder name of a cell's app adapter under OUTPUT/apps (``--save-apps``)."""
    return f"{_slug(label)}-{dataset}-f{fraction:g}-s{seed}"


def _app_of_cell(app: Path, key: str, record: dict) -> bool:
    """Whether the app folder of ``--save-apps`` was trained for this results cell: its ``cell_key``, or (a folder
    written before apps recorded it) its test metrics are the cell's."""
    try:
        meta = json.loads((app / "mtpf_app.json").read_text())
        if "cell_key" in meta["training"]:
            return meta["training"]["cell_key"] == key
        return meta["metrics"]["test"] == record.get("metrics")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_json(path: Path, data: dict) -> None:
    if not is_main_process():  # several processes (NER adaptation under DDP): rank 0 writes, the others compute
        return
    from mtpf.stages import write_text_durable

    write_text_durable(path, json.dumps(data, indent=2))  # a recorded cell is never computed again: it must last


def build_cells(cfg: SuiteConfig, models, ner_sets, cls_sets) -> list[Cell]:
    cells = []
    ner_conf, tc_conf = cfg.ner_cfg.to_dict(), cfg.tc_cfg.to_dict()
    for m in models:
        for ref, ds in ner_sets:
            for frac in cfg.fractions:
                for seed in cfg.seeds:
                    cells.append(Cell("ner", m, ds, ref, float(frac), int(seed), ner_conf))
        for ref, ds in cls_sets:
            for seed in cfg.seeds:
                cells.append(Cell("tc", m, ds, ref, 1.0, int(seed), tc_conf))
    for c in cells:
        key = {"task": c.task, "model": cell_model_fingerprint(c, cfg), "dataset": c.dataset.fingerprint,
               "fraction": c.fraction, "seed": c.seed, "config": c.config,
               "normalize": c.model.normalize if c.task == "tc" else None}
        if c.task == "tc" and c.model.kind != "run" and c.model.st_max_length is not None:
            # a sentence-transformers model sets its own token limit (the packaged model: 256), so two folders
            # with the same weights are different TC cells; a run's limit comes with its weights (its export)
            key["st_max_length"] = c.model.st_max_length
        c.key = _hash(key)
    return cells


def cell_model_fingerprint(cell: Cell, cfg: SuiteConfig) -> str:
    """Backbone + the adapter this cell uses (tc adapter for TC, ner adapter as NER initialisation)."""
    uses = cfg.tc_cfg.use_adapter if cell.task == "tc" else cfg.ner_cfg.init_from_ner_adapter
    return cell.model.fingerprint(cell.task if uses else None)


def run_suite(cfg: SuiteConfig) -> dict:
    from tqdm.auto import tqdm

    from mtpf.downstream.data import load_cls_dataset, load_ner_dataset
    from mtpf.downstream.models import resolve

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cfg.cache_dir or str(out / "cache")
    # load and check every input first: bad data fails in seconds, not after an hour of training
    ner_sets = [(r, load_ner_dataset(r, cfg.allow_unseen_labels)) for r in cfg.ner]
    cls_sets = [(r, load_cls_dataset(r, cfg.allow_unseen_labels)) for r in cfg.cls]
    names = [ds.name for _, ds in ner_sets + cls_sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset names must be unique (folder names), got {names}")
    # what would otherwise fail only when its cell comes up, possibly hours in
    if cls_sets:
        from mtpf.downstream.tc import make_classifier

        make_classifier(cfg.tc_cfg, 0, check=True)  # bad classifier options: a ConfigError now
    for ref, ds in cls_sets:
        if cfg.tc_cfg.split not in ds.splits:
            raise ConfigError(f"{ref}: no {cfg.tc_cfg.split} split to evaluate on (has {sorted(ds.splits)})")
    for ref, ds in ner_sets:
        if cfg.ner_cfg.select == "dev" and "dev" not in ds.splits:
            raise ConfigError(f"{ref}: --select dev but the dataset has no dev split; use --select auto or last")
    models = [resolve(ref, label, cfg.tc_cfg.normalize) for label, ref in cfg.models]
    if cfg.cls and cfg.tc_cfg.normalize == "auto" and len({m.normalize for m in models}) > 1:
        print("note: TC embeddings are L2-normalised for " + ", ".join(m.label for m in models if m.normalize)
              + " but not for " + ", ".join(m.label for m in models if not m.normalize) + " (each as its own "
              "sentence-transformers pipeline); pass --normalize true or false to score every row alike")
    cells = build_cells(cfg, models, ner_sets, cls_sets)

    results_path = out / "results.json"
    results = load_results(results_path)
    # with --save-apps a NER cell is done only with its own app folder (results.json restored into a fresh folder,
    # or a folder of the same name left by a run with another recipe: the folder name does not hold the config)
    records = {r["key"]: r for r in results["cells"]}
    todo = [c for c in cells if c.key not in records or (cfg.save_apps and c.task == "ner" and not _app_of_cell(
        out / "apps" / app_folder_name(c.model.label, c.dataset.name, c.fraction, c.seed), c.key, records[c.key]))]
    results["models"] = [m.describe() for m in models]
    results["base"] = cfg.base or models[0].label
    results["config"] = {"ner": cfg.ner_cfg.to_dict(), "tc": cfg.tc_cfg.to_dict(), "fractions": cfg.fractions,
                         "seeds": cfg.seeds, "ner_datasets": cfg.ner, "cls_datasets": cfg.cls}
    _write_json(results_path, results)
    print(f"{len(cells)} cells: {len(cells) - len(todo)} already in {results_path}, {len(todo)} to run")
    if is_main_process():
        _clear_checkpoints(out, [_checkpoint_dir(out, c) for c in todo if c.task == "ner"])

    bar = tqdm(todo, desc="evaluate", unit="cell", disable=not cfg.progress or not todo, dynamic_ncols=True)
    embedders = {}
    for i, cell in enumerate(bar):
        bar.set_description(f"[{i + 1}/{len(todo)}] {cell.name}")
        if not cfg.progress:
            print(f"[{i + 1}/{len(todo)}] {cell.name}", flush=True)
        t0 = time.perf_counter()
        if cell.task == "ner":
            record = _run_ner(cell, cfg, out)
        else:
            key = cell.model.label
            if key not in embedders:
                from mtpf.downstream.tc import Embedder

                embedders = {key: Embedder(cell.model, cfg.tc_cfg, cache_dir, progress=cfg.progress,
                                           device=cfg.device)}
            record = _run_tc(cell, cfg, embedders[key])
        record.update({"key": cell.key, "task": cell.task, "model": cell.model.label, "model_ref": cell.model.ref,
                       "model_fingerprint": cell_model_fingerprint(cell, cfg),
                       "backbone_fingerprint": cell.model.backbone_fingerprint(),
                       "dataset": cell.dataset.name, "dataset_ref": cell.dataset_ref,
                       "dataset_fingerprint": cell.dataset.fingerprint, "fraction": cell.fraction,
                       "seed": cell.seed, "config": cell.config, "seconds": round(time.perf_counter() - t0, 2),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        results["cells"] = [r for r in results["cells"] if r["key"] != cell.key] + [record]  # one record a key
        _write_json(results_path, results)
        if cell.task == "ner" and is_main_process():  # recorded: its checkpoints are no longer needed
            _clear_checkpoints(out, [_checkpoint_dir(out, c) for c in todo[i + 1:] if c.task == "ner"])
        note = ""
        if record.get("truncated_texts"):
            note = f"; {record['truncated_texts']} texts longer than the model's limit were truncated"
        windowed = {k: v for k, v in (record.get("n_windowed") or {}).items() if v}
        if windowed:
            note = f"; sentences longer than the model's limit were windowed: {windowed}"
        bar.write(f"  {cell.name}: {record['main_metric']} = {100 * record['main_score']:.2f} "
                  f"({record['seconds']:.0f}s{note})")
    bar.close()

    from mtpf.downstream.tables import write_outputs

    # seeds accumulate: cells of earlier --seeds runs with today's models, data and config stay in the tables
    earlier = sorted({int(r["seed"]) for r in results["cells"]} - set(cfg.seeds))
    shown = cells + (build_cells(replace(cfg, seeds=earlier), models, ner_sets, cls_sets) if earlier else [])
    label_of = {c.key: c.model.label for c in shown}
    rows = [r for r in results["cells"] if r["key"] in label_of]
    for r in rows:  # a relabelled model keeps its cells: show (and store) them under today's label
        r["model"] = label_of[r["key"]]
    _write_json(results_path, results)
    if not is_main_process():
        return {"results": str(results_path), "ran": len(todo), "skipped": len(cells) - len(todo)}
    paths = write_outputs(rows, [m.label for m in models], results["base"], out,
                          ner_order=[ds.name for _, ds in ner_sets], tc_order=[ds.name for _, ds in cls_sets])
    return {"results": str(results_path), "ran": len(todo), "skipped": len(cells) - len(todo), **paths}


def _checkpoint_dir(out: Path, cell: Cell) -> Path:
    """Where a NER cell's adaptation keeps its epoch checkpoints: a cell cut short continues from them."""
    return out / CHECKPOINTS / hashlib.sha256(cell.key.encode()).hexdigest()[:16]


def _clear_checkpoints(out: Path, keep: list[Path]) -> None:
    """Delete checkpoint folders other than ``keep`` (cells recorded since, or whose key changed with the
    config), and the parent folder once it is empty."""
    import shutil

    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return
    for sub in folder.iterdir():
        if sub not in keep:
            shutil.rmtree(sub, ignore_errors=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # a cell still to run keeps its checkpoints


def _run_ner(cell: Cell, cfg: SuiteConfig, out: Path) -> dict:
    from mtpf.downstream.ner import save_ner_app, train_ner

    res = train_ner(cell.model, cell.dataset, cfg.ner_cfg, cell.fraction, cell.seed, progress=cfg.progress,
                    keep_model=cfg.save_apps, device=cfg.device, checkpoint_dir=_checkpoint_dir(out, cell))
    if cfg.save_apps and is_main_process():  # one writer of the app folder under DDP
        app = out / "apps" / app_folder_name(cell.model.label, cell.dataset.name, cell.fraction, cell.seed)
        save_ner_app(res, cell.model, app, {"dataset": cell.dataset.name, "fraction": cell.fraction,
                                            "seed": cell.seed, "cell_key": cell.key})
    rec = res.record()
    rec.pop("labels", None)
    return {"split": "test", "main_metric": "f1", "main_score": res.test["f1"], "metrics": res.test, **rec}


def _run_tc(cell: Cell, cfg: SuiteConfig, embedder) -> dict:
    from mtpf.downstream.tc import evaluate_tc

    res = evaluate_tc(embedder, cell.dataset, cfg.tc_cfg, cell.seed)
    per = res.pop("scores_per_experiment")
    return {"split": res["split"], "main_metric": "accuracy", "main_score": res["accuracy"],
            "metrics": {"accuracy": res["accuracy"], "accuracy_std": res["accuracy_std"], "f1": res["f1"]},
            "scores_per_experiment": per, **{k: v for k, v in res.items() if k not in ("accuracy", "f1")}}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
