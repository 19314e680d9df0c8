"""Offline parity check: the official mteb package vs ``mtpf evaluate`` on local classification data.

Runs mteb's own ``AbsTaskClassification`` (its undersampling, LogisticRegression and scoring) on the
``../shared/data/cls/<name>`` folders by overriding ``load_data``, with the packaged all-MiniLM-L6-v2 as a
SentenceTransformer, and prints mteb's accuracy next to mtpf's for the same data.

    .venv/bin/python bench/bench_eval_mteb_parity.py [banking77 emotion amazon_counterfactual_en]

Reference (mteb 2.26, this machine): Banking77 79.06, Emotion 36.72, AmazonCounterfactual 63.58 — identical to
mtpf's numbers (docs/evaluation.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cls"
TASKS = {  # local folder -> mteb task class (module, name)
    "banking77": ("mteb.tasks.classification.eng.banking77_classification", "Banking77Classification"),
    "emotion": ("mteb.tasks.classification.eng.emotion_classification", "EmotionClassification"),
    "amazon_counterfactual_en": ("mteb.tasks.classification.multilingual.amazon_counterfactual_classification",
                                 "AmazonCounterfactualClassification"),
}


def local_task(name: str):
    import importlib

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from mtpf.downstream.data import load_cls_dataset

    module, cls_name = TASKS[name]
    base = getattr(importlib.import_module(module), cls_name)
    ds = load_cls_dataset(str(DATA / name))
    names = ds.label_names
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})

    def split(s):
        return Dataset.from_dict({"text": ds.splits[s].texts, "label": [names.index(x) for x in ds.splits[s].labels]},
                                 features=features)

    class Local(base):
        def load_data(self, **kwargs):
            data = DatasetDict({"train": split("train"), "test": split("test")})
            self.dataset = {"en": data} if self.metadata.is_multilingual else data
            self.data_loaded = True

    task = Local().filter_eval_splits(["test"])
    if task.metadata.is_multilingual:
        task.hf_subsets = ["en"]
    return task


def main(names: list[str]) -> None:
    import mteb
    from sentence_transformers import SentenceTransformer

    from mtpf.downstream.models import resolve
    from mtpf.downstream.data import load_cls_dataset
    from mtpf.downstream.tc import Embedder, TCConfig, evaluate_tc
    from mtpf.encoder import packaged_model_path

    st = SentenceTransformer(packaged_model_path(), device="cpu")
    cfg = TCConfig()
    for name in names:
        task = local_task(name)
        res = mteb.evaluate(st, [task], cache=None, show_progress_bar=False)
        theirs = res.task_results[0].get_score(splits=["test"])
        ours = evaluate_tc(Embedder(resolve("packaged"), cfg), load_cls_dataset(str(DATA / name)), cfg)["accuracy"]
        print(f"{name:28s} mteb {100 * theirs:6.2f}   mtpf {100 * ours:6.2f}   "
              f"(samples_per_label {task.samples_per_label})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(TASKS))
