"""``mtpf analyze``: the representation analysis of paper Sections 5-6.

mtpf analyze MODEL [--ner-data DIR] [--sentences 2000] [--adapter NAME|all|none] [--json OUT]
    Finding 1 (perturbed-sentence cosine) and Finding 2 (token homogeneity) of one model: an mtpf run
    folder (backbone + each adapters/*), an HF folder, a hub name or 'packaged'.
mtpf analyze plot RUN_DIR... --out fig3.png [--adapter NAME] [--losses]
    Figure 3: both findings vs step (RUN/logs/analysis.jsonl), one line per run.
mtpf analyze depth-sweep CONFIG.yaml --layers 1,2,4 [--out DIR] [key=value ...]
                          [--evaluate --ner DIR... --cls DIR...]
    Figure 4: one mtpf-tpl run per TPL depth (DIR/layers-N, resumable), optional downstream evaluation, plot.
mtpf analyze depth-plot DIR --out fig4.png
    Figure 4 from an existing sweep folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtpf.config import bounded_int, positive_int, seed_int
from mtpf.device import CHOICES_HELP as DEVICE_HELP

MODES = ("plot", "depth-sweep", "depth-plot", "measure")


def _measure_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument(
        "--ner-data",
        default=d(None),
        metavar="DIR",
        help="NER dataset folder ({split}.jsonl[.gz], IOB2/IOB1/BIOES) or JSONL file; default: "
        "$MTPF_DATA_DIR/ner/conll2003 or ../shared/data/ner/conll2003",
    )
    p.add_argument("--split", default=d("test"), help="split of the dataset folder (default: test)")
    p.add_argument("--sentences", type=int, default=d(2000), help="sentences per finding (default 2000)")
    p.add_argument("--variants", type=int, default=d(4), help="perturbed variants per sentence (default 4)")
    p.add_argument("--seed", type=seed_int, default=d(0), help="seed of the sentence sample and the replacements")
    p.add_argument("--batch-size", type=positive_int, default=d(64))
    p.add_argument("--max-length", type=bounded_int(4), default=d(256),
                   help="tokens per sentence, special tokens included (at least 4; default 256)")
    p.add_argument(
        "--adapter",
        action="append",
        default=d(None),
        metavar="NAME",
        help="adapters of a run folder to measure besides the backbone (repeat); 'all' (default) or 'none'",
    )
    p.add_argument("--threads", type=positive_int, default=d(None), help="torch CPU threads")
    p.add_argument("--device", default=d("auto"), help=f"where the model runs: {DEVICE_HELP} (default auto)")
    p.add_argument("--json", default=d(None), metavar="OUT", help="also write the results as JSON")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="representation analysis: Findings 1-2 (Fig. 3), TPL depth sweep (Fig. 4)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _measure_options(p, defaults=False)
    p.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="MODEL | plot ... | depth-sweep ... | depth-plot ...",
        help="a model to measure, or a mode with its own arguments (`mtpf analyze MODE --help`)",
    )
    p.set_defaults(func=_dispatch, _analyze_parser=p)


def _dispatch(args) -> int:
    argv = list(args.argv)
    if not argv:
        args._analyze_parser.print_help()
        return 2
    mode = argv[0] if argv[0] in MODES else "measure"
    rest = argv[1:] if argv[0] in MODES else argv
    handler = {
        "measure": _measure_parser,
        "plot": _plot_parser,
        "depth-sweep": _sweep_parser,
        "depth-plot": _depth_plot_parser,
    }[mode]
    parser = handler()
    # options given before MODEL (on `mtpf analyze` itself) are kept; those after it win
    ns = argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k not in ("argv", "func", "_analyze_parser")}
    )
    sub_args = parser.parse_intermixed_args(rest, namespace=ns)
    return int(sub_args.run(sub_args) or 0)


# ----------------------------------------------------------------------------------------------- measure
def _measure_parser():
    p = argparse.ArgumentParser(prog="mtpf analyze", description="Findings 1 and 2 of one model.")
    p.add_argument("model", help="mtpf run folder, HF folder, hub name, or 'packaged'")
    _measure_options(p)
    p.set_defaults(run=_measure)
    return p


def default_ner_data() -> str:
    import os

    from mtpf.config import ConfigError

    candidates = []
    if os.environ.get("MTPF_DATA_DIR"):
        candidates.append(Path(os.environ["MTPF_DATA_DIR"]) / "ner" / "conll2003")
    candidates.append(Path("..") / "shared" / "data" / "ner" / "conll2003")
    for c in candidates:
        if c.is_dir():
            return str(c)
    raise ConfigError(
        "no CoNLL-2003 folder found (looked in " + ", ".join(map(str, candidates)) + "); pass --ner-data DIR"
    )


def load_for_analysis(ref: str, adapters: list[str] | None = None):
    """``(encoder, tokenizer, {name: name}, description)`` for a run folder (backbone + its adapters), an HF
    folder, a hub name or 'packaged'. ``adapters``: None/['all'] = every adapter of a run, ['none'] = none."""
    from mtpf.config import ConfigError
    from mtpf.encoder import load_encoder, load_tokenizer

    path = Path(ref)
    run_adapters = {}
    if (path / "backbone" / "config.json").is_file():
        backbone = path / "backbone"
        for d in sorted((path / "adapters").glob("*")) if (path / "adapters").is_dir() else []:
            if (d / "adapter_config.json").is_file():
                run_adapters[d.name] = d
        if (path / "run.json").is_file():  # the names run.json gives, when it lists them
            listed = json.loads((path / "run.json").read_text()).get("adapters") or {}
            for name, p in listed.items():
                cand = Path(p) if Path(p).is_absolute() else path / p
                if (cand / "adapter_config.json").is_file():
                    run_adapters[name] = cand
    else:
        backbone = ref
    wanted = adapters or ["all"]
    if "none" in wanted:
        chosen = {}
    elif "all" in wanted:
        chosen = run_adapters
    else:
        missing = [a for a in wanted if a not in run_adapters]
        if missing:
            raise ConfigError(f"{ref}: no adapter {missing[0]!r} (has: {sorted(run_adapters) or 'none'})")
        chosen = {a: run_adapters[a] for a in wanted}
    tokenizer = load_tokenizer(str(backbone))
    model = load_encoder(str(backbone))
    if chosen:
        from peft import PeftModel

        names = list(chosen)
        model = PeftModel.from_pretrained(model, str(chosen[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(chosen[name]), adapter_name=name)
    from mtpf.encoder import resolve_model

    desc = resolve_model(str(backbone)) + (f" + adapters {', '.join(chosen)}" if chosen else "")
    return model, tokenizer, {n: n for n in chosen}, desc


def _measure(args) -> int:
    import time

    import torch

    from mtpf.analysis.track import Tracker
    from mtpf.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    tracker = Tracker(
        args.ner_data or default_ner_data(),
        sentences=args.sentences,
        variants=args.variants,
        seed=args.seed,
        batch_size=args.batch_size,
        max_length=args.max_length,
        split=args.split,
    )
    model, tokenizer, adapters, desc = load_for_analysis(args.model, args.adapter)
    model = model.to(device)
    t1 = time.perf_counter()
    result = tracker.measure(model, tokenizer, adapters)  # fp32, as the tracker measures during pre-finetuning
    seconds = time.perf_counter() - t1
    info = tracker.info
    print(f"model: {desc}")
    print(
        f"data:  {info['source']}: {info['perturbed_sentences']} sentences with entities"
        f" x {info['variants']} "
        f"variants (Finding 1), {info['homogeneity_sentences']} sentences (Finding 2)"
    )
    rows = [("(backbone)", "")] + [(name, f"@{name}") for name in adapters]
    print(f"\n{'adapter':<12} {'perturbed_cosine':>17} {'token_homogeneity':>18}")
    for label, sfx in rows:
        print(
            f"{label:<12} {result['perturbed_cosine' + sfx]:>17.4f}"
            f" {result['token_homogeneity' + sfx]:>18.4f}"
        )
    print(
        f"\nmeasured in {seconds:.1f} s (setup {t1 - t0:.1f} s, "
        f"{device if device.type != 'cpu' else f'{torch.get_num_threads()} CPU threads'})"
    )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "description": desc,
                    **result,
                    "data": info,
                    "seconds": round(seconds, 2),
                    "device": str(device),
                },
                indent=2,
            )
        )
        print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------------------------- plots
def _plot_parser():
    p = argparse.ArgumentParser(
        prog="mtpf analyze plot",
        description="Figure 3: Findings 1 and 2 vs step, one line per run "
        "(RUN/logs/analysis.jsonl; labels from RUN/pretrain_config.json strategy).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="fig3.png", help="PNG to write (default fig3.png)")
    p.add_argument(
        "--adapter", default=None, help="plot the measurements with this adapter active (KEY of @KEY)"
    )
    p.add_argument("--losses", action="store_true", help="add NER/TC loss panels from RUN/logs/metrics.jsonl")
    p.add_argument("--label", action="append", default=None, help="curve label per run, in order (repeat)")
    p.set_defaults(run=_plot)
    return p


def _plot(args) -> int:
    from mtpf.analysis.plots import plot_findings

    if args.label and len(args.label) != len(args.runs):
        from mtpf.config import ConfigError

        raise ConfigError(f"{len(args.label)} --label for {len(args.runs)} runs")
    adapter = args.adapter if isinstance(args.adapter, str) or args.adapter is None else args.adapter[-1]
    print(f"wrote {plot_findings(args.runs, args.out, adapter, args.losses, args.label)}")
    return 0


def _depth_plot_parser():
    p = argparse.ArgumentParser(
        prog="mtpf analyze depth-plot", description="Figure 4 from a depth-sweep folder (DIR/layers-N)."
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--out", default=None, help="PNG to write (default DIR/fig4.png)")
    p.set_defaults(run=_depth_plot)
    return p


def _print_summary(summary: dict) -> None:
    print(f"{'layers':>6} {'steps':>6} {'loss_ner':>9} {'loss_tc':>9} {'NER avg':>8} {'TC avg':>8}")
    for n, row in summary["layers"].items():
        d = row.get("downstream", {})

        def f(v, spec):
            return format(v, spec) if isinstance(v, (int, float)) else "—"

        print(
            f"{n:>6} {f(row.get('steps'), 'd'):>6} {f(row.get('final_loss_ner'), '.4f'):>9} "
            f"{f(row.get('final_loss_tc'), '.4f'):>9} {f(d.get('ner'), '.1f'):>8} {f(d.get('tc'), '.1f'):>8}"
        )


def _depth_plot(args) -> int:
    from mtpf.analysis.plots import depth_summary, plot_depth

    out = plot_depth(args.dir, args.out or Path(args.dir) / "fig4.png")
    _print_summary(depth_summary(args.dir))
    print(f"wrote {out}")
    return 0


def _sweep_parser():
    p = argparse.ArgumentParser(
        prog="mtpf analyze depth-sweep",
        description="Pre-finetune with task-primary LoRAs on the last N layers for each N (Figure 4); "
        "one run per depth in OUT/layers-N (skipped when OUT/layers-N/run.json exists).",
    )
    p.add_argument("config", nargs="?", help="pretrain YAML config (strategy mtpf-tpl or pf-lora)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the pretrain config")
    p.add_argument("--layers", action="append", default=[], help="comma list of depths, repeatable (default 1,2,4)")
    p.add_argument("--out", default=None, help="sweep folder (default: the config's output_dir + '-depth')")
    p.add_argument(
        "--evaluate", action="store_true", help="run the downstream suite on each depth (OUT/layers-N/eval)"
    )
    p.add_argument(
        "--ner",
        nargs="*",
        action="extend",
        default=[],
        metavar="DIR",
        help="NER datasets for --evaluate (put key=value before it)",
    )
    p.add_argument(
        "--cls", nargs="*", action="extend", default=[], metavar="DIR",
        help="classification datasets for --evaluate",
    )
    p.add_argument("--data-dir", default=None, help="every ner/* and cls/* of this folder, for --evaluate")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--device", default="auto", help=f"where --evaluate runs: {DEVICE_HELP} (default auto)")
    p.set_defaults(run=_sweep)
    return p


def _sweep(args) -> int:
    from mtpf.analysis.sweep import depth_sweep, parse_layers

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    out = args.out
    if out is None:
        from mtpf.config import load_config
        from mtpf.recipes.pretrain import PretrainConfig

        out = load_config(PretrainConfig, config, overrides).output_dir.rstrip("/") + "-depth"
    ner, cls = list(args.ner), list(args.cls)
    if args.data_dir and not ner and not cls:
        root = Path(args.data_dir)
        ner = sorted(str(p) for p in (root / "ner").glob("*") if p.is_dir())
        cls = sorted(str(p) for p in (root / "cls").glob("*") if p.is_dir())
    from mtpf.device import resolve_device

    device = str(resolve_device(args.device))
    summary = depth_sweep(
        config, parse_layers(",".join(args.layers) or "1,2,4"), out, overrides, args.evaluate, ner, cls, plot=not args.no_plot,
        device=device,
    )
    _print_summary(summary)
    print(f"sweep folder: {out}" + (f"\nwrote {summary['figure']}" if "figure" in summary else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from mtpf.cli import main

    sys.exit(main(["analyze", *sys.argv[1:]]))
