import collections

import numpy as np
import pytest
from scipy.stats import chisquare

from mtpf.data.pairs import PairSource
from mtpf.data.samplers import BucketBatchSampler, HierarchicalPairSampler


def sources():
    return [
        PairSource("big", [f"b{i}" for i in range(600)], [f"bp{i}" for i in range(600)]),
        PairSource("mid", [f"m{i}" for i in range(300)], [f"mp{i}" for i in range(300)]),
        # duplicates: the same anchor text appears in many pairs
        PairSource("dup", [f"d{i % 40}" for i in range(100)], [f"dp{i}" for i in range(100)]),
    ]


def test_every_batch_from_one_source_without_duplicate_texts():
    s = HierarchicalPairSampler(sources(), batch_size=16, seed=3)
    by_name = {src.name: src for src in sources()}
    for _ in range(200):
        name, idx = s.next_batch()
        assert len(idx) == 16
        src = by_name[name]
        texts = [src.anchors[i] for i in idx] + [src.positives[i] for i in idx]
        assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("weights,expected", [
    ("proportional", [600, 300, 100]),
    ("uniform", [1, 1, 1]),
    ({"big": 1, "mid": 3, "dup": 0}, [1, 3, 0]),
])
def test_source_frequencies_follow_weights(weights, expected):
    s = HierarchicalPairSampler(sources(), batch_size=8, seed=0, weights=weights)
    n = 3000
    counts = collections.Counter(s.next_batch()[0] for _ in range(n))
    observed = np.array([counts[k] for k in ("big", "mid", "dup")], dtype=float)
    exp = np.array(expected, dtype=float) / sum(expected) * n
    keep = exp > 0
    assert observed[~keep].sum() == 0
    assert chisquare(observed[keep], exp[keep]).pvalue > 0.001


def test_deterministic_and_resumable():
    a = HierarchicalPairSampler(sources(), 8, seed=5)
    b = HierarchicalPairSampler(sources(), 8, seed=5)
    first = [a.next_batch() for _ in range(30)]
    assert first == [b.next_batch() for _ in range(30)]
    state = a.state_dict()
    tail = [a.next_batch() for _ in range(30)]
    c = HierarchicalPairSampler(sources(), 8, seed=5)
    c.load_state_dict(state)
    assert [c.next_batch() for _ in range(30)] == tail
    assert [HierarchicalPairSampler(sources(), 8, seed=6).next_batch() for _ in range(1)] != first[:1]


def test_pairs_cover_source_once_per_epoch():
    src = [PairSource("only", [f"a{i}" for i in range(64)], [f"p{i}" for i in range(64)])]
    s = HierarchicalPairSampler(src, 16, seed=1)
    seen = sorted(i for _ in range(4) for i in s.next_batch()[1])
    assert seen == list(range(64))


def test_bad_weights_and_small_source():
    with pytest.raises(ValueError, match="unknown sources"):
        HierarchicalPairSampler(sources(), 8, weights={"nope": 1})
    from mtpf.data.io import DataError

    with pytest.raises(DataError, match=r"pair source dup: only 40 distinct texts .*fewer than the batch size 64"):
        HierarchicalPairSampler(sources(), 64)  # 'dup' has only 40 distinct anchors


def test_bucket_sampler_groups_lengths_and_resumes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 100, size=2000)
    s = BucketBatchSampler(lengths, 32, seed=0, bucket_factor=20)
    batches = [s.next_batch() for _ in range(62)]
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([np.ptp(lengths[rng.choice(2000, 32, replace=False)]) for _ in range(62)])
    assert spread < random_spread / 4
    assert sorted(i for b in batches for i in b) == sorted(set(i for b in batches for i in b))  # no repeats
    state = s.state_dict()
    nxt = [s.next_batch() for _ in range(5)]
    t = BucketBatchSampler(lengths, 32, seed=0, bucket_factor=20)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(5)] == nxt


def test_pair_source_fingerprint_identifies_content_and_order():
    from mtpf.data.pairs import source_fingerprint

    a = PairSource("x", ["a", "b"], ["c", "d"])
    assert source_fingerprint(a) == source_fingerprint(PairSource("renamed", ["a", "b"], ["c", "d"]))
    assert source_fingerprint(a) != source_fingerprint(PairSource("x", ["b", "a"], ["d", "c"]))
    assert source_fingerprint(a) != source_fingerprint(PairSource("x", ["ab", ""], ["c", "d"]))
