"""``mtpf adapt ner|tc`` (one app adapter) and ``mtpf evaluate`` (the paper's tables)."""
from __future__ import annotations

import argparse
import json

from mtpf.config import positive_int, seed_int
from mtpf.device import add_device_argument
from mtpf.downstream.ner_config import RECIPES


def _ner_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NER adaptation (recipe defaults; --recipe paper = Appendix A as stated)")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="default: separate head/LoRA learning rates, a minimum of optimizer steps per stage, "
                        "early stopping on a dev subsample (works from 200 to 14k sentences); paper: 10 + 30 "
                        "epochs, batch 64, lr 2e-5, whole dev every epoch. Flags below override the recipe")
    g.add_argument("--epochs-warmup", type=int, default=None,
                   help="stage 1: epochs training the head alone (default 3, at least --min-steps-warmup steps; "
                        "paper 10)")
    g.add_argument("--epochs", type=int, default=None,
                   help="stage 2: epochs training LoRA + head (default up to 10, at least --min-steps steps, "
                        "early stopping; paper 30)")
    g.add_argument("--quick", action="store_true",
                   help="quick run: 1 warm-up epoch + 2 LoRA epochs (overrides --epochs-warmup/--epochs)")
    g.add_argument("--batch-size", type=int, default=None, help="sentences per batch (default 16; paper 64)")
    g.add_argument("--lr", type=float, default=None, help="AdamW learning rate of LoRA (default 5e-4; paper 2e-5)")
    g.add_argument("--head-lr", type=float, default=None,
                   help="learning rate of the head (default 1e-3; paper: --lr)")
    g.add_argument("--min-steps-warmup", type=int, default=None,
                   help="stage 1 takes at least this many optimizer steps (default 300; paper 0)")
    g.add_argument("--min-steps", type=int, default=None,
                   help="stage 2 takes at least this many optimizer steps (default 400; paper 0)")
    g.add_argument("--dev-sentences", type=int, default=None,
                   help="model selection scores a seeded subsample of this many dev sentences; 0 = the whole dev "
                        "split (default 1000; paper 0)")
    g.add_argument("--eval-every", type=int, default=None,
                   help="score dev every N epochs; 0 = auto, so scoring costs no more than the training it selects "
                        "from (default 0; paper 1)")
    g.add_argument("--patience", type=int, default=None,
                   help="stop after N dev scorings without improvement; 0 = never (default 4; paper 0)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (0.01)")
    g.add_argument("--scheduler", choices=["constant", "linear"], default=None,
                   help="learning-rate schedule within each stage (default linear; paper constant)")
    g.add_argument("--lora-rank", type=int, default=32)
    g.add_argument("--lora-alpha", type=int, default=64)
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--lora-layers", default="all", help="'all' or N (the last N layers)")
    g.add_argument("--lora-targets", default="query,key,mlp", help="comma list of query,key,value,attn_out,mlp")
    g.add_argument("--no-adapter-init", action="store_true",
                   help="do not initialise LoRA from the model's ner task-primary adapter")
    g.add_argument("--select", choices=["auto", "dev", "last"], default="auto",
                   help="model selection: best dev F1 epoch (auto: when a dev split exists) or last epoch")
    g.add_argument("--ner-max-length", type=int, default=None, help="tokens per window (default: the model's)")


def _tc_args(p: argparse.ArgumentParser, protocol: bool = True) -> None:
    """Text-classification options. ``protocol``: the MTEB protocol's (evaluation); without it, the options of
    ``mtpf adapt tc``, which fits one logistic regression on the whole train split (the runtime applies its
    weights as a linear head, so no other classifier and no undersampling)."""
    if protocol:
        g = p.add_argument_group("text classification (MTEB protocol)")
        g.add_argument("--samples-per-label", default="auto",
                       help="auto (8; Emotion 16; TweetSentimentExtraction/AmazonCounterfactual 32), N, or full")
        g.add_argument("--n-experiments", type=int, default=10, help="undersampling experiments (10)")
        g.add_argument("--classifier", default="logreg", help="logreg, or module:Class of a sklearn classifier")
        g.add_argument("--max-iter", type=int, default=100, help="LogisticRegression max_iter (100, as mteb)")
        g.add_argument("--classifier-args", default="{}", help="JSON keyword arguments of the classifier")
    else:
        g = p.add_argument_group("text classification (logistic regression on the whole train split)")
        g.add_argument("--max-iter", type=int, default=1000, help="LogisticRegression max_iter (1000)")
        g.add_argument("--classifier-args", default="{}",
                       help="JSON keyword arguments of sklearn's LogisticRegression, e.g. '{\"C\": 0.5}'")
    g.add_argument("--normalize", choices=["auto", "true", "false"], default="auto",
                   help="L2-normalise embeddings (auto: as the model's sentence-transformers pipeline)")
    g.add_argument("--tc-max-length", type=int, default=None, help="token limit (default: the model's); longer "
                                                                   "texts are truncated")
    g.add_argument("--no-tc-adapter", action="store_true", help="ignore the model's tc task-primary adapter")


def _ner_config(args):
    from mtpf.downstream.ner import QUICK, NerConfig

    kw = dict(recipe=args.recipe, epochs_warmup=args.epochs_warmup, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr, head_lr=args.head_lr, weight_decay=args.weight_decay, scheduler=args.scheduler,
              min_steps_warmup=args.min_steps_warmup, min_steps=args.min_steps, dev_sentences=args.dev_sentences,
              eval_every=args.eval_every, patience=args.patience,
              lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
              lora_layers=args.lora_layers, lora_targets=[t.strip() for t in args.lora_targets.split(",") if t.strip()],
              init_from_ner_adapter=not args.no_adapter_init, select=args.select, max_length=args.ner_max_length)
    if args.quick:
        kw.update(QUICK)
    return NerConfig(**kw)


def _tc_config(args):
    from mtpf.config import ConfigError
    from mtpf.downstream.tc import TCConfig

    try:
        extra = json.loads(args.classifier_args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--classifier-args is not valid JSON: {exc}") from None
    if not isinstance(extra, dict):
        raise ConfigError(f"--classifier-args must be a JSON object of keyword arguments, e.g. '{{\"C\": 0.5}}', "
                          f"got {args.classifier_args!r}")
    protocol = {k: getattr(args, k) for k in ("samples_per_label", "n_experiments", "classifier")
                if hasattr(args, k)}  # `mtpf adapt tc` has none of them (logistic regression on all of train)
    return TCConfig(max_iter=args.max_iter, classifier_args=extra, normalize=args.normalize,
                    max_length=args.tc_max_length, use_adapter=not args.no_tc_adapter, **protocol)


def add_parser(sub) -> None:
    adapt = sub.add_parser("adapt", help="adapt an encoder to one downstream task and save an app adapter")
    modes = adapt.add_subparsers(dest="mode", metavar="MODE")
    for mode, helptext in (("ner", "LoRA + token classifier (two stages), saved as a PEFT app adapter"),
                           ("tc", "logistic regression on mean-pooled embeddings of the whole train split")):
        # no abbreviations: `adapt tc --classifier X` (an `evaluate` option) would be read as --classifier-args
        p = modes.add_parser(mode, help=helptext, allow_abbrev=False)
        p.add_argument("--model", default="packaged", help="mtpf run folder, HF/sentence-transformers folder, "
                                                           "hub name, or 'packaged' (default)")
        p.add_argument("--data", required=True, help="dataset folder ({train,dev,test}.jsonl[.gz]) or hub name")
        p.add_argument("--output", required=True, help="app adapter folder to write (must be new or empty)")
        p.add_argument("--overwrite", action="store_true", help="replace --output when it already holds something")
        p.add_argument("--seed", type=seed_int, default=42)
        p.add_argument("--allow-unseen-labels", action="store_true",
                       help="score labels that occur only in dev/test as misses instead of refusing the data")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
        add_device_argument(p, "the encoder")
        if mode == "ner":
            p.add_argument("--fraction", type=float, default=1.0, help="seeded random share of train sentences")
            _ner_args(p)
        else:
            p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: none)")
            _tc_args(p, protocol=False)
        # an app is written whole at the end; NER adaptation saves a checkpoint after a LoRA epoch at most once a
        # minute (in .OUTPUT.checkpoint/ beside it), which a re-run continues from; TC's fit starts again
        p.set_defaults(func=_adapt, interrupt_hint=(
            "interrupted before the app was written; re-run the same command to continue from the last "
            "saved LoRA epoch (.OUTPUT.checkpoint/ beside the output)" if mode == "ner" else
            "interrupted before the app was written; re-run the same command to train it again"))
    adapt.set_defaults(func=lambda args: (adapt.print_help(), 2)[1])

    p = sub.add_parser("evaluate", help="downstream evaluation suite: results.json, tables.md/csv, chart.png",
                       description="Evaluate models on NER (LoRA adaptation) and text classification (MTEB "
                                   "protocol) datasets and write the paper's tables. Resumable.")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH",
                   help="a model to evaluate (repeat); LABEL=PATH or PATH; PATH: run folder, HF or "
                        "sentence-transformers folder, hub name, 'packaged'")
    p.add_argument("--base", default=None, help="label of the row the +/- are computed against (default: first)")
    p.add_argument("--ner", nargs="*", action="extend", default=[], metavar="DIR",
                   help="NER dataset folders (or hub names); repeatable")
    p.add_argument("--cls", nargs="*", action="extend", default=[], metavar="DIR",
                   help="classification dataset folders (or hub names); repeatable")
    p.add_argument("--data-dir", default=None,
                   help="a ../shared/data-style folder: every ner/* and cls/* inside, unless --ner/--cls are given")
    p.add_argument("--fractions", default="1.0", help="comma list of train shares for NER, e.g. 0.1,0.2,0.5")
    p.add_argument("--seeds", default="42", help="comma list of adaptation seeds, one cell each; seeds of earlier "
                                                 "runs accumulate; tables show mean ± 95%% interval")
    p.add_argument("--output", required=True, help="output folder (results.json, tables.md, tables.csv, chart.png)")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default OUTPUT/cache)")
    p.add_argument("--allow-unseen-labels", action="store_true",
                   help="score labels that occur only in dev/test as misses instead of refusing the data")
    p.add_argument("--save-apps", action="store_true", help="also save every NER cell's app adapter in OUTPUT/apps")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared CPU)")
    add_device_argument(p, "NER adaptation and TC embeddings")
    p.add_argument("--mteb-tasks", default=None,
                   help="instead: run the official mteb package (online) on each model's sentence-transformers "
                        "export for these comma-separated MTEB task names, results in OUTPUT/mteb")
    _ner_args(p)
    _tc_args(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("evaluate-runtime", help="score app adapters served by the runtime (e.g. ONNX int8)",
                       description="Evaluate what is deployed: app adapters served by mtpf.runtime.Runtime "
                                   "(PyTorch, ONNX or ONNX int8), NER test F1 and TC accuracy under the MTEB "
                                   "protocol, as one more row of the suite's tables. Resumable.")
    p.add_argument("--backbone", required=True, help="mtpf run folder, backbone folder or 'packaged'")
    p.add_argument("--label", required=True, help="row label, e.g. 'MTPF-TPL (runtime, ONNX int8)'")
    p.add_argument("--ner-app", action="append", default=[], metavar="DATASET=APP_DIR",
                   help="an NER app adapter and the dataset whose test split it tags (repeat)")
    p.add_argument("--tc-app", default=None, help="a TC app adapter whose embedding is scored on every --cls set")
    p.add_argument("--cls", nargs="*", action="extend", default=[], metavar="DIR",
                   help="classification dataset folders; repeatable")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    p.add_argument("--fp32", action="store_true", help="ONNX backend without int8 quantisation")
    p.add_argument("--onnx-dir", default=None, help="folder for the exported graphs (default: a cache folder)")
    p.add_argument("--with", dest="with_results", action="append", default=[], metavar="RESULTS_JSON",
                   help="also put the rows of this results.json (mtpf evaluate) in the tables (repeat)")
    p.add_argument("--base", default=None, help="label of the row the +/- are computed against")
    p.add_argument("--output", required=True, help="output folder (results.json, tables.md, tables.csv, chart.png)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads of torch / ONNX Runtime")
    add_device_argument(p, "the runtime (backbone and apps)")
    p.add_argument("--seed", type=seed_int, default=42, help="MTEB task seed")
    p.add_argument("--no-progress", action="store_true")
    _tc_args(p)
    p.set_defaults(func=_evaluate_runtime)


def _threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _adapt(args) -> int:
    from mtpf.config import ConfigError
    from mtpf.device import resolve_device
    from mtpf.stages import refuse_nonempty, refuse_unwritable

    if getattr(args, "output", None):
        refuse_nonempty(args.output, args.overwrite, inputs=[args.data, args.model, getattr(args, "cache_dir", None)])
        refuse_unwritable(args.output)
    _threads(args)
    device = resolve_device(args.device)
    from mtpf.downstream.models import resolve

    if args.mode == "ner":
        import shutil
        from pathlib import Path

        from mtpf.device import is_main_process
        from mtpf.downstream.data import load_ner_dataset
        from mtpf.downstream.ner import save_ner_app, train_ner

        cfg = _ner_config(args)
        dataset = load_ner_dataset(args.data, args.allow_unseen_labels)
        model = resolve(args.model)
        # beside the output, which stays untouched (an existing app under --overwrite too) until the new app
        # replaces it; a re-run of the command continues from it
        output = Path(args.output).resolve()
        ckpt = output.parent / f".{output.name}.checkpoint"
        res = train_ner(model, dataset, cfg, args.fraction, args.seed, progress=not args.no_progress,
                        keep_model=True, device=device, checkpoint_dir=ckpt)
        if not is_main_process():  # under `accelerate launch`: rank 0 alone writes (and reports) the app
            return 0
        save_ner_app(res, model, args.output, {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint,
                                               "fraction": args.fraction, "seed": args.seed,
                                               "config": cfg.to_dict()})
        shutil.rmtree(ckpt, ignore_errors=True)  # the app is written: nothing to continue
        print(f"NER app adapter: {args.output}  ({len(dataset.labels)} labels, selected on {res.selection}, "
              f"epoch {res.best_epoch})")
        if res.dev:
            print(f"  dev : P {100 * res.dev['precision']:.2f}  R {100 * res.dev['recall']:.2f}  "
                  f"F1 {100 * res.dev['f1']:.2f}")
        print(f"  test: P {100 * res.test['precision']:.2f}  R {100 * res.test['recall']:.2f}  "
              f"F1 {100 * res.test['f1']:.2f}")
        if res.initialised_modules:
            print(f"  LoRA initialised from the ner adapter on {len(res.initialised_modules)} modules")
        return 0
    if args.mode == "tc":
        from mtpf.downstream.data import load_cls_dataset
        from mtpf.downstream.tc import adapt_tc

        cfg = _tc_config(args)
        dataset = load_cls_dataset(args.data, args.allow_unseen_labels)
        model = resolve(args.model, normalize=cfg.normalize)
        meta = adapt_tc(model, dataset, args.output, cfg, args.seed, max_iter=args.max_iter,
                        cache_dir=args.cache_dir, progress=not args.no_progress, device=device)
        print(f"TC app adapter: {args.output}  ({len(meta['labels'])} labels, LoRA: {meta['has_lora']})")
        for split, m in meta["metrics"].items():
            print(f"  {split}: accuracy {100 * m['accuracy']:.2f}  macro-F1 {100 * m['f1']:.2f}")
        return 0
    raise ConfigError("choose a mode: mtpf adapt ner | mtpf adapt tc")


def _floats(text: str, what: str) -> list[float]:
    from mtpf.config import ConfigError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{what} must be a comma list of numbers, got {text!r}") from None


def _no_duplicates(refs: list[str], flag: str) -> None:
    """A dataset named twice would be evaluated twice under one name: refuse it (exit 2)."""
    from pathlib import Path

    from mtpf.config import ConfigError

    seen: dict[str, str] = {}
    for ref in refs:
        key = str(Path(ref).resolve()) if Path(ref).exists() else ref
        if key in seen:
            raise ConfigError(f"{flag}: dataset {ref!r} is named twice (as {seen[key]!r} too); name each once")
        seen[key] = ref


def _evaluate(args) -> int:
    from pathlib import Path

    from mtpf.config import ConfigError
    from mtpf.device import resolve_device
    from mtpf.downstream.models import parse_model_arg

    _threads(args)
    device = resolve_device(args.device)
    models = [parse_model_arg(m) for m in (args.model or ["packaged"])]
    if args.mteb_tasks:
        from mtpf.downstream.mteb_run import run_mteb

        run_mteb(models, [t.strip() for t in args.mteb_tasks.split(",") if t.strip()], Path(args.output) / "mteb",
                 device=str(device))
        return 0
    ner, cls = list(args.ner), list(args.cls)
    if args.data_dir and not ner and not cls:
        root = Path(args.data_dir)
        if not root.is_dir():
            raise ConfigError(f"--data-dir {root}: no such folder")
        ner = sorted(str(p) for p in (root / "ner").glob("*") if p.is_dir())
        cls = sorted(str(p) for p in (root / "cls").glob("*") if p.is_dir())
    _no_duplicates(ner, "--ner")
    _no_duplicates(cls, "--cls")
    from mtpf.downstream.suite import SuiteConfig, run_suite

    try:
        seeds = [seed_int(s) for s in args.seeds.split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--seeds {args.seeds!r}: each seed {exc}") from None
    cfg = SuiteConfig(models=models, output=args.output, ner=ner, cls=cls, fractions=_floats(args.fractions, "fractions"),
                      seeds=seeds, base=args.base, ner_cfg=_ner_config(args), tc_cfg=_tc_config(args),
                      cache_dir=args.cache_dir, allow_unseen_labels=args.allow_unseen_labels,
                      save_apps=args.save_apps, progress=not args.no_progress, device=str(device))
    info = run_suite(cfg)
    print(f"ran {info['ran']} cells, reused {info['skipped']}\n  {info['results']}\n  {info['tables_md']}\n"
          f"  {info['tables_csv']}\n  {info['chart']}")
    print(Path(info["tables_md"]).read_text())
    return 0


def _evaluate_runtime(args) -> int:
    from pathlib import Path

    from mtpf.config import ConfigError
    from mtpf.device import resolve_device
    from mtpf.downstream.runtime_eval import evaluate_runtime
    from mtpf.downstream.suite import read_cells
    from mtpf.downstream.tables import dataset_order, write_outputs

    _threads(args)
    device = resolve_device(args.device)
    ner_apps = []
    for item in args.ner_app:
        if "=" not in item:
            raise ConfigError(f"--ner-app {item!r}: expected DATASET=APP_DIR")
        ner_apps.append(tuple(item.split("=", 1)))
    _no_duplicates(list(args.cls), "--cls")
    if not ner_apps and not args.cls:
        raise ConfigError("give at least one --ner-app or --cls dataset")
    for path in args.with_results:  # read now: a bad file fails before the scoring, not after it
        read_cells(path)
    results = evaluate_runtime(args.backbone, args.label, args.output, ner_apps=ner_apps, tc_app=args.tc_app,
                               cls=list(args.cls), backend=args.backend, int8=not args.fp32,
                               tc_cfg=_tc_config(args), seed=args.seed, num_threads=args.threads,
                               onnx_dir=args.onnx_dir, progress=not args.no_progress, device=str(device))
    cells, models = [], []
    for path in args.with_results:
        other, labels = read_cells(path)
        cells += other
        models += [m for m in labels if m not in models]
    cells += results["cells"]
    models.append(args.label)
    paths = write_outputs(cells, models, args.base or models[0], Path(args.output), dataset_order(cells, "ner"),
                          dataset_order(cells, "tc"))
    print(Path(paths["tables_md"]).read_text())
    return 0
