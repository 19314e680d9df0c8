"""NER adaptation recipes side by side: the default recipe vs the paper's (``--recipe paper``).

For each dataset and train size (a seeded subset of N sentences, or a share of train), both recipes adapt the
same model with the same seed; prints test F1, dev F1 (what model selection saw), epochs run and wall time,
and the ratios default/paper. Results go to a JSON file, one cell per (dataset, size, recipe), and re-running
skips the cells already there (delete the file or pass --fresh to re-measure).

    python bench/bench_ner_recipe.py --data-dir ../shared/data --device auto \
        [--datasets conll2003,mit_restaurant] [--sizes 200,0.1,1.0] [--recipes default,paper] \
        [--model packaged] [--seed 42] [--threads N] [--out bench/results/ner_recipe.json]

Sizes: an integer is a number of train sentences (200 -> fraction 200/len(train), e.g. 0.01425 for
CoNLL-2003), a number <= 1 a share of train. The whole table (2 datasets x 3 sizes x 2 recipes) takes hours on a
CPU (the paper recipe on 100 % train most of it); on one GPU well under an hour.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def _fraction(size: str, n_train: int) -> tuple[float, str]:
    value = float(size)
    if value > 1:
        return int(value) / n_train, f"{int(value)} sentences"
    return value, f"{100 * value:g} %"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--datasets", default="conll2003,mit_restaurant", help="names under DATA/ner")
    p.add_argument("--sizes", default="200,0.1,1.0", help="comma list: N sentences (> 1) or a share of train")
    p.add_argument("--recipes", default="default,paper")
    p.add_argument("--model", default="packaged")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "ner_recipe.json"))
    p.add_argument("--fresh", action="store_true", help="ignore the cells already in --out")
    args = p.parse_args()

    import torch

    from mtpf.device import resolve_device
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() and not args.fresh else {"cells": []}
    data["machine"] = {"device": str(device), "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                       "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                       "torch": torch.__version__}
    done = {(c["dataset"], c["size"], c["recipe"]) for c in data["cells"]}
    model = resolve(args.model)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        dataset = load_ner_dataset(str(Path(args.data_dir) / "ner" / name))
        n_train = len(dataset.splits["train"])
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            fraction, size_label = _fraction(size, n_train)
            for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
                if (name, size, recipe) in done:
                    continue
                print(f"{name} | {size_label} | recipe {recipe} ...", flush=True)
                t0 = time.perf_counter()
                res = train_ner(model, dataset, NerConfig(recipe=recipe), fraction, args.seed,
                                progress=sys.stderr.isatty(), device=device)
                cell = {"dataset": name, "size": size, "size_label": size_label, "fraction": fraction,
                        "recipe": recipe, "n_train_sentences": res.n_train_sentences, "test": res.test,
                        "dev": res.dev, "dev_sentences": res.dev_sentences, "best_epoch": res.best_epoch,
                        "epochs": res.epochs, "seconds": round(time.perf_counter() - t0, 1),
                        "device": str(device), "config": NerConfig(recipe=recipe).to_dict()}
                data["cells"] = [c for c in data["cells"] if (c["dataset"], c["size"], c["recipe"])
                                 != (name, size, recipe)] + [cell]
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=2))
                os.replace(tmp, out)
                print(f"  test F1 {100 * res.test['f1']:.1f}  ({cell['seconds'] / 60:.1f} min, {res.epochs})",
                      flush=True)
    print(table(data["cells"]))
    print(f"wrote {out}")
    return 0


def table(cells: list[dict]) -> str:
    """Markdown: one row per (dataset, size), test F1 and minutes of each recipe, and default vs paper."""
    by = {(c["dataset"], c["size"], c["recipe"]): c for c in cells}
    fraction = {(c["dataset"], c["size"]): c["fraction"] for c in cells}
    rows = sorted({(c["dataset"], c["size"], c["size_label"]) for c in cells}, key=lambda r: (r[0], fraction[r[:2]]))
    lines = ["| dataset | train | default F1 | default min | paper F1 | paper min | F1 diff | time ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for ds, size, label in rows:
        d, p = by.get((ds, size, "default")), by.get((ds, size, "paper"))

        def f1(c):
            return f"{100 * c['test']['f1']:.1f}" if c else "—"

        def minutes(c):
            return f"{c['seconds'] / 60:.1f}" if c else "—"

        diff = f"{100 * (d['test']['f1'] - p['test']['f1']):+.1f}" if d and p else "—"
        ratio = f"{d['seconds'] / p['seconds']:.2f}x" if d and p else "—"
        lines.append(f"| {ds} | {label} | {f1(d)} | {minutes(d)} | {f1(p)} | {minutes(p)} | {diff} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
