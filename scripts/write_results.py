"""Fill docs/results.md with the reproduction's tables, straight from its results.json files.

    python scripts/write_results.py RUNS/repro [--doc docs/results.md] [--figures docs/results]

Reads RUNS/repro/eval/{full,ten_percent,runtime}/results.json, builds the paper-layout analogues with
mtpf.downstream.tables (Table 1: PF strategies vs base; Table 2: multi-task variants; Table 3: PF-L vs MTPF-TPL;
Tables 5/6 per dataset; Table 11 data scarcity; the embedded-runtime row) and replaces the block between
``<!-- tables:begin -->`` and ``<!-- tables:end -->`` of the doc. Copies fig3.png, the chart and the three
results.json files (as results-*.json) next to it.
Every number in that block comes from those files; nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mtpf.downstream.suite import read_cells
from mtpf.downstream.tables import build_tables, dataset_order, table_markdown

GROUPS = {
    "Table 1 analogue: pre-finetuning strategies vs the base model":
        ["Base model", "PF for NER", "PF for TC", "MTPF"],
    "Table 2 analogue: multi-task variants (individual PF rows are two separate models)":
        ["Base model", "PF for NER", "PF for TC", "MTPF", "MTPF + PCGrad", "MTPF-TPL"],
    "Table 3 analogue: classical LoRA pre-finetuning (PF-L) vs MTPF-TPL":
        ["Base model", "PF-L (two layers)", "PF-L (all layers)", "MTPF-TPL"],
}


def ner_recipes(cells: list[dict]) -> dict[str, str]:
    """'10%' -> '10 head + 2 LoRA epochs', from the NER cells' own config."""
    out = {}
    for c in cells:
        cfg = c.get("config") or {}
        if c["task"] == "ner" and "epochs" in cfg:
            out[f"{100 * float(c['fraction']):g}%"] = f"{cfg['epochs_warmup']} head + {cfg['epochs']} LoRA epochs"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repro", help="the reproduction's output folder (scripts/reproduce.py --output)")
    ap.add_argument("--doc", default="docs/results.md")
    ap.add_argument("--figures", default="docs/results")
    args = ap.parse_args()
    ev = Path(args.repro) / "eval"
    cells, models = [], []
    for run in ("full", "ten_percent", "runtime"):
        path = ev / run / "results.json"
        if not path.is_file():
            continue
        run_cells, labels = read_cells(path)
        cells += run_cells
        models += [m for m in labels if m not in models]
    runtime_labels = sorted({c["model"] for c in cells if "runtime" in c})
    models += [m for m in runtime_labels if m not in models]
    if not cells:
        raise SystemExit(f"no results.json under {ev}")
    # the same cell may appear in several files (runtime --with): keep one per key
    cells = list({c["key"]: c for c in cells}.values())
    ner_order, tc_order = dataset_order(cells, "ner"), dataset_order(cells, "tc")
    base = models[0]
    full = [c for c in cells if float(c["fraction"]) == 1.0]
    out = []
    for title, rows in GROUPS.items():
        rows = [m for m in rows if m in models]
        summary = build_tables(full, rows, base, ner_order, tc_order)[0]
        out += [f"### {title}", "", table_markdown(summary), ""]
    recipes = ner_recipes(cells)

    def tables(rows):
        out = build_tables(cells, rows, base, ner_order, tc_order)
        for t in out:
            if t.title.startswith("NER under data scarcity"):  # say which recipe each data portion used
                for row in t.rows:
                    row[0] = f"{row[0]} ({recipes[row[0]]})" if row[0] in recipes else row[0]
        return out

    every = tables(models)
    for t in every[1:]:
        if t.title.startswith(("NER sub-tasks", "TC sub-tasks", "NER under data scarcity", "TC details")):
            out += [f"### {t.title}", "", table_markdown(t), ""]
    if runtime_labels:
        out += ["### The embedded runtime (int8 ONNX backbone + the same app adapters) next to PyTorch", ""]
        deploy = [m for m in ("Base model", "MTPF-TPL", *runtime_labels) if m in models]
        out += [table_markdown(build_tables(full, deploy, base, ner_order, tc_order)[0]), ""]
        for t in tables(deploy)[1:]:
            if t.title.startswith(("NER sub-tasks", "TC sub-tasks", "NER under data scarcity")):
                out += [f"#### {t.title}", "", table_markdown(t), ""]
    block = "\n".join(out).rstrip() + "\n"
    doc = Path(args.doc)
    text = doc.read_text() if doc.is_file() else "<!-- tables:begin -->\n<!-- tables:end -->\n"
    head, rest = text.split("<!-- tables:begin -->", 1)
    _, tail = rest.split("<!-- tables:end -->", 1)
    doc.write_text(f"{head}<!-- tables:begin -->\n{block}<!-- tables:end -->{tail}")
    figs = Path(args.figures)
    figs.mkdir(parents=True, exist_ok=True)
    copies = [(Path(args.repro) / "fig3.png", "fig3.png"), (ev / "runtime" / "chart.png", "chart.png")]
    copies += [(ev / run / "results.json", f"results-{run}.json") for run in ("full", "ten_percent", "runtime")]
    for src, name in copies:
        if src.is_file():
            shutil.copy2(src, figs / name)
    print(f"wrote {doc} ({len(cells)} cells, {len(models)} rows)")


if __name__ == "__main__":
    main()
