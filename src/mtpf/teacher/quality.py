"""Do a teacher's clusters carry entity information? Cluster ids scored against gold NER types.

Gold type of a word = its IOB2 tag without the ``B-``/``I-`` prefix (``O`` stays ``O``). Two views:

* ``entities``: only words inside a gold entity (``O`` words excluded) -- do PER, LOC, ORG, MISC words land
  in different clusters?
* ``all``: every word, ``O`` as its own class -- are entity words separated from the rest?

Purity = share of words whose cluster's majority gold type is their own type. V-measure (sklearn) is the
harmonic mean of homogeneity and completeness. A random labelling with the same cluster sizes is scored
alongside as the floor.
"""
from __future__ import annotations

from collections import Counter

import numpy as np


def purity(gold: list, clusters: list) -> float:
    by_cluster: dict = {}
    for g, c in zip(gold, clusters):
        by_cluster.setdefault(c, Counter())[g] += 1
    return sum(cnt.most_common(1)[0][1] for cnt in by_cluster.values()) / max(len(gold), 1)


def cluster_scores(gold: list, clusters: list, seed: int = 0) -> dict:
    from sklearn.metrics import homogeneity_completeness_v_measure

    h, c, v = homogeneity_completeness_v_measure(gold, clusters)
    shuffled = np.random.default_rng(seed).permutation(np.asarray(clusters))
    _, _, v_rand = homogeneity_completeness_v_measure(gold, shuffled)
    return {"words": len(gold), "purity": purity(gold, clusters), "homogeneity": h, "completeness": c,
            "v_measure": v, "purity_random": purity(gold, shuffled.tolist()), "v_measure_random": v_rand,
            "majority_baseline": Counter(gold).most_common(1)[0][1] / max(len(gold), 1)}


def entity_type(tag: str) -> str:
    return tag.split("-", 1)[1] if tag[:2] in ("B-", "I-", "E-", "S-") else tag


def score_labels(tags: list[list[str]], labels: list[list[int]], seed: int = 0) -> dict:
    """Scores of predicted cluster ids against gold IOB tags, in both views."""
    gold, pred = [], []
    for t, lab in zip(tags, labels):
        if len(t) != len(lab):
            raise ValueError("tags and labels differ in length")
        gold.extend(entity_type(x) for x in t)
        pred.extend(lab)
    ent = [i for i, g in enumerate(gold) if g != "O"]
    return {
        "entities": cluster_scores([gold[i] for i in ent], [pred[i] for i in ent], seed),
        "all": cluster_scores(gold, pred, seed),
    }
