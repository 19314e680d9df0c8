"""Tables in the paper's layout and a bar chart, from the cells of ``results.json``.

* Summary (Tables 1-3): Model | NER (n DS) | TC (m DS) | Average, each with +/- against the base row;
  NER = mean test F1 over datasets, TC = mean accuracy, Average = mean of the two (fraction 1.0).
* NER per dataset (Tables 5, 7, 9), TC per dataset (Tables 6, 8, 10), data scarcity (Table 11).
* Details: NER precision/recall/F1 and model selection; TC accuracy +/- std and macro-F1.

Scores are percentages with one decimal, averaged over seeds; with several seeds every score reads
``mean ± half-width`` of its 95 % t interval over seeds (a family average: the interval of the per-seed averages
over datasets). One seed prints the plain mean. ``paired_table`` states claims as paired differences over matched
seeds (``mtpf.downstream.stats``). ``tables.csv`` holds the same tables one after the other, each introduced by a
``# title`` line and its header row, separated by blank lines.
"""
from __future__ import annotations

import csv
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mtpf.downstream.stats import Interval, interval, paired

ABBREV = {
    "conll2003": "CoNLL", "conll": "CoNLL", "ontonotes5": "OntoNotes5", "mit_restaurant": "MIT Restaurant",
    "bionlp": "BioNLP", "crossner": "CrossNER",
    "banking77": "Bank.", "emotion": "Emo.", "amazon_counterfactual_en": "ACF", "amazon_counterfactual": "ACF",
    "massive_intent": "MI", "tweet_sentiment_extraction": "TS", "toxic_chat": "TC", "ag_news": "News",
    "patent": "Patent", "financial_phrasebank": "FPB", "frenk_en": "FE", "imdb": "Imdb", "arxiv": "Arxiv",
    "dbpedia": "DB.", "tweet_topic_single": "TTS.", "yelp_review_full": "YRF", "toxic_conversations": "TCon.",
}


def abbrev(name: str) -> str:
    return ABBREV.get(name.lower(), name)


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    numeric_from: int = 1  # first column holding scores (for bolding the best)
    group_col: int | None = None  # rows with the same value here are compared among themselves (Table 11)


def aggregate(cells: list[dict]) -> dict:
    """(model, task, dataset, fraction) -> mean/std over seeds of the main score (in %) and extra metrics."""
    groups = defaultdict(list)
    for c in cells:
        groups[(c["model"], c["task"], c["dataset"], float(c["fraction"]))].append(c)
    out = {}
    for key, cs in groups.items():
        cs = list({c.get("seed", 42): c for c in cs}.values())  # one cell per seed (the last given): n = seeds
        scores = [100 * c["main_score"] for c in cs]
        iv = interval(scores)
        entry = {"mean": iv.mean, "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
                 "half": iv.half, "n": len(scores), "cells": cs,
                 "by_seed": {c.get("seed", 42): 100 * c["main_score"] for c in cs}}
        for m in ("precision", "recall", "f1", "accuracy", "accuracy_std"):
            vals = [100 * c["metrics"][m] for c in cs if m in c.get("metrics", {})]
            if vals:
                entry[m] = statistics.fmean(vals)
        out[key] = entry
    return out


def common_seeds(cells: list[dict], models=None) -> tuple[list[dict], list, list]:
    """The cells of the seeds that every measured (model, task, dataset, share) of ``models`` has.

    While a reproduction is under way one model may have a seed the others do not have yet. A row averaged over
    more seeds than its neighbours (or than its paired delta) then differs from them by the seed, not the model:
    a mean can be bolded over a better one and a delta disagree in sign with the two means printed beside it.
    So a table uses the seeds complete everywhere in it. ``models``: whose cells count (default all); cells of
    other models and runtime-row cells (measured at one seed by design) are kept as they are. Returns (cells, seeds
    used, seeds left out); with no seed common to all, the cells unchanged and nothing left out.
    """
    def counted(c):
        return (models is None or c["model"] in models) and "runtime" not in c

    groups = defaultdict(set)
    for c in cells:
        if counted(c):
            groups[(c["model"], c["task"], c["dataset"], float(c["fraction"]))].add(c.get("seed", 42))
    if not groups:
        return cells, [], []
    every = set().union(*groups.values())
    common = set.intersection(*groups.values())
    if not common or common == every:
        return cells, sorted(every), []
    return ([c for c in cells if not counted(c) or c.get("seed", 42) in common], sorted(common),
            sorted(every - common))


def seeds_text(seeds) -> str:
    """``seed 42`` / ``seeds 43, 44``."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def signed(x: float, digits: int = 1) -> str:
    """A difference with its sign; one that rounds to zero prints as ``+0.0`` (never ``-0.0``)."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def _fmt(v: float | None, half: float | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}" if half is None else f"{v:.1f} ± {half:.1f}"


def _delta(v: float | None, delta: float | None, is_base: bool, half: float | None = None) -> str:
    """``60.8+1.7`` with one seed, ``60.8 ± 0.4 (+1.7)`` with an interval (``delta``: the difference to the base)."""
    if v is None or is_base or delta is None:
        return _fmt(v, half)
    return f"{v:.1f}{signed(delta)}" if half is None else f"{_fmt(v, half)} ({signed(delta)})"


def _seed_mean(by_seed: dict, fallback: float | None) -> float | None:
    """A family's score: the mean over the seeds complete on all its datasets (the seeds its interval uses), so a
    seed still running on one dataset does not pull the mean and not the interval; else ``fallback``."""
    return statistics.fmean(by_seed.values()) if by_seed else fallback


def _paired_delta(by_seed: dict, base_by_seed: dict, v: float | None, base: float | None) -> float | None:
    """Difference to the base over the seeds both have (paired, as the claims table); unpaired only when they
    share no complete seed."""
    common = set(by_seed) & set(base_by_seed)
    if common:
        return statistics.fmean(by_seed[s] - base_by_seed[s] for s in common)
    return None if v is None or base is None else v - base


def family_by_seed(agg: dict, model: str, task: str, datasets: list[str], frac: float = 1.0) -> dict:
    """{seed: mean over ``datasets``} for the seeds measured on every one of them."""
    entries = [agg.get((model, task, d, frac)) for d in datasets]
    if not datasets or any(e is None for e in entries):
        return {}
    seeds = set.intersection(*(set(e["by_seed"]) for e in entries))
    return {s: statistics.fmean(e["by_seed"][s] for e in entries) for s in sorted(seeds)}


def _mean_or_none(vals):
    return statistics.fmean(vals) if vals and all(v is not None for v in vals) else None


def build_tables(cells: list[dict], models: list[str], base: str, ner_order: list[str] | None = None,
                 tc_order: list[str] | None = None) -> list[Table]:
    every = list(dict.fromkeys([*models, base]))
    cells, used, left_out = common_seeds(cells, every)  # every row of every table over the same seeds
    agg = aggregate(cells)
    ner_ds = ner_order or sorted({c["dataset"] for c in cells if c["task"] == "ner"})
    tc_ds = tc_order or sorted({c["dataset"] for c in cells if c["task"] == "tc"})
    fractions = sorted({float(c["fraction"]) for c in cells if c["task"] == "ner"}, reverse=True)

    def get(model, task, ds, frac=1.0):
        e = agg.get((model, task, ds, frac))
        return None if e is None else e["mean"]

    def cell(model, task, ds, frac=1.0):
        e = agg.get((model, task, ds, frac))
        return "—" if e is None else _fmt(e["mean"], e["half"])

    tables = []
    # ---------------- summary (Tables 1-3)
    fam = {(m, t): family_by_seed(agg, m, t, ds) for m in every for t, ds in (("ner", ner_ds), ("tc", tc_ds))}

    def fam_half(m, task):  # the family average's interval, from the same seeds as its mean
        return interval(fam[m, task].values()).half if fam[m, task] else None
    ner_avg = {m: _seed_mean(fam[m, "ner"], _mean_or_none([get(m, "ner", d) for d in ner_ds])) if ner_ds else None
               for m in every}
    tc_avg = {m: _seed_mean(fam[m, "tc"], _mean_or_none([get(m, "tc", d) for d in tc_ds])) if tc_ds else None
              for m in every}

    def overall_by_seed(m):  # per seed, the mean of the family averages
        fams = [fam[m, t] for t, ds in (("ner", ner_ds), ("tc", tc_ds)) if ds]
        seeds = set.intersection(*(set(f) for f in fams)) if fams and all(fams) else set()
        return {s: statistics.fmean(f[s] for f in fams) for s in sorted(seeds)}

    def overall(m):
        parts = [x for x, ds in ((ner_avg[m], ner_ds), (tc_avg[m], tc_ds)) if ds]
        return _seed_mean(overall_by_seed(m), _mean_or_none(parts))

    def overall_half(m):  # interval of the per-seed mean of the family averages
        seeds = overall_by_seed(m)
        return interval(seeds.values()).half if seeds else None

    def delta(m, task):
        if base not in models:
            return None
        if task == "all":
            return _paired_delta(overall_by_seed(m), overall_by_seed(base), overall(m), overall(base))
        avg = ner_avg if task == "ner" else tc_avg
        return _paired_delta(fam[m, task], fam[base, task], avg[m], avg[base])

    header = ["Model"]
    if ner_ds:
        header.append(f"NER ({len(ner_ds)} DS)")
    if tc_ds:
        header.append(f"TC ({len(tc_ds)} DS)")
    header.append("Average")
    rows = []
    for m in models:
        row = [m]
        if ner_ds:
            row.append(_delta(ner_avg[m], delta(m, "ner"), m == base, fam_half(m, "ner")))
        if tc_ds:
            row.append(_delta(tc_avg[m], delta(m, "tc"), m == base, fam_half(m, "tc")))
        row.append(_delta(overall(m), delta(m, "all"), m == base, overall_half(m)))
        rows.append(row)
    note = (f" ({seeds_text(used)}: {seeds_text(left_out)} left out until every row has "
            f"{'them' if len(left_out) > 1 else 'it'})") if left_out else ""
    tables.append(Table("Summary: NER = average test F1, TC = average accuracy (MTEB protocol); "
                        f"+/- against '{base}'{note}", header, rows))
    # ---------------- per dataset (Tables 5-10)
    if ner_ds and 1.0 in fractions:
        rows = [[m] + [cell(m, "ner", d) for d in ner_ds] + [_fmt(ner_avg[m], fam_half(m, "ner"))]
                for m in models]
        tables.append(Table("NER sub-tasks: test F1 (entity-level micro, seqeval)", ["Model"] +
                            [abbrev(d) for d in ner_ds] + ["Average"], rows))
    if tc_ds:
        rows = [[m] + [cell(m, "tc", d) for d in tc_ds] + [_fmt(tc_avg[m], fam_half(m, "tc"))]
                for m in models]
        tables.append(Table("TC sub-tasks: accuracy (MTEB protocol)", ["Model"] + [abbrev(d) for d in tc_ds] +
                            ["Avg."], rows))
    # ---------------- data scarcity (Table 11)
    if ner_ds and fractions and (len(fractions) > 1 or fractions[0] < 1):
        rows = []
        for f in fractions:
            for m in models:
                vals = [get(m, "ner", d, f) for d in ner_ds]
                by_seed = family_by_seed(agg, m, "ner", ner_ds, f)  # mean and interval from the same seeds
                rows.append([f"{100 * f:g}%", m] + [cell(m, "ner", d, f) for d in ner_ds] +
                            [_fmt(_seed_mean(by_seed, _mean_or_none(vals)),
                                  interval(by_seed.values()).half if by_seed else None)])
        tables.append(Table("NER under data scarcity: test F1 by share of the train split", ["Data Portion",
                            "Approach"] + [abbrev(d) for d in ner_ds] + ["Average"], rows, numeric_from=2,
                            group_col=0))
    # ---------------- details
    if ner_ds:
        rows = []
        for f in fractions:
            for d in ner_ds:
                for m in models:
                    e = agg.get((m, "ner", d, f))
                    if e is None:
                        continue
                    sel = sorted({c.get("selection", "?") for c in e["cells"]})
                    rows.append([m, d, f"{f:g}", _fmt(e.get("precision")), _fmt(e.get("recall")),
                                 _fmt(e["mean"], e["half"]),
                                 _fmt(e["std"]), str(e["n"]), "/".join(sel)])
        tables.append(Table("NER details: test precision / recall / F1 (mean over seeds), model selection",
                            ["Model", "Dataset", "Fraction", "P", "R", "F1", "F1 std", "Seeds", "Selected on"],
                            rows, numeric_from=99))
    if tc_ds:
        rows = []
        for d in tc_ds:
            for m in models:
                e = agg.get((m, "tc", d, 1.0))
                if e is None:
                    continue
                c0 = e["cells"][0]
                rows.append([m, d, _fmt(e["mean"], e["half"]), _fmt(e.get("accuracy_std")), _fmt(e.get("f1")),
                             str(c0.get("samples_per_label")), str(c0.get("n_experiments")), str(e["n"])])
        tables.append(Table("TC details: accuracy, its std over experiments, macro-F1",
                            ["Model", "Dataset", "Accuracy", "Acc. std", "Macro-F1", "Samples/label", "Experiments",
                             "Seeds"], rows, numeric_from=99))
    return tables


MATCH_MARGIN = 1.0  # percentage points: "a matches b" needs the difference's whole 95 % interval within ±1


@dataclass
class Claim:
    """``a`` minus ``b`` on one task family at one NER train share; ``expect`` is what the paper reports
    (+1: a better, -1: a worse, 0: a matches b, i.e. within ``MATCH_MARGIN`` points)."""
    text: str
    a: str
    b: str
    task: str  # "ner" | "tc"
    expect: int = 1
    fraction: float = 1.0


def claim_interval(agg: dict, claim: Claim, datasets: list[str]) -> Interval | None:
    """Paired difference (percentage points) of the two models' family averages over their common seeds."""
    return paired(family_by_seed(agg, claim.a, claim.task, datasets, claim.fraction),
                  family_by_seed(agg, claim.b, claim.task, datasets, claim.fraction))


def verdict(iv: Interval | None, expect: int) -> str:
    """Whether the 95 % interval of the difference settles the claim: computed, never typed by hand."""
    if iv is None:
        return "not measured"
    if iv.half is None:
        return "one seed: no interval"
    if expect == 0:  # an interval that merely contains 0 is no evidence of a match: it must be narrow
        if -MATCH_MARGIN <= iv.low and iv.high <= MATCH_MARGIN:
            return f"matches (interval within ±{MATCH_MARGIN:g} point)"
        if iv.excludes_zero():
            return "holds (better)" if iv.mean > 0 else "contradicted (worse)"
        return f"not resolved (interval contains 0 but is wider than ±{MATCH_MARGIN:g} point)"
    if not iv.excludes_zero():
        return "not resolved (interval contains 0)"
    return "holds" if (iv.mean > 0) == (expect > 0) else "contradicted (opposite sign)"


def paired_table(cells: list[dict], claims: list[Claim], ner_order: list[str] | None = None,
                 tc_order: list[str] | None = None) -> Table:
    """One row per claim: the paired difference with its 95 % interval, the seeds it uses, the verdict."""
    cells = common_seeds(cells, {m for cl in claims for m in (cl.a, cl.b)})[0]  # as the tables
    agg = aggregate(cells)
    order = {"ner": ner_order or dataset_order(cells, "ner"), "tc": tc_order or dataset_order(cells, "tc")}
    rows = []
    for cl in claims:
        iv = claim_interval(agg, cl, order[cl.task])
        share = "" if cl.fraction == 1 else f" @{100 * cl.fraction:g}%"
        rows.append([cl.text, f"{cl.a} − {cl.b}", f"{cl.task.upper()}{share}", {1: "+", -1: "−", 0: "≈"}[cl.expect],
                     "—" if iv is None else iv.format_difference(),
                     "0" if iv is None else str(iv.n), verdict(iv, cl.expect)])
    return Table("Paired differences (percentage points, same seeds and data; 95 % t interval over seeds)",
                 ["Claim", "Difference", "Family", "Paper's sign", "Δ (95 % CI)", "Seeds", "Reading"], rows,
                 numeric_from=99)


def _bold_best(table: Table) -> list[list[str]]:
    rows = [list(r) for r in table.rows]
    groups: dict[str, list[list[str]]] = {}
    for r in rows:
        groups.setdefault(r[table.group_col] if table.group_col is not None else "", []).append(r)
    for col in range(table.numeric_from, len(table.header)):
        for group in groups.values():
            vals = []
            for r in group:
                try:
                    vals.append(float(r[col].replace("+", " ").replace("-", " -").split()[0]))
                except (ValueError, IndexError):
                    vals.append(None)
            present = [v for v in vals if v is not None]
            if len(present) < 2:
                continue
            best = max(present)
            for r, v in zip(group, vals):
                if v == best:
                    r[col] = f"**{r[col]}**"
    return rows


def table_markdown(t: Table) -> str:
    """One table as markdown rows (header, alignment, body with the best values bold), no title."""
    out = ["| " + " | ".join(t.header) + " |",
           "|" + "|".join("---" if i < t.numeric_from else "---:" for i in range(len(t.header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in _bold_best(t)]
    return "\n".join(out)


def to_markdown(tables: list[Table]) -> str:
    out = ["# Downstream evaluation", ""]
    for t in tables:
        out += [f"## {t.title}", "", table_markdown(t), ""]
    return "\n".join(out)


def dataset_order(cells: list[dict], task: str) -> list[str]:
    """The datasets of one task in the order their cells first appear."""
    return list(dict.fromkeys(c["dataset"] for c in cells if c["task"] == task))


def write_csv(tables: list[Table], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        for i, t in enumerate(tables):
            if i:
                w.writerow([])
            w.writerow([f"# {t.title}"])
            w.writerow(t.header)
            w.writerows(t.rows)


def score_chart(cells: list[dict], models: list[str], path: Path, ner_order=None, tc_order=None) -> None:
    """One panel per train share (full train: every dataset; then each data-scarce share): each model's mean as a
    point with its 95 % interval over seeds as an error bar. Points, not bars, so the y axis can zoom in on the
    range the scores span (differences of a point are invisible on a 0-100 bar); a panel shows only the models
    measured in it, and the figure stays readable with a dozen models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = common_seeds(cells, models)[0]  # as the tables
    agg = aggregate(cells)
    groups = []  # (title, [(dataset label, task, dataset, fraction)])
    ner_ds = ner_order or sorted({c["dataset"] for c in cells if c["task"] == "ner"})
    tc_ds = tc_order or sorted({c["dataset"] for c in cells if c["task"] == "tc"})
    full = [(abbrev(d), "ner", d, 1.0) for d in ner_ds] + [(abbrev(d), "tc", d, 1.0) for d in tc_ds]
    groups.append(("NER F1 / TC accuracy (%), full train", full))
    for f in sorted({float(c["fraction"]) for c in cells if c["task"] == "ner" and c["fraction"] < 1}, reverse=True):
        groups.append((f"NER F1 (%), {100 * f:g}% of train", [(abbrev(d), "ner", d, f) for d in ner_ds]))
    groups = [(title, [x for x in items if any((m, *x[1:]) in agg for m in models)]) for title, items in groups]
    groups = [g for g in groups if g[1]]
    if not groups:
        return
    palette = [plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # 10 distinct hues first
    colors = {m: palette[i % 20] for i, m in enumerate(models)}
    width = max(len(items) for _, items in groups)
    fig, axes = plt.subplots(len(groups), 1, figsize=(min(16, 3 + 1.3 * width), 3.2 * len(groups)), squeeze=False)
    for ax, (title, items) in zip(axes[:, 0], groups):
        present = [m for m in models if any((m, *x[1:]) in agg for x in items)]
        step = 0.8 / max(1, len(present))
        for j, m in enumerate(present):
            x = np.arange(len(items)) + (j - (len(present) - 1) / 2) * step
            vals = [agg.get((m, *x_[1:]), {}).get("mean", np.nan) for x_ in items]
            errs = [agg.get((m, *x_[1:]), {}).get("half") or 0.0 for x_ in items]
            ax.errorbar(x, vals, yerr=errs, fmt="o", ms=4, capsize=2, color=colors[m], label=m)
        ax.set_xticks(np.arange(len(items)))
        ax.set_xticklabels([lab for lab, *_ in items])
        for k in range(1, len(items)):
            ax.axvline(k - 0.5, color="0.85", lw=0.8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    found = {m: h for ax in axes[:, 0] for h, m in zip(*ax.get_legend_handles_labels())}
    handles = {m: found[m] for m in models if m in found}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncols=min(4, len(handles)),
               fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(handles) - 1) // 4), 1, 1))
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{Path(path).suffix}")  # never a half-written chart
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(cells: list[dict], models: list[str], base: str, out: Path, ner_order=None, tc_order=None) -> dict:
    tables = build_tables(cells, models, base, ner_order, tc_order)
    (out / "tables.md").write_text(to_markdown(tables))
    write_csv(tables, out / "tables.csv")
    score_chart(cells, models, out / "chart.png", ner_order, tc_order)
    return {"tables_md": str(out / "tables.md"), "tables_csv": str(out / "tables.csv"), "chart": str(out / "chart.png")}
