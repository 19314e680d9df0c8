"""Fill docs/results.md with the reproduction's tables, intervals and paired differences, straight from its
results files.

    python scripts/write_results.py docs/results/repro-scaled [--doc docs/results.md] [--figures docs/results]
    python scripts/write_results.py RUNS/repro --doc docs/results-150-steps.md    # the single-seed run folder
    python scripts/write_results.py docs/results --doc docs/results-150-steps.md  # its committed results-*.json

Sources: a results folder of ``scripts/reproduce.py`` (``manifest.json``, ``s<seed>/<model>.json``,
``runtime.json``, ``timings.json``, ``s<seed>/pretrain/<model>/logs/``), or the older single-seed layouts above.
Builds the paper-layout analogues with mtpf.downstream.tables (Table 1: PF strategies vs base; Table 2: multi-task
variants; Table 3: PF-L vs MTPF-TPL; Tables 5/6 per dataset; Table 11 data scarcity; the embedded-runtime row;
Figure 3 from the first seed's pre-finetuning logs),
every score as mean ± half-width of its 95 % interval over seeds (one seed: the plain number); the paper's claims
as paired differences over matched seeds with a verdict computed from each interval; the per-task TPL experiment
with Figure 4; the run time and command of every part. It replaces the block between ``<!-- tables:begin -->``
and ``<!-- tables:end -->`` of the doc. Every number in that block comes from those files; nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from mtpf.downstream.stats import interval
from mtpf.downstream.suite import read_cells
from mtpf.downstream.tables import (
    MATCH_MARGIN,
    Claim,
    aggregate,
    build_tables,
    claim_interval,
    common_seeds,
    seeds_text,
    dataset_order,
    family_by_seed,
    paired_table,
    table_markdown,
    verdict,
)

GROUPS = {
    "Table 1 analogue: pre-finetuning strategies vs the base model":
        ["Base model", "PF for NER", "PF for TC", "MTPF"],
    "Table 2 analogue: multi-task variants (individual PF rows are two separate models)":
        ["Base model", "PF for NER", "PF for TC", "MTPF", "MTPF + PCGrad", "MTPF-TPL"],
    "Table 3 analogue: classical LoRA pre-finetuning (PF-L) vs MTPF-TPL":
        ["Base model", "PF-L (two layers)", "PF-L (all layers)", "MTPF-TPL"],
}
BASE, TPL = "Base model", "MTPF-TPL"
PARTS = {"label": "teacher pseudo-labels", "pretrain": "pre-finetuning", "ner-full": "NER, full train",
         "ner-low": "NER, 10/20/50 % of train", "tc": "TC (MTEB protocol)", "runtime": "runtime row (int8 ONNX)",
         "figures": "figures"}


def claims(models: list[str], low_fractions: list[float]) -> list[Claim]:
    """The paper's claims as differences; only those whose two models were run."""
    out = [Claim("PF for NER interferes with TC", "PF for NER", BASE, "tc", -1),
           Claim("PF for TC interferes with NER", "PF for TC", BASE, "ner", -1),
           Claim("MTPF-TPL beats MTPF on NER", TPL, "MTPF", "ner", +1),
           Claim("MTPF-TPL beats MTPF on TC", TPL, "MTPF", "tc", +1),
           Claim("MTPF-TPL matches the individual PF on NER", TPL, "PF for NER", "ner", 0),
           Claim("MTPF-TPL matches the individual PF on TC", TPL, "PF for TC", "tc", 0),
           Claim("PCGrad improves MTPF on NER (slightly)", "MTPF + PCGrad", "MTPF", "ner", +1),
           Claim("PCGrad improves MTPF on TC (slightly)", "MTPF + PCGrad", "MTPF", "tc", +1)]
    out += [Claim(f"MTPF-TPL gains over the base with {100 * f:g} % of NER train", TPL, BASE, "ner", +1, f)
            for f in low_fractions]
    return [c for c in out if c.a in models and c.b in models]


def ner_recipes(cells: list[dict]) -> dict[str, str]:
    """'10%' -> '10 head + 2 LoRA epochs', from the NER cells' own config."""
    out = {}
    for c in cells:
        cfg = c.get("config") or {}
        if c["task"] == "ner" and "epochs" in cfg:
            text = f"{cfg['epochs_warmup']} head + {cfg['epochs']} LoRA epochs"
            if cfg.get("min_steps") or cfg.get("min_steps_warmup"):  # the default recipe's step minimums
                text = (f"{cfg.get('recipe', 'default')} recipe: {cfg['epochs_warmup']} head + up to "
                        f"{cfg['epochs']} LoRA epochs, at least {cfg.get('min_steps_warmup', 0)} + "
                        f"{cfg.get('min_steps', 0)} steps")
            out[f"{100 * float(c['fraction']):g}%"] = text
    return out


def load(source: Path) -> tuple[list[dict], list[str], dict]:
    """(cells, model rows in order, manifest) of any of the three layouts."""
    manifest = json.loads((source / "manifest.json").read_text()) if (source / "manifest.json").is_file() else {}
    if manifest:
        files = sorted(source.glob("s*/*.json")) + [source / "runtime.json"]
        order = list(manifest["models"])
    elif (source / "eval").is_dir():
        files, order = [source / "eval" / run / "results.json" for run in ("full", "ten_percent", "runtime")], []
    else:
        files, order = [source / f"results-{run}.json" for run in ("full", "ten_percent", "runtime")], []
    cells, models = [], list(order)
    for path in files:
        if not path.is_file():
            continue
        run_cells, labels = read_cells(path)
        cells += run_cells
        models += [m for m in labels if m not in models]
    models += [m for m in dict.fromkeys(c["model"] for c in cells) if m not in models]  # e.g. the runtime row
    # the same cell may appear in several files (runtime --with): keep one per key
    return list({c["key"]: c for c in cells}.values()), models, manifest


def reading(cells: list[dict], cls: list[Claim], order: dict) -> list[str]:
    """Plain-language reading of the claims table, grouped by verdict (computed from the intervals)."""
    agg = aggregate(cells)
    groups = defaultdict(list)
    for c in cls:
        iv = claim_interval(agg, c, order[c.task])
        v = verdict(iv, c.expect)
        if iv is not None:
            groups[v.split(" (")[0]].append(f"{c.text} ({iv.format_difference()}, n={iv.n})")
    text = {"holds": "Hold (the 95 % interval excludes 0 in the paper's direction)",
            "matches": f"Consistent with the paper's 'matches' (the whole interval within ±{MATCH_MARGIN:g} point)",
            "contradicted": "Contradicted (the interval excludes 0 against the paper)",
            "not resolved": "Not resolved at this number of seeds (the interval contains 0)",
            "one seed: no interval": "One seed only: no interval, so no claim can be decided"}
    out = []
    for key, title in text.items():
        if groups.get(key):
            out += [f"- **{title}:** " + "; ".join(groups[key]) + "."]
    return out


def tpl_section(cells, models, tpl: dict, order: dict, source: Path, figs: Path, doc: Path) -> list[str]:
    """The per-task TPL experiment: every setting vs uniform TPL on both families, and Figure 4."""
    uniform = tpl.get("uniform", TPL)
    settings = [m for m in dict.fromkeys([*tpl.get("depth", {}).values(), *tpl.get("asymmetric", [])])
                if m != uniform and m in models]
    if not settings or uniform not in models:
        return []
    agg = aggregate(cells)
    rows, verdicts = [], []
    for m in settings:
        ivs = [claim_interval(agg, Claim("", m, uniform, t, 0), order[t]) for t in ("ner", "tc")]
        fmt = ["—" if iv is None else iv.format_difference() for iv in ivs]
        if any(iv is None for iv in ivs):
            v = "not measured"
        elif any(iv.half is None for iv in ivs):
            v = "undecided (one seed)"
        else:
            v = "yes" if all(iv.excludes_zero() and iv.mean > 0 for iv in ivs) else "no"
        verdicts.append(v)
        rows.append(f"| {m} | {fmt[0]} | {fmt[1]} | {v} |")
    out = ["### The per-task TPL experiment (beyond the paper): each setting minus uniform TPL", "",
           table_markdown(build_tables([c for c in cells if float(c["fraction"]) == 1.0],
                                       [BASE, uniform, *settings] if BASE in models else [uniform, *settings],
                                       BASE if BASE in models else uniform, order["ner"], order["tc"])[0]), "",
           (f"Paired differences against `{uniform}` (percentage points, 95 % interval over seeds); a setting "
           "beats uniform TPL only if both intervals lie above 0:"), "",
           "| Setting | NER Δ | TC Δ | Beats uniform TPL on both families |", "|---|---:|---:|---|", *rows, ""]
    winners = [m for m, v in zip(settings, verdicts) if v == "yes"]
    open_ = [m for m, v in zip(settings, verdicts) if v not in ("yes", "no")]
    if all(v == "not measured" for v in verdicts):
        result = "not measured yet (no cells of these settings next to uniform TPL's)."
    elif winners:
        result = f"{'; '.join(winners)} beat{'s' if len(winners) == 1 else ''} uniform TPL on both families."
    elif not open_:
        result = "no setting beats uniform TPL on both families."
    else:  # say nothing the intervals do not show yet
        result = (f"not decided yet: {len(open_)} of {len(settings)} settings have no interval on both families "
                  "(they need paired cells at two or more seeds)"
                  + ("; none of the others beats uniform TPL." if len(open_) < len(settings) else "."))
    out += [f"Result: {result}", ""]
    fig = figure4(cells, tpl, order, source, figs)
    if fig:
        out += [f"![Figure 4]({os.path.relpath(fig, doc.parent)})", "",
                ("Figure 4 analogue: (a)/(b) pre-finetuning losses per TPL depth (first seed), (c)/(d) downstream "
                "averages with their 95 % intervals over seeds."), ""]
    return out


def figure3_section(source: Path, manifest: dict, figs: Path, doc: Path) -> list[str]:
    """Figure 3 (Findings 1 and 2 during pre-finetuning) from the first seed's committed pre-finetuning logs of the
    config's ``figure3_models`` (else every pre-finetuned model), drawn as ``mtpf analyze plot --losses`` does."""
    from mtpf.analysis.plots import plot_findings

    seeds = [source / f"s{s}" / "pretrain" for s in manifest.get("seeds", [])]  # the config's order: first = first
    seeds = [d for d in seeds if d.is_dir()]
    if not seeds:
        return []
    wanted = (manifest.get("config") or {}).get("figure3_models") or list(manifest.get("models", {}))
    runs = [(m, seeds[0] / manifest["models"][m]) for m in wanted if m in manifest.get("models", {})]
    runs = [(m, r) for m, r in runs if (r / "logs" / "analysis.jsonl").is_file()]
    if not runs:
        return []
    figs.mkdir(parents=True, exist_ok=True)
    fig = plot_findings([r for _, r in runs], figs / "fig3.png", losses=True, labels=[m for m, _ in runs])
    return ["### Figure 3 analogue: the two findings during pre-finetuning", "",
            f"![Figure 3]({os.path.relpath(fig, doc.parent)})", "",
            (f"Seed {seeds[0].parent.name[1:]}: (a) perturbed-sentence cosine (Finding 1) and (b) intra-sentence "
             "token homogeneity (Finding 2) of the backbone during pre-finetuning (`analysis_every` steps, on "
             "CoNLL-2003 test sentences); (c)/(d) the pre-finetuning losses."), ""]


def figure4(cells, tpl: dict, order: dict, source: Path, figs: Path) -> Path | None:
    """Reuse analysis.plots.plot_depth on a sweep folder assembled from the results: layers-N/logs from the first
    seed's pre-finetuning logs, downstream.json with the family averages and their intervals."""
    from mtpf.analysis.plots import plot_depth

    depth = {int(n): m for n, m in (tpl.get("depth") or {}).items()}
    manifest = json.loads((source / "manifest.json").read_text())
    seeds = [source / f"s{s}" / "pretrain" for s in manifest.get("seeds", [])]  # the config's order: first = first
    seeds = [d for d in seeds if d.is_dir()]
    if not depth or not seeds:
        return None
    agg = aggregate(cells)
    with tempfile.TemporaryDirectory() as tmp:
        downstream = {}
        for n, m in depth.items():
            logs = seeds[0] / manifest["models"][m] / "logs"
            if logs.is_dir():
                shutil.copytree(logs, Path(tmp) / f"layers-{n}" / "logs")
            entry = {}
            for task in ("ner", "tc"):
                by_seed = family_by_seed(agg, m, task, order[task])
                if by_seed:
                    iv = interval(by_seed.values())
                    entry.update({task: iv.mean, f"{task}_half": iv.half})
            downstream[str(n)] = entry
        if not any((Path(tmp) / f"layers-{n}").is_dir() for n in depth):
            return None
        (Path(tmp) / "downstream.json").write_text(json.dumps(downstream))
        figs.mkdir(parents=True, exist_ok=True)
        return plot_depth(tmp, figs / "fig4.png")


def timings_section(source: Path) -> list[str]:
    path = source / "timings.json"
    if not path.is_file():
        return []
    parts = defaultdict(list)
    for t in json.loads(path.read_text()).values():
        parts[t["part"]].append(t)
    out = ["### Run time of each part (wall clock, from timings.json)", "",
           "| Part | Units | Wall time | Example command |", "|---|---:|---:|---|"]
    for part, ts in parts.items():
        hours = sum(t["seconds"] for t in ts) / 3600
        cmd = min((t["command"] for t in ts), key=len)
        cmd = cmd if len(cmd) <= 160 else cmd[:157] + "..."
        out.append(f"| {PARTS.get(part, part)} | {len(ts)} | {hours:.2f} h | `mtpf {cmd}` |")
    total = sum(t["seconds"] for ts in parts.values() for t in ts) / 3600
    out.append(f"| total | {sum(map(len, parts.values()))} | {total:.2f} h | "
               "`scripts/reproduce.py` (every command: timings.json) |")
    shared = [t for ts in parts.values() for t in ts if t.get("jobs", 1) > 1]
    if shared:
        jobs = sorted({t["jobs"] for t in shared})
        out += ["", (f"{len(shared)} of these units ran {' or '.join(map(str, jobs))} at a time "
                     "(`scripts/reproduce.py --jobs`, the cores split between them): their wall times overlap, so "
                     "each is longer than the unit alone and the total is more than the elapsed time.")]
    return out + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="results folder of scripts/reproduce.py, or an older single-seed layout")
    ap.add_argument("--doc", default="docs/results.md")
    ap.add_argument("--figures", default=None, help="where figures are written (default: the results folder, or "
                                                    "docs/results for the older layouts)")
    args = ap.parse_args()
    source, doc = Path(args.source), Path(args.doc)
    cells, models, manifest = load(source)
    if not cells:
        ap.error(f"{source}: no results files (a scripts/reproduce.py results folder, RUNS/repro, or docs/results)")
    figs = Path(args.figures or (source if manifest else "docs/results"))
    ner_order, tc_order = dataset_order(cells, "ner"), dataset_order(cells, "tc")
    order = {"ner": ner_order, "tc": tc_order}
    base = manifest.get("base") or models[0]
    runtime_labels = sorted({c["model"] for c in cells if "runtime" in c})
    main_models = [m for m in models if m not in runtime_labels]
    seeds = sorted({int(c["seed"]) for c in cells})
    done = {s: sum(int(c["seed"]) == s for c in cells if c["model"] in main_models) for s in seeds}
    # every table, difference and figure below over the same seeds: those every measured cell has
    cells, used, left_out = common_seeds(cells, set(main_models))
    full = [c for c in cells if float(c["fraction"]) == 1.0]
    per_cell = sorted({e["n"] for e in aggregate([c for c in cells if "runtime" not in c]).values()})  # runtime: 1 seed
    n_text = str(per_cell[0]) if len(per_cell) == 1 else f"{per_cell[0]} to {per_cell[-1]}"
    out = [(f"Seeds: {', '.join(map(str, seeds))}; seeds per table cell: {n_text}. "
           "With several seeds every score is mean ± half-width of its 95 % t interval over seeds (a family average: "
           "the interval of its per-seed averages); one seed prints the plain mean, with no interval."), ""]
    if left_out:
        out += [(f"**Under way:** result cells per seed so far: "
                 f"{', '.join(f'{s}: {done[s]}' for s in seeds)}. The tables, differences and figures use "
                 f"{seeds_text(used)}, which every cell has; {seeds_text(left_out)} enter"
                 f"{'' if len(left_out) > 1 else 's'} them once every cell has "
                 f"{'them' if len(left_out) > 1 else 'it'}, so that no row, difference or bold mean compares "
                 "different seeds."), ""]
    for title, rows in GROUPS.items():
        rows = [m for m in rows if m in models]
        summary = build_tables(full, rows, base, ner_order, tc_order)[0]
        out += [f"### {title}", "", table_markdown(summary), ""]
    recipes = ner_recipes(cells)

    # runs limited to some models (reproduce.py's `models:`, e.g. Table 11's four): no empty rows for the others
    runs = (manifest.get("config") or {}).get("evaluate", {}).get("runs", {})
    limited = {f"{100 * float(f):g}%": set(r["models"]) for r in runs.values() if r.get("models")
               for f in r["fractions"]}

    def tables(rows, cells=cells):
        out = build_tables(cells, rows, base, ner_order, tc_order)
        for t in out:
            if t.title.startswith("NER under data scarcity"):  # say which recipe each data portion used
                t.rows[:] = [r for r in t.rows if r[0] not in limited or r[1] in limited[r[0]]]
                for row in t.rows:
                    row[0] = f"{row[0]} ({recipes[row[0]]})" if row[0] in recipes else row[0]
        return out

    every = tables(models)
    for t in every[1:]:
        if t.title.startswith(("NER sub-tasks", "TC sub-tasks", "NER under data scarcity", "TC details")):
            out += [f"### {t.title}", "", table_markdown(t), ""]
    if runtime_labels:
        # The runtime row is measured at one seed (the first): its PyTorch neighbours are that seed's cells, so the
        # comparison is the same model served two ways, not one seed against a mean over seeds.
        rt_seeds = sorted({int(c.get("seed", 42)) for c in cells if "runtime" in c})
        same = [c for c in cells if int(c.get("seed", 42)) in rt_seeds]
        out += ["### The embedded runtime (int8 ONNX backbone + the same app adapters) next to PyTorch", ""]
        if len(seeds) > 1:
            out += [(f"Every row here is {seeds_text(rt_seeds)} only, the seed the runtime row is measured at: the "
                     "PyTorch rows are that seed's cells, not the means over seeds above."), ""]
        deploy = [m for m in (BASE, TPL, *runtime_labels) if m in models]
        out += [table_markdown(build_tables([c for c in same if float(c["fraction"]) == 1.0], deploy, base,
                                            ner_order, tc_order)[0]), ""]
        for t in tables(deploy, same)[1:]:
            if t.title.startswith(("NER sub-tasks", "TC sub-tasks", "NER under data scarcity")):
                out += [f"#### {t.title}", "", table_markdown(t), ""]
    low = sorted({float(c["fraction"]) for c in cells if c["task"] == "ner" and float(c["fraction"]) < 1})
    cls = claims(main_models, low)
    if cls:
        t = paired_table(cells, cls, ner_order, tc_order)
        out += [f"### {t.title}", "", table_markdown(t), "",
                "Reading (computed from the intervals above, not written by hand):", "", *reading(cells, cls, order),
                ""]
    out += figure3_section(source, manifest, figs, doc) if manifest else []
    out += tpl_section(cells, models, manifest.get("config", {}).get("tpl_experiment") or {}, order, source,
                       figs, doc)
    out += timings_section(source)
    block = "\n".join(out).rstrip() + "\n"
    text = doc.read_text() if doc.is_file() else "<!-- tables:begin -->\n<!-- tables:end -->\n"
    if "<!-- tables:begin -->" not in text or "<!-- tables:end -->" not in text:
        ap.error(f"{doc}: add the lines <!-- tables:begin --> and <!-- tables:end --> where the tables go")
    head, rest = text.split("<!-- tables:begin -->", 1)
    _, tail = rest.split("<!-- tables:end -->", 1)
    doc.write_text(f"{head}<!-- tables:begin -->\n{block}<!-- tables:end -->{tail}")
    if not manifest and (source / "eval").is_dir():  # the single-seed run folder: keep its files next to the doc
        figs.mkdir(parents=True, exist_ok=True)
        ev = source / "eval"
        copies = [(source / "fig3.png", "fig3.png"), (ev / "runtime" / "chart.png", "chart.png")]
        copies += [(ev / run / "results.json", f"results-{run}.json") for run in ("full", "ten_percent", "runtime")]
        for src, name in copies:
            if src.is_file():
                shutil.copy2(src, figs / name)
    elif manifest:
        from mtpf.downstream.tables import score_chart

        figs.mkdir(parents=True, exist_ok=True)
        score_chart(cells, models, figs / "chart.png", ner_order, tc_order)
    print(f"wrote {doc} ({len(cells)} cells, {len(models)} rows, seeds {seeds})")


if __name__ == "__main__":
    main()
