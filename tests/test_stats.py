"""Intervals over seeds (mtpf.downstream.stats) and how the tables show them."""
import math

import pytest

from mtpf.downstream import stats


def test_t_interval_of_fixed_numbers():
    # values 1..5: mean 3, sample sd sqrt(2.5), t(0.975, 4) = 2.7764451
    iv = stats.interval([1, 2, 3, 4, 5])
    assert iv.mean == 3 and iv.n == 5
    assert iv.half == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert iv.format() == "3.0 ± 2.0"


def test_table_fallback_matches_scipy(monkeypatch):
    import builtins

    with_scipy = [stats.t_quantile(df) for df in (1, 2, 9, 30)]
    real_import = builtins.__import__

    def no_scipy(name, *args, **kw):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    table = [stats.t_quantile(df) for df in (1, 2, 9, 30)]
    assert table == pytest.approx(with_scipy, abs=1e-3)


def test_single_value_has_no_interval():
    iv = stats.interval([76.2])
    assert iv.half is None and iv.n == 1 and iv.format() == "76.2" and not iv.excludes_zero()


def test_paired_difference_of_identical_inputs_has_zero_width():
    a = {42: 70.1, 43: 71.9, 44: 69.0}
    iv = stats.paired(a, dict(a))
    assert iv.mean == 0 and iv.half == 0 and iv.n == 3


def test_paired_difference_uses_only_common_seeds_and_removes_the_seed_effect():
    # b = a + 1 on every seed: the seed effect is large, the paired difference exactly 1 with zero width
    a = {42: 50.0, 43: 60.0, 44: 70.0, 45: 99.0}
    b = {42: 51.0, 43: 61.0, 44: 71.0}
    iv = stats.paired(b, a)
    assert (iv.mean, iv.half, iv.n) == (1.0, 0.0, 3) and iv.excludes_zero()
    assert stats.paired({1: 1.0}, {2: 1.0}) is None


# ------------------------------------------------------------------------------------- tables with seeds
def _cell(model, task, ds, score, seed, frac=1.0):
    metric = "f1" if task == "ner" else "accuracy"
    return {"key": f"{model}{task}{ds}{frac}{seed}", "model": model, "task": task, "dataset": ds,
            "fraction": frac, "seed": seed, "main_score": score, "metrics": {metric: score}}


def _cells():
    cells = []
    for seed, shift in ((42, 0.0), (43, 0.02), (44, -0.01)):  # a seed effect shared by both models
        cells += [_cell("Base model", "ner", "conll2003", 0.60 + shift, seed),
                  _cell("Base model", "tc", "banking77", 0.70 + shift, seed),
                  _cell("MTPF-TPL", "ner", "conll2003", 0.62 + shift, seed),  # +2.0 on every seed
                  _cell("MTPF-TPL", "tc", "banking77", 0.70 + shift + (0.01 if seed == 43 else -0.01), seed)]
    return cells


def test_tables_show_mean_and_half_width_with_several_seeds():
    from mtpf.downstream.tables import build_tables

    summary = build_tables(_cells(), ["Base model", "MTPF-TPL"], "Base model")[0]
    ner = stats.interval([60.0, 62.0, 59.0])
    assert summary.rows[0][1] == ner.format()
    tpl_ner = stats.interval([62.0, 64.0, 61.0])
    assert summary.rows[1][1] == f"{tpl_ner.format()} (+2.0)"


def test_paired_table_reads_each_claim_from_its_interval():
    from mtpf.downstream.tables import Claim, paired_table

    claims = [Claim("TPL helps NER", "MTPF-TPL", "Base model", "ner", +1),
              Claim("TPL hurts NER", "MTPF-TPL", "Base model", "ner", -1),
              Claim("TPL helps TC", "MTPF-TPL", "Base model", "tc", +1),
              Claim("absent model", "PF for NER", "Base model", "tc", -1)]
    rows = paired_table(_cells(), claims).rows
    assert rows[0][4] == "+2.0 ± 0.0" and rows[0][5] == "3" and rows[0][6] == "holds"
    assert rows[1][6].startswith("contradicted")
    assert rows[2][6].startswith("not resolved")
    assert rows[3][6] == "not measured"
    one_seed = [c for c in _cells() if c["seed"] == 42]
    assert paired_table(one_seed, claims[:1]).rows[0][4:] == ["+2.0", "1", "one seed: no interval"]


def test_tables_with_an_ner_order_but_no_ner_cells_yet():
    """A reproduction whose NER cells are not in yet (only TC finished) still renders its tables."""
    from mtpf.downstream.tables import build_tables

    cells = [{"key": "k", "task": "tc", "model": "Base", "dataset": "banking77", "fraction": 1.0, "seed": 1,
              "main_score": 0.5, "metrics": {"accuracy": 0.5}}]
    tables = build_tables(cells, ["Base"], "Base", ["conll2003"], ["banking77"])
    assert any(t.title.startswith("TC sub-tasks") for t in tables)


def test_summary_means_and_deltas_use_the_seeds_every_row_has():
    """Mid-reproduction a model may have a seed on one dataset only. Every number of the table (means, intervals,
    deltas) then comes from the seeds every row has on every dataset, so a delta agrees with the means beside it;
    the title says which seed waits."""
    from mtpf.downstream.tables import build_tables

    def cell(model, ds, seed, score):
        return {"key": f"{model}{ds}{seed}", "task": "ner", "model": model, "dataset": ds, "fraction": 1.0,
                "seed": seed, "main_score": score / 100, "metrics": {"f1": score / 100}}

    cells = [cell("Base", "A", 42, 80), cell("Base", "B", 42, 70), cell("Base", "A", 43, 84), cell("Base", "B", 43, 74),
             cell("M", "A", 42, 82), cell("M", "B", 42, 70), cell("M", "A", 43, 60)]  # M's seed 43: A only so far
    summary, per_dataset = build_tables(cells, ["Base", "M"], "Base", ["A", "B"], [])[:2]
    rows = {r[0]: r for r in summary.rows}
    assert rows["Base"][1] == "75.0" and rows["M"][1] == "76.0+1.0"  # seed 42 of both: 75 and 76
    assert "(seed 42: seed 43 left out until every row has it)" in summary.title
    assert [r[1:] for r in per_dataset.rows] == [["80.0", "70.0", "75.0"], ["82.0", "70.0", "76.0"]]
    complete = cells + [cell("M", "B", 43, 70)]  # M's seed 43 done: both seeds, everywhere
    rows = {r[0]: r for r in build_tables(complete, ["Base", "M"], "Base", ["A", "B"], [])[0].rows}
    assert rows["Base"][1] == "77.0 ± 25.4" and rows["M"][1].startswith("70.5 ± ") and rows["M"][1].endswith("(-6.5)")


def test_rounded_zero_differences_print_one_way():
    from mtpf.downstream.tables import _delta, signed

    assert signed(-0.003) == signed(0.004) == "+0.0" and signed(-0.06) == "-0.1"
    assert _delta(63.0, -0.025, False) == "63.0+0.0"
    assert stats.Interval(-0.0029, 0.5, 3).format(signed=True) == "+0.0 ± 0.5"


def test_match_needs_a_narrow_interval_not_just_one_that_contains_zero():
    from mtpf.downstream.tables import verdict

    wide = stats.interval([-6, 0.5, -4])  # -3.2 ± 8.3: contains 0, says nothing about a match
    assert verdict(wide, 0).startswith("not resolved")
    narrow = stats.interval([-0.2, 0.1, 0.3])
    assert verdict(narrow, 0).startswith("matches")
    assert verdict(stats.interval([-2.0, -2.1, -1.9]), 0) == "contradicted (worse)"
    small = stats.interval([-0.3, -0.25, -0.2])  # -0.25 ± 0.12: resolved, but within the margin: a match
    assert verdict(small, 0).startswith("matches")


def test_t_quantile_without_scipy_beyond_the_table(monkeypatch):
    import builtins

    exact = {df: stats.t_quantile(df) for df in (31, 40, 60, 200)}
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("scipy") else real_import(name, *a, **k))
    assert [stats.t_quantile(df) for df in exact] == pytest.approx(list(exact.values()), abs=1e-3)


def test_a_narrow_decided_difference_prints_a_second_decimal():
    """+0.01 ± 0.006 excludes 0 (a claim 'holds'); at one decimal it would print "+0.0 ± 0.0", which reads as no
    difference. A wider or exactly-zero half-width keeps one decimal."""
    from mtpf.downstream.tables import Claim, paired_table

    narrow = stats.interval([0.0086, 0.0138, 0.0116])
    assert narrow.excludes_zero() and narrow.format_difference() == "+0.01 ± 0.01"
    assert stats.interval([-0.03, -0.00, -0.03]).format_difference() == "-0.02 ± 0.04"
    assert stats.Interval(0.19, 0.33, 3).format_difference() == "+0.2 ± 0.3"
    assert stats.Interval(2.0, 0.0, 3).format_difference() == "+2.0 ± 0.0"
    assert stats.Interval(-0.001, 0.02, 3).format_difference() == "+0.00 ± 0.02"
    cells = [c for c in _cells() if c["model"] == "Base model"]
    shifted = [dict(c, model="B", key=c["key"] + "b", main_score=c["main_score"] + d / 100)
               for c, d in zip(cells, [0.01, 0.02, 0.012] * len(cells))]
    row = paired_table(cells + shifted, [Claim("B above", "B", "Base model", cells[0]["task"], +1)]).rows[0]
    assert row[6] == "holds" and row[4].startswith("+0.01 ± ")
