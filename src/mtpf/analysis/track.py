"""``Tracker``: Findings 1 and 2 on any model, with the inputs prepared once.

Built once (reading the NER split, sampling sentences, drawing the perturbed variants, all seeded), then
``measure(model, tokenizer)`` costs only the forward passes; ``mtpf pretrain`` calls it at every evaluation
interval and appends ``{"step": N, **tracker.measure(...)}`` to ``RUN/logs/analysis.jsonl``.

Sentence selection (``sentences`` = S, default 2,000 as in the paper):
* Finding 1: a seeded sample of S sentences among those with at least one entity (sentences without
  entities have nothing to replace and are skipped), each with ``variants`` perturbed copies (Figure 5).
* Finding 2: a seeded sample of S sentences of the split (any sentence; those with fewer than 2 real tokens
  are skipped when averaging).
The entity pool is every entity of the split.
"""

from __future__ import annotations

import os
import random
import time

from torch import nn

from mtpf.analysis.perturb import entity_pool, make_variants, read_ner_sentences
from mtpf.analysis.similarity import (
    adapter_context,
    inference_mode,
    mean_pairwise_cosine,
    sentence_embedder,
    similarity_from_embeddings,
    token_embedder,
    unwrap_encoder,
)

DEFAULT_NER_DATASET = "conll2003"


class Tracker:
    def __init__(
        self,
        ner_dataset_dir: str | os.PathLike,
        sentences: int = 2000,
        variants: int = 4,
        seed: int = 0,
        batch_size: int = 64,
        max_length: int = 256,
        split: str = "test",
    ):
        if sentences < 1 or variants < 1 or batch_size < 1:
            from mtpf.config import ConfigError  # a ConfigError: the CLI reports it as one line

            raise ConfigError(f"--sentences, --variants and --batch-size must be >= 1, got {sentences}, "
                              f"{variants}, {batch_size}")
        self.batch_size, self.max_length = batch_size, max_length
        data = read_ner_sentences(ner_dataset_dir, split)
        self.source = data.path
        with_entities = [i for i, spans in enumerate(data.spans) if spans]
        if not with_entities:  # finding 1 perturbs entities: nothing to measure (it failed with an IndexError)
            from mtpf.data.io import DataError

            raise DataError(data.path, None, f"no {split} sentence has an entity; use an NER dataset with entities "
                            "(e.g. conll2003) for the analysis")
        f1 = sorted(
            random.Random(f"mtpf-track-f1:{seed}").sample(with_entities, min(sentences, len(with_entities)))
        )
        f2 = sorted(
            random.Random(f"mtpf-track-f2:{seed}").sample(range(len(data)), min(sentences, len(data)))
        )
        kept, perturbed = make_variants(data, f1, variants, seed, entity_pool(data))
        self.originals = [data.tokens[i] for i in kept]
        self.variants = [[p.tokens for p in vs] for vs in perturbed]
        # flattened once: originals then their variants, embedded in one length-sorted pass
        self._f1_texts = self.originals + [v for vs in self.variants for v in vs]
        self._f1_counts = [len(vs) for vs in self.variants]
        self.homogeneity_sentences = [data.tokens[i] for i in f2]
        self._cache: dict = {}
        self.info = {
            "source": self.source,
            "split_sentences": len(data),
            "with_entities": len(with_entities),
            "perturbed_sentences": len(self.originals),
            "variants": variants,
            "homogeneity_sentences": len(self.homogeneity_sentences),
            "seed": seed,
        }

    def measure(
        self, model: nn.Module, tokenizer, adapters: dict[str, str | None] | list[str] | None = None
    ) -> dict:
        """``{"perturbed_cosine", "token_homogeneity"}`` of the backbone (no adapter), plus
        ``"perturbed_cosine@KEY"``/``"token_homogeneity@KEY"`` with adapter ``adapters[KEY]`` active.

        ``model``: a bare HF encoder, a PEFT-wrapped one, or a wrapper of either (DDP, MultiTaskEncoder).
        Runs in eval mode under no_grad; every module's training flag is restored afterwards.
        """
        encoder = unwrap_encoder(model)
        if isinstance(adapters, (list, tuple)):
            adapters = {a: a for a in adapters}
        out: dict = {}
        by_adapter: dict = {}
        with inference_mode(encoder):
            by_adapter[None] = self._measure_one(encoder, tokenizer, None)
            out.update(by_adapter[None])
            for key, name in (adapters or {}).items():
                if name not in by_adapter:
                    by_adapter[name] = self._measure_one(encoder, tokenizer, name)
                out.update({f"{k}@{key}": v for k, v in by_adapter[name].items()})
        return out

    def _measure_one(self, encoder: nn.Module, tokenizer, adapter: str | None) -> dict:
        with adapter_context(encoder, adapter):  # fail early on an unknown adapter
            pass
        kw = {
            "adapter": adapter,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "cache": self._cache,
        }
        emb = sentence_embedder(encoder, tokenizer, **kw)(self._f1_texts)
        perturbed = similarity_from_embeddings(emb, self._f1_counts) if self._f1_counts else float("nan")
        tokens = token_embedder(encoder, tokenizer, **kw)(self.homogeneity_sentences)
        values = [v for v in map(mean_pairwise_cosine, tokens) if v is not None]
        homogeneity = sum(values) / len(values) if values else float("nan")
        return {"perturbed_cosine": float(perturbed), "token_homogeneity": float(homogeneity)}


def timed_measure(tracker: Tracker, model, tokenizer, adapters=None) -> tuple[dict, float]:
    t0 = time.perf_counter()
    result = tracker.measure(model, tokenizer, adapters)
    return result, time.perf_counter() - t0
