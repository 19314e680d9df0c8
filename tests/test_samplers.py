import collections
import tracemalloc

import numpy as np
import pytest
from scipy.stats import chisquare

from mtpf.data.io import DataError
from mtpf.data.samplers import (BucketBatchSampler, HierarchicalPairSampler, IndexPermutation,
                                source_probabilities)

BIG = 5_000_000


@pytest.fixture(scope="module")
def big_arrow(tmp_path_factory):
    """A generated 5M-row Arrow source (memory-mapped through datasets), texts 'a<i>' / 'p<i>'."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    ids = pa.array(np.arange(BIG)).cast(pa.string())
    table = pa.table({"anchor": pc.binary_join_element_wise("a", ids, ""),
                      "positive": pc.binary_join_element_wise("p", ids, "")})
    path = tmp_path_factory.mktemp("big") / "big.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100_000)
    del table, ids
    return Dataset.from_file(str(path))


def small(name, n, dup_every=None):
    from datasets import Dataset

    anchors = [f"{name}{i % dup_every if dup_every else i}" for i in range(n)]
    return Dataset.from_dict({"anchor": anchors, "positive": [f"{name}p{i}" for i in range(n)]})


class Texts:
    """keys(): the texts of the candidate rows, counting how many rows were read."""

    def __init__(self, sources):
        self.sources, self.rows_read = sources, 0

    def __call__(self, name, rows):
        self.rows_read += len(rows)
        got = self.sources[name][rows.tolist()]
        return list(zip(got["anchor"], got["positive"]))


def sampler(sources, batch, seed=0, **kw):
    return HierarchicalPairSampler({n: len(d) for n, d in sources.items()}, batch, seed, **kw)


def test_batches_from_one_source_no_duplicate_text_on_5m_rows(big_arrow):
    sources = {"big": big_arrow, "mid": small("m", 3000), "dup": small("d", 1000, dup_every=300)}
    keys = Texts(sources)
    s = sampler(sources, 64, seed=3, weights="uniform")
    for _ in range(60):
        name, rows = s.next_batch(keys)
        assert len(rows) == 64
        got = sources[name][rows]
        texts = got["anchor"] + got["positive"]
        assert len(set(texts)) == len(texts)
        prefix = {"big": ("a", "p"), "mid": ("m",), "dup": ("d",)}[name]
        assert all(t.startswith(prefix) for t in texts)  # every pair from the chosen source


@pytest.mark.parametrize("weights,kw,expected", [
    ("proportional", {}, [6000, 3000, 1000]),
    ("uniform", {}, [1, 1, 1]),
    ({"big": 1, "mid": 3, "dup": 0}, {}, [1, 3, 0]),
    ("proportional", {"temperature": 2.0}, [6000 ** 0.5, 3000 ** 0.5, 1000 ** 0.5]),
    ("proportional", {"size_cap": 2000}, [2000, 2000, 1000]),
])
def test_source_frequencies_follow_weights(weights, kw, expected):
    sizes = {"big": 6000, "mid": 3000, "dup": 1000}
    s = HierarchicalPairSampler(sizes, 8, seed=0, weights=weights, **kw)
    n = 3000
    counts = collections.Counter(s.names[s.plan(k)[0]] for k in range(n))
    observed = np.array([counts[k] for k in sizes], dtype=float)
    exp = np.array(expected, dtype=float) / sum(expected) * n
    keep = exp > 0
    assert observed[~keep].sum() == 0
    assert chisquare(observed[keep], exp[keep]).pvalue > 0.001


def test_deterministic_resumable_and_a_pure_function_of_k(big_arrow):
    sources = {"big": big_arrow, "mid": small("m", 3000)}
    a, b = sampler(sources, 32, seed=5), sampler(sources, 32, seed=5)
    first = [a.next_batch(Texts(sources)) for _ in range(20)]
    assert first == [b.next_batch(Texts(sources)) for _ in range(20)]
    state = a.state_dict()
    tail = [a.next_batch(Texts(sources)) for _ in range(20)]
    c = sampler(sources, 32, seed=5)
    c.load_state_dict(state)
    assert [c.next_batch(Texts(sources)) for _ in range(20)] == tail
    # what DataLoader workers rely on: any batch can be built alone, in any order
    d = sampler(sources, 32, seed=5)
    assert [d.batch(k, Texts(sources)) for k in (27, 3, 39)] == [tail[7], first[3], tail[19]]
    assert sampler(sources, 32, seed=6).batch(0, Texts(sources)) != first[0]


def test_per_step_cost_does_not_grow_with_the_source(big_arrow):
    """O(batch) work per step: rows read and memory allocated per batch, 10k rows vs 5M rows (ratios; no
    wall-clock, bench/bench_scale.py times it)."""
    cost = {}
    for label, ds in (("10k", big_arrow.select(range(10_000))), ("5M", big_arrow)):
        sources = {"s": ds}
        s = sampler(sources, 256, seed=1)
        keys = Texts(sources)
        s.next_batch(keys)  # first batch: lazy set-up
        keys.rows_read = 0
        tracemalloc.start()
        for _ in range(10):
            s.next_batch(keys)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        cost[label] = (keys.rows_read / 10, peak)
    assert cost["5M"][0] == cost["10k"][0] == 256  # no duplicates here: exactly one batch of rows read
    assert cost["5M"][1] < 2 * cost["10k"][1] + 64_000  # a permutation of 5M rows alone would be 40 MB


def test_pairs_cover_source_once_per_epoch_and_permutation_is_a_bijection():
    sources = {"only": small("o", 64)}
    s = sampler(sources, 16, seed=1)
    seen = sorted(i for _ in range(4) for i in s.next_batch(Texts(sources))[1])
    assert seen == list(range(64))
    for n in (1, 2, 7, 64, 1000, 4097):
        perm = IndexPermutation(n, [3, n])(np.arange(n))
        assert sorted(perm.tolist()) == list(range(n))
    assert IndexPermutation(1000, [1])(np.arange(1000)).tolist() != IndexPermutation(1000, [2])(np.arange(1000)).tolist()


def test_duplicates_replaced_or_named():
    sources = {"dup": small("d", 100, dup_every=40)}  # only 40 distinct anchors
    keys = Texts(sources)
    s = sampler(sources, 16, seed=0)
    for _ in range(20):
        rows = s.next_batch(keys)[1]
        assert len({sources["dup"][r]["anchor"] for r in rows}) == 16
    with pytest.raises(DataError, match=r"pair source dup: cannot fill a batch of 64 pairs without repeating"):
        sampler(sources, 64).next_batch(keys)


def test_bad_weights_and_small_source():
    with pytest.raises(ValueError, match="unknown sources"):
        source_probabilities(["a"], [10], {"nope": 1})
    with pytest.raises(ValueError, match="pair_temperature must be > 0"):
        source_probabilities(["a"], [10], temperature=0)
    with pytest.raises(DataError, match=r"pair source tiny: only 10 pairs, fewer than the batch size 64"):
        HierarchicalPairSampler({"tiny": 10}, 64)


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
    nxt = [s.next_batch() for _ in range(70)]  # crosses into the next epoch
    t = BucketBatchSampler(lengths, 32, seed=0, bucket_factor=20)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(70)] == nxt
    assert BucketBatchSampler(lengths, 32, seed=0, bucket_factor=20).batch(62 + 69) == nxt[69]


def test_pad_batch_pads_to_a_multiple_of_8():
    from mtpf.data.samplers import pad_batch

    out = pad_batch([[5, 6, 7], [1]], 0, [[1, -100, 2], [3]], multiple_of=8)
    assert out["input_ids"].tolist() == [[5, 6, 7] + [0] * 5, [1] + [0] * 7]
    assert out["attention_mask"].sum(1).tolist() == [3, 1]
    assert out["labels"][0, :4].tolist() == [1, -100, 2, -100]
    assert pad_batch([[5, 6, 7], [1]], 0)["input_ids"].shape == (2, 3)
