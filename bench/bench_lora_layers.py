"""NER apps that share the trunk: F1 of LoRA on all layers vs the last 2, 3, 4 layers, next to the serving cost.

    .venv/bin/python bench/bench_lora_layers.py [--model RUN_OR_packaged] [--layers all,2,3,4] \
        [--datasets conll2003,mit_restaurant] [--fraction 0.1] [--recipe default] [--device cpu]
    .venv/bin/python bench/bench_lora_layers.py --serving-only      # cost columns only (random adapters)

F1: ``mtpf adapt ner --lora-layers L`` per dataset and L, with ONE recipe for every row (stated in the output
and in bench/results/lora_layers.json): ``--recipe`` (default: mtpf's default NER recipe) on ``--fraction`` of
the train sentences (seeded), optionally with explicit ``--epochs-warmup``/``--epochs``; LoRA rank 32, alpha 64
on query, key and MLP of the chosen layers. With a pre-finetuned run
folder as ``--model``, its ``ner`` task-primary adapter initialises the LoRA of the last 2 layers. Test F1
(seqeval, entity level) is read from each app's ``mtpf_app.json``. Apps are kept under ``--out``/apps and a
finished cell is not trained again (re-run to resume). These runs are long (hours on 2 CPU cores at the
paper's recipe); use ``--device cuda`` on a GPU.

Serving cost per app, per L: ms per text for the app alone (one call over ``--texts`` test sentences) and in an
8-app ``Runtime.analyze`` (8 NER apps of that L, the same texts; total time / (texts x 8)). The trained apps are
used when they exist, else random adapters of the same shape (the cost does not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def adapt(model: str, data: Path, out: Path, layers: str, args) -> dict:
    meta_file = out / "mtpf_app.json"
    if not meta_file.is_file():
        cmd = [sys.executable, "-m", "mtpf.cli", "adapt", "ner", "--model", model, "--data", str(data),
               "--output", str(out), "--lora-layers", layers, "--fraction", str(args.fraction),
               "--recipe", args.recipe, "--seed", str(args.seed), "--no-progress"]
        if args.epochs_warmup is not None:
            cmd += ["--epochs-warmup", str(args.epochs_warmup)]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        if args.device != "cpu":
            cmd += ["--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        t0 = time.time()
        print("  $", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        print(f"  done in {time.time() - t0:.0f} s", flush=True)
    return json.loads(meta_file.read_text())


def test_texts(data: Path, n: int) -> list[str]:
    out = []
    from mtpf.data.io import iter_jsonl

    for _, row in iter_jsonl(next(data.glob("test.jsonl*"))):
        out.append(" ".join(row["tokens"]))
        if len(out) >= n:
            break
    return out


def serving_cost(backbone: str, app_dir: str | None, layers: str, texts: list[str], rounds: int, device: str,
                 tmp: Path) -> dict:
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.runtime import Runtime
    from mtpf.runtime.testing import make_app_adapter

    # 8 DIFFERENT adapters of this shape (r=32 / alpha 64 on query, key, MLP): identical ones would be loaded
    # and run once (the runtime deduplicates adapters by content), which is not 8 apps' cost. The trained app
    # (when there is one) is app0; the others are random adapters of the same shape.
    enc = load_encoder(backbone)
    fp = fingerprint_model(enc)
    names = [f"app{i}" for i in range(8)]
    dirs = [app_dir] if app_dir else []
    while len(dirs) < len(names):
        dirs.append(make_app_adapter(tmp / f"ner-{layers}-{len(dirs)}", backbone, "ner", rank=32, alpha=64,
                                     layers=layers if layers == "all" else int(layers), lora_std=0.02,
                                     seed=len(dirs), encoder=enc, fingerprint=fp))
    with Runtime(backbone, device=device, max_batch_size=64) as rt:
        for n, d in zip(names, dirs):
            rt.register_app(n, d)
        assert rt.adapters_loaded == len(names), "the 8 apps must not share an adapter"
        rt.analyze(texts[:8])
        alone, together = [], []
        for _ in range(rounds):  # interleaved
            t0 = time.perf_counter()
            rt.extract_entities(names[0], texts)
            alone.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rt.analyze(texts, apps=names)
            together.append(time.perf_counter() - t0)
        shared = rt.app_info(names[0])["shared_layers"]
    a, t = statistics.median(alone), statistics.median(together)
    return {"alone_ms_per_text": 1000 * a / len(texts), "analyze8_ms_per_text_per_app": 1000 * t / (8 * len(texts)),
            "shared_layers": shared}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="packaged", help="backbone: mtpf run folder, model folder or 'packaged'")
    ap.add_argument("--layers", default="all,2,3,4", help="comma list of --lora-layers values")
    ap.add_argument("--datasets", default="conll2003,mit_restaurant", help="folders under ../shared/data/ner")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of train sentences (seeded)")
    ap.add_argument("--recipe", default="default", choices=["default", "paper"], help="mtpf adapt ner --recipe")
    ap.add_argument("--epochs-warmup", type=int, default=None, help="head-only epochs (default: the recipe's)")
    ap.add_argument("--epochs", type=int, default=None, help="LoRA + head epochs (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (training and serving)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--serving-only", action="store_true", help="skip the F1 runs (cost columns only)")
    ap.add_argument("--f1-only", action="store_true", help="skip the serving cost (e.g. F1 on a GPU, cost on the CPU)")
    ap.add_argument("--texts", type=int, default=100, help="test sentences for the serving cost")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from mtpf.cli import quiet_libraries
    from mtpf.encoder import resolve_model

    quiet_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    backbone = resolve_model(args.model)
    layer_list = [x.strip() for x in args.layers.split(",") if x.strip()]
    datasets = [x.strip() for x in args.datasets.split(",") if x.strip()]
    out = Path(args.out)
    epochs = "".join(f" --{k.replace('_', '-')} {v}" for k, v in (("epochs_warmup", args.epochs_warmup),
                                                                     ("epochs", args.epochs)) if v is not None)
    recipe = (f"mtpf adapt ner --recipe {args.recipe} --fraction {args.fraction}{epochs} --seed {args.seed} "
              "(LoRA rank 32, alpha 64 on query, key and MLP of the chosen layers)")
    report = {"model": args.model, "recipe": recipe, "device": args.device, "started": time.strftime("%F %T"),
              "loadavg_start": os.getloadavg(), "f1": {}, "serving": {}}
    apps: dict[str, str] = {}
    if not args.serving_only:
        for ds in datasets:
            for layers in layer_list:
                print(f"== F1: {ds}, LoRA on {layers} layer(s)", flush=True)
                app = out / "apps" / f"{ds}-lora{layers}"
                meta = adapt(args.model, DATA / "ner" / ds, app, layers, args)
                report["f1"].setdefault(ds, {})[layers] = meta["metrics"]["test"]["f1"]
                apps.setdefault(layers, str(app))
    texts = test_texts(DATA / "ner" / datasets[0], args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        for layers in ([] if args.f1_only else layer_list):
            print(f"== serving cost, LoRA on {layers} layer(s)", flush=True)
            report["serving"][layers] = serving_cost(backbone, apps.get(layers), layers, texts, args.rounds,
                                                     args.device, Path(tmp))
            print("  ", report["serving"][layers], flush=True)
    report["loadavg_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "lora_layers.json").write_text(json.dumps(report, indent=2))
    print(f"\nrecipe: {recipe}\n")
    print("| LoRA layers | " + " | ".join(f"{d} F1" for d in datasets) + " | shared layers | ms/text alone | "
          "ms/text/app in 8-app analyze |")
    print("|---" * (len(datasets) + 4) + "|")
    for layers in layer_list:
        f1 = [f"{100 * report['f1'][d][layers]:.2f}" if d in report["f1"] else "-" for d in datasets]
        s = report["serving"].get(layers)
        cost = (f"{s['shared_layers']} | {s['alone_ms_per_text']:.2f} | {s['analyze8_ms_per_text_per_app']:.2f}"
                if s else "- | - | -")
        print(f"| {layers} | " + " | ".join(f1) + f" | {cost} |")
    print(f"wrote {out / 'lora_layers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
