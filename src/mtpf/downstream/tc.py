"""Text classification under the MTEB protocol (``mteb/abstasks/classification.py``, mteb 2.x).

For each of ``n_experiments`` experiments the train split is undersampled to ``samples_per_label`` examples per
label exactly as mteb does it (the index list is shuffled *in place* by a fresh ``np.random.RandomState(seed)``
every experiment, carried over from one experiment to the next, and the first ``samples_per_label`` indices of
each label are kept); a ``LogisticRegression(max_iter=100, random_state=seed)`` is fitted on the embeddings of
those examples and scored on the whole test split; the scores are averaged over experiments.

Embeddings: mean pooling over the last hidden state, with the model's ``tc`` task-primary adapter active when
it has one; L2-normalised when the model's sentence-transformers pipeline normalises (see
:mod:`mtpf.downstream.models`), i.e. exactly what mteb computes for the same folder.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mtpf.config import ConfigError

# mteb's per-task samples_per_label where it is not 8 (English classification tasks of mteb 2.x, checked against
# the installed mteb by tests/test_downstream.py::test_samples_per_label_defaults_match_every_english_mteb_...):
# a dataset whose name holds one of these keys uses it.
_SAMPLES_PER_LABEL = {"emotion": 16, "toxicconversations": 16, "tweetsentimentextraction": 32,
                      "amazoncounterfactual": 32, "yahooanswerstopics": 32, "yelpreviewfull": 128}
DEFAULT_SAMPLES_PER_LABEL = 8


def default_samples_per_label(dataset_name: str) -> int:
    norm = re.sub(r"[^a-z0-9]", "", dataset_name.lower())
    for key, n in _SAMPLES_PER_LABEL.items():
        if key in norm:
            return n
    return DEFAULT_SAMPLES_PER_LABEL


@dataclass
class TCConfig:
    samples_per_label: str = field(default="auto", metadata={
        "help": "auto (8; Emotion 16; TweetSentimentExtraction/AmazonCounterfactual 32), an integer, "
                "or full (one classifier on the whole train split)"})
    n_experiments: int = field(default=10, metadata={"help": "Undersampling experiments (mteb: 10)."})
    classifier: str = field(default="logreg", metadata={
        "help": "logreg (sklearn LogisticRegression) or module:Class of any sklearn-style classifier."})
    max_iter: int = field(default=100, metadata={"help": "LogisticRegression max_iter (mteb: 100)."})
    classifier_args: dict = field(default_factory=dict, metadata={"help": "Extra classifier keyword arguments."})
    normalize: str = field(default="auto", metadata={
        "help": "auto (as the model's sentence-transformers pipeline: yes for runs and all-MiniLM), true, false."})
    max_length: int | None = field(default=None, metadata={"help": "Token limit; default: the model's."})
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward pass."})
    split: str = field(default="test", metadata={"help": "Evaluation split."})
    use_adapter: bool = field(default=True, metadata={"help": "Use the model's tc task-primary adapter."})

    def __post_init__(self):
        if self.n_experiments < 1:
            raise ConfigError("n_experiments must be >= 1")
        if self.max_iter < 1 or self.batch_size < 1:
            raise ConfigError(f"max_iter and batch_size must be >= 1, got {self.max_iter} and {self.batch_size}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"max_length (--tc-max-length) must be >= 8 or unset (the model's), "
                              f"got {self.max_length}")
        spl = str(self.samples_per_label)
        if spl not in ("auto", "full"):
            try:
                if int(spl) < 1:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"samples_per_label must be auto, full or a positive integer, got {spl!r}") from None
        self.samples_per_label = spl

    def samples_for(self, dataset_name: str) -> int | None:
        """None = full mode."""
        if self.samples_per_label == "full":
            return None
        if self.samples_per_label == "auto":
            return default_samples_per_label(dataset_name)
        return int(self.samples_per_label)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- protocol
def undersample(labels, samples_per_label: int, seed: int, idxs: list[int] | None = None):
    """mteb's ``AbsTaskClassification._undersample_data`` on a plain label list.

    Returns ``(idxs, selected)``: the shuffled index list (pass it to the next experiment, as mteb does) and the
    selected indices, in the order mteb selects them.
    """
    if idxs is None:
        idxs = list(range(len(labels)))
    rng_state = np.random.RandomState(seed)  # mteb: RandomState for backward compatibility with v1
    rng_state.shuffle(idxs)
    counter: dict = defaultdict(int)
    selected = []
    for i in idxs:
        label = labels[i]
        if counter[label] < samples_per_label:
            selected.append(i)
            counter[label] += 1
    return idxs, selected


def experiment_indices(labels, samples_per_label: int | None, n_experiments: int, seed: int) -> list[list[int]]:
    if samples_per_label is None:
        return [list(range(len(labels)))]
    out, idxs = [], None
    for _ in range(n_experiments):
        idxs, selected = undersample(labels, samples_per_label, seed, idxs)
        out.append(selected)
    return out


def make_classifier(cfg: TCConfig, seed: int, max_iter: int | None = None, check: bool = False):
    """The classifier of ``cfg``. ``check``: also fit a copy of a logistic regression on 2 points, since sklearn
    checks parameter values only in fit (once, where a command starts: not a traceback after the embedding, and
    not per experiment)."""
    if cfg.classifier == "logreg":
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression

        try:
            clf = LogisticRegression(max_iter=max_iter or cfg.max_iter, **cfg.classifier_args)
            if check:
                clone(clf).fit(np.array([[0.0], [1.0]]), [0, 1])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"LogisticRegression({cfg.classifier_args}, max_iter={max_iter or cfg.max_iter}): "
                              f"{str(exc).splitlines()[0]}") from None
    else:
        module, _, name = cfg.classifier.partition(":")
        try:
            clf = getattr(importlib.import_module(module), name)(**cfg.classifier_args)
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise ConfigError(f"classifier {cfg.classifier!r}: cannot build it ({exc})") from None
    if "random_state" in clf.get_params():  # mteb sets the task seed on the evaluator model
        clf.set_params(random_state=seed)
    return clf


def score(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "f1": float(f1_score(y_true, y_pred, average="macro"))}


def run_protocol(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray,
                 experiments: list[list[int]], cfg: TCConfig, seed: int, union: list[int] | None = None) -> dict:
    """Fit/score one classifier per experiment. ``train_emb`` rows follow ``union`` (the sorted union of all
    experiments' indices) when given, else the full train split."""
    from sklearn.exceptions import ConvergenceWarning

    pos = {j: p for p, j in enumerate(union)} if union is not None else None
    per = []
    for sel in experiments:
        rows = [pos[j] for j in sel] if pos is not None else sel
        clf = make_classifier(cfg, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(train_emb[rows], train_y[sel])
        per.append(score(test_y, clf.predict(test_emb)))
    acc = [p["accuracy"] for p in per]
    return {"accuracy": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
            "f1": float(np.mean([p["f1"] for p in per])), "n_experiments": len(per),
            "scores_per_experiment": per}


class Embedder:
    """Loads the model lazily (only when a text is not in the cache) and encodes with its tc adapter, on
    ``device`` (:func:`mtpf.device.resolve_device`; on CUDA in bf16 autocast and batches of at least 512)."""

    def __init__(self, model_ref, cfg: TCConfig, cache_dir=None, progress: bool = False, device="auto"):
        from mtpf.device import resolve_device

        self.model_ref, self.cfg, self.cache_dir, self.progress = model_ref, cfg, cache_dir, progress
        self.device = resolve_device(device)
        self._encoder = self._tokenizer = None
        self._max_length = None

    def _load(self):
        if self._encoder is None:
            from mtpf.downstream.models import load_tc_encoder, max_length_for
            from mtpf.encoder import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_ref.backbone)
            self._encoder = load_tc_encoder(self.model_ref, self.cfg.use_adapter).to(self.device)
            self._max_length = max_length_for(self.model_ref, self._tokenizer, self._encoder.config,
                                              self.cfg.max_length)

    @property
    def fingerprint(self) -> str:
        return self.model_ref.fingerprint("tc" if self.cfg.use_adapter else None)

    def embed_config(self) -> str:
        from mtpf.device import bf16_supported

        conf = {"pool": "mean", "normalize": self.model_ref.normalize, "max_length": self.cfg.max_length,
                "adapter": self.cfg.use_adapter and "tc" in self.model_ref.adapters}
        if self.model_ref.st_max_length:  # the model's own limit: same weights at 256 and 512 embed differently
            conf["st_max_length"] = self.model_ref.st_max_length
        if bf16_supported(self.device):  # bf16 embeddings are cached apart from fp32 ones
            conf["precision"] = "bf16"
        return json.dumps(conf)

    def cache(self, dataset_fp: str):
        from mtpf.downstream.embed import EmbeddingCache

        return EmbeddingCache(self.cache_dir, self.fingerprint, dataset_fp, self.embed_config())

    def compute(self, texts: list[str]):
        from mtpf.downstream.embed import encode_texts

        self._load()
        # a GPU wants large batches; length-sorting keeps their padding small
        batch_size = self.cfg.batch_size if self.device.type == "cpu" else max(self.cfg.batch_size, 512)
        return encode_texts(self._encoder, self._tokenizer, texts, self._max_length, batch_size,
                            self.model_ref.normalize, self.progress, desc=f"encode {self.model_ref.label}")


def evaluate_tc(embedder: Embedder, dataset, cfg: TCConfig, seed: int = 42) -> dict:
    """MTEB-protocol scores of one model on one classification dataset."""
    if cfg.split not in dataset.splits:
        from mtpf.data.io import DataError

        raise DataError(dataset.name, None, f"no {cfg.split} split to evaluate on (has {sorted(dataset.splits)})")
    train, test = dataset.splits["train"], dataset.splits[cfg.split]
    label_id = {name: i for i, name in enumerate(dataset.label_names)}
    train_y = np.array([label_id[x] for x in train.labels])
    test_y = np.array([label_id.get(x, -1) for x in test.labels])  # unseen labels (if allowed) are errors
    spl = cfg.samples_for(dataset.name)
    experiments = experiment_indices(train.labels, spl, cfg.n_experiments, seed)
    union = sorted(set().union(*experiments))
    cache = embedder.cache(dataset.fingerprint)
    train_emb = cache.get([train.texts[i] for i in union], embedder.compute)
    test_emb = cache.get(test.texts, embedder.compute)
    result = run_protocol(train_emb, train_y, test_emb, test_y, experiments, cfg, seed, union)
    result.update({"samples_per_label": spl if spl is not None else "full", "n_train_encoded": len(union),
                   "n_test": len(test), "split": cfg.split, "truncated_texts": cache.truncated_among([train.texts[i] for i in union] + test.texts),
                   "encoded_now": cache.encoded_now, "normalize": embedder.model_ref.normalize})
    return result


# ----------------------------------------------------------------------------------------------- app adapter
def adapt_tc(model_ref, dataset, output: str | os.PathLike, cfg: TCConfig, seed: int = 42, max_iter: int = 1000,
             cache_dir=None, progress: bool = True, device="auto") -> dict:
    """Logistic regression on the embeddings of the whole train split -> an app adapter folder (docs/formats.md)."""
    import torch
    from safetensors.torch import save_file
    from sklearn.exceptions import ConvergenceWarning

    # the classifier first: bad options fail before the texts are embedded
    clf = make_classifier(TCConfig(classifier="logreg", max_iter=max_iter, classifier_args=cfg.classifier_args),
                          seed, check=True)
    embedder = Embedder(model_ref, cfg, cache_dir, progress, device)
    train = dataset.splits["train"]
    label_id = {name: i for i, name in enumerate(dataset.label_names)}
    cache = embedder.cache(dataset.fingerprint)
    x = cache.get(train.texts, embedder.compute)
    y = np.array([label_id[v] for v in train.labels])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    coef, intercept = np.asarray(clf.coef_, dtype=np.float32), np.asarray(clf.intercept_, dtype=np.float32)
    if coef.shape[0] == 1:  # binary: softmax([-z/2, z/2]) == [1 - sigmoid(z), sigmoid(z)]
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    labels = [dataset.label_names[int(c)] for c in clf.classes_]
    metrics = {}
    for split in ("dev", "test"):
        if split in dataset.splits:
            s = dataset.splits[split]
            xs = cache.get(s.texts, embedder.compute)
            pred = (xs @ coef.T + intercept).argmax(1)
            metrics[split] = score([s_ for s_ in s.labels], [labels[p] for p in pred])
    embedder._load()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        app = Path(tmp) / "app"
        app.mkdir()
        save_file({"weight": torch.from_numpy(coef).contiguous(), "bias": torch.from_numpy(intercept).contiguous()},
                  str(app / "head.safetensors"))
        has_lora = cfg.use_adapter and "tc" in model_ref.adapters
        if has_lora:
            src = Path(model_ref.adapters["tc"])
            for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
                if (src / name).is_file():
                    shutil.copy2(src / name, app / name)
        meta = {"format": "mtpf-app/1", "task": "tc", "labels": labels,
                "backbone_fingerprint": model_ref.backbone_fingerprint(), "has_lora": bool(has_lora),
                "pooling": "mean", "normalize": bool(model_ref.normalize), "max_length": embedder._max_length,
                "metrics": metrics,
                "training": {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint,
                             "n_train": len(train), "classifier": "LogisticRegression", "max_iter": max_iter,
                             "seed": seed, "model": model_ref.ref}}
        (app / "mtpf_app.json").write_text(json.dumps(meta, indent=2))
        from mtpf.downstream.models import finish_app

        finish_app(app, model_ref, final_dir=out)  # relative base model + model card
        if out.exists():
            shutil.rmtree(out)
        os.replace(app, out)
    return meta
