"""``mtpf demo``: the whole pipeline, offline, in a few minutes on a laptop CPU.

    label (teacher pseudo-labels) -> pretrain (mtpf-tpl) -> adapt + evaluate (NER, TC) vs the base model
    -> export (ONNX) -> runtime (one backbone, two apps) -> answer one NER and one TC request

Runs on the small template-generated sample corpus bundled with the package (or ``--data-dir`` in the
``../shared/data`` layout) with the packaged all-MiniLM-L6-v2 as base model and teacher. Everything is
written under ``--out`` and resumes: re-running skips finished stages (with other data, datasets, steps or
int8 setting it refuses the folder: ``--fresh`` starts it over). A stage counts as finished only when
its folder holds the marker written last (:mod:`mtpf.stages`), so a stage cut by Ctrl-C is redone.

The sample is tiny and synthetic: its scores show that the pipeline works, not how good the method is.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from mtpf.stages import clear_partial, mark_done, stage_done

SAMPLE_DATA = Path(__file__).parent / "sample_data"

DISCLAIMER = (
    "These numbers come from a few minutes of training on a tiny template-generated sample. They show the\n"
    "pipeline works end to end; they say nothing about the quality of the method or of the models."
)


def _pick(folder: Path, preferred: str | None) -> Path:
    from mtpf.data.io import DataError

    if not folder.is_dir():
        raise DataError(folder, None, "no such folder; --data-dir must be in the ../shared/data layout "
                                      "(ner/<name>/, cls/<name>/, pairs/, raw/)")
    options = sorted(p for p in folder.iterdir() if p.is_dir())
    if not options:
        from mtpf.data.io import DataError

        raise DataError(folder, None, "no dataset folders inside")
    if preferred:
        for p in options:
            if p.name == preferred:
                return p
        from mtpf.data.io import DataError

        raise DataError(folder, None, f"no dataset {preferred!r}; found {[p.name for p in options]}")
    return options[0]


SETTINGS = "demo-settings.json"  # what the folder's stages were made from; a re-run must use the same
DEMO_ENTRIES = {"labels", "run", "eval", "apps", "onnx", "demo.json", SETTINGS, SETTINGS + ".tmp",
                ".DS_Store"}  # (macOS Finder's folder metadata)


def _check_out(out: Path, settings: dict, fresh: bool) -> None:
    """Refuse an ``--out`` that holds anything but a demo's own outputs (``--fresh`` deletes the folder), and a
    demo folder made with other settings (its finished stages would be reused, silently stale)."""
    from mtpf.config import ConfigError

    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, expected a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES)
    if foreign:
        raise ConfigError(f"--out {out}: holds files that are not the demo's ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder (nothing was changed)")
    if fresh or not (out / SETTINGS).is_file():
        return  # a folder from before the settings file: its stages are kept
    try:
        old = json.loads((out / SETTINGS).read_text())
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    if changed:
        raise ConfigError(f"--out {out}: was made with other settings ({'; '.join(changed)}); pass --fresh to "
                          "start it over, or choose another --out (nothing was changed)")


class Demo:
    def __init__(self, out: Path, data_dir: Path, ner_name: str | None, cls_name: str | None, steps: int,
                 fresh: bool, export_int8: bool, console, device: str = "auto"):
        self.out, self.data, self.device = out, data_dir, device
        self.ner_dir = _pick(data_dir / "ner", ner_name)
        self.cls_dir = _pick(data_dir / "cls", cls_name)
        self.steps, self.int8 = steps, export_int8
        self.console = console
        self.timings: dict[str, float] = {}
        settings = {"data_dir": str(data_dir.resolve()), "ner": self.ner_dir.name, "cls": self.cls_dir.name,
                    "steps": steps, "int8": export_int8}
        _check_out(out, settings, fresh)
        if fresh and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (SETTINGS + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2))
        tmp.replace(out / SETTINGS)

    def stage(self, n: int, title: str):
        self.console.rule(f"[bold]{n}/6 {title}")
        return time.perf_counter()

    def done(self, name: str, t0: float) -> None:
        self.timings[name] = time.perf_counter() - t0
        self.console.print(f"[green]done[/] in {self.timings[name]:.0f} s")

    # 1 ------------------------------------------------------------------------------------------------
    def label(self) -> Path:
        from mtpf.teacher.label import LabelConfig, label_corpus

        t0 = self.stage(1, "teacher pseudo-labels (mtpf label): packaged all-MiniLM-L6-v2, k-means K=20")
        out = self.out / "labels"
        if stage_done(out):
            self.console.print(f"already labelled: {out}")
        else:  # label_corpus resumes by finished shard
            label_corpus(LabelConfig(teacher="packaged", corpus=[str(self.data / "raw")], out=str(out), clusters=20,
                                     fit_words=20_000, shard_sentences=5_000, seed=0, device=self.device),
                        log=self.console.print)
            mark_done(out, required=("clusters.json",))
        self.done("label", t0)
        return out

    # 2 ------------------------------------------------------------------------------------------------
    def pretrain(self, labels: Path) -> Path:
        from mtpf.config import load_config
        from mtpf.recipes.pretrain import PretrainConfig, run

        t0 = self.stage(2, f"multi-task pre-finetuning with task-primary LoRAs (mtpf pretrain, {self.steps} steps)")
        run_dir = self.out / "run"
        if stage_done(run_dir):
            self.console.print(f"already pre-finetuned: {run_dir}")
        else:  # resumes from the last checkpoint (and redoes the export when only that was cut)
            resume = (run_dir / "checkpoints").is_dir()
            cfg = load_config(PretrainConfig, None, [
                "strategy=mtpf-tpl", "model=packaged", f"output_dir={run_dir}", f"max_steps={self.steps}",
                # lists as JSON (quoted strings): a folder name with ", " or " #" stays one path
                f"ner_data={json.dumps([str(labels)])}", f"pairs={json.dumps([str(self.data / 'pairs')])}",
                "ner_batch_size=16", "tc_batch_size=32",
                "tc_mini_batch_size=16", "max_length=48", "lr=5e-5", "head_lr=1e-3", "warmup_ratio=0.1",
                f"save_every={max(1, self.steps // 3)}", "log_every=5", f"resume={str(resume).lower()}",
            ])
            run(cfg)
            mark_done(run_dir, required=("run.json", "backbone/config.json", "sentence_transformer/modules.json"))
        self.done("pretrain", t0)
        return run_dir

    # 3 ------------------------------------------------------------------------------------------------
    def evaluate(self, run_dir: Path) -> dict:
        from mtpf.downstream.ner import NerConfig
        from mtpf.downstream.suite import SuiteConfig, run_suite
        from mtpf.downstream.tc import TCConfig

        t0 = self.stage(3, "downstream adaptation and evaluation vs the base model (mtpf evaluate)")
        eval_dir = self.out / "eval"
        ner_cfg = NerConfig(epochs_warmup=2, epochs=3, batch_size=32, lr=3e-4, head_lr=1e-3)
        # run_suite records every finished cell atomically in results.json and resumes from there
        res = run_suite(SuiteConfig(
            models=[("Base model", "packaged"), ("MTPF-TPL", str(run_dir))], base="Base model",
            output=str(eval_dir), ner=[str(self.ner_dir)], cls=[str(self.cls_dir)], ner_cfg=ner_cfg,
            tc_cfg=TCConfig(), save_apps=True, device=self.device))
        mark_done(eval_dir, required=("results.json", "tables.md"))
        self.done("evaluate", t0)
        return res

    # 4 ------------------------------------------------------------------------------------------------
    def apps(self, run_dir: Path) -> dict[str, Path]:
        from mtpf.downstream.data import load_cls_dataset
        from mtpf.downstream.models import resolve
        from mtpf.downstream.tc import TCConfig, adapt_tc

        t0 = self.stage(4, "app adapters: NER (LoRA + token head) and TC (tc LoRA + classifier)")
        folder = self.out / "apps"
        ner_app = folder / f"ner-{self.ner_dir.name}"
        tc_app = folder / f"tc-{self.cls_dir.name}"
        if stage_done(folder):
            self.console.print(f"already adapted: {folder}")
        else:
            clear_partial(folder)
            # the evaluation already trained the NER app (--save-apps): both apps go under one folder
            from mtpf.downstream.suite import app_folder_name

            shutil.copytree(self.out / "eval" / "apps" / app_folder_name("MTPF-TPL", self.ner_dir.name, 1.0, 42),
                            ner_app)
            adapt_tc(resolve(str(run_dir), "MTPF-TPL"), load_cls_dataset(str(self.cls_dir)), tc_app, TCConfig(),
                     cache_dir=str(self.out / "eval" / "cache"), progress=False, device=self.device)
            mark_done(folder, required=(f"{ner_app.name}/mtpf_app.json", f"{tc_app.name}/mtpf_app.json"))
        self.console.print(f"NER app: {ner_app}\nTC app:  {tc_app}")
        self.done("apps", t0)
        return {"ner": ner_app, "tc": tc_app}

    # 5 ------------------------------------------------------------------------------------------------
    def export(self, run_dir: Path, apps: dict[str, Path]) -> dict:
        from mtpf.runtime.export_cli import export_path

        t0 = self.stage(5, "export: ONNX backbone, task-primary adapters and apps (verified against PyTorch)")
        import logging

        # onnxruntime's quantizer logs a pre-processing hint on the root logger for every graph
        logging.getLogger().setLevel(logging.ERROR)
        reports = {}
        folder = self.out / "onnx"
        if stage_done(folder):
            self.console.print(f"already exported: {folder}")
        else:  # graphs are not resumable: a cut export starts again
            if clear_partial(folder):
                self.console.print(f"redoing the interrupted export in {folder}")
            reports.update(export_path(str(run_dir), out=str(folder), int8=self.int8))
            for name, app in apps.items():
                reports.update(export_path(str(app), out=str(folder / "apps" / name),
                                           backbone=str(run_dir / "backbone"), int8=self.int8))
            mark_done(folder, required=("backbone/export.json", *(f"apps/{n}/export.json" for n in apps)))
        for path, rep in reports.items():
            self.console.print(f"{path}: {_short_report(rep)}")
        self.done("export", t0)
        return reports

    # 6 ------------------------------------------------------------------------------------------------
    def serve(self, run_dir: Path, apps: dict[str, Path]) -> dict:
        from mtpf.device import device_kwargs
        from mtpf.runtime.core import Runtime

        t0 = self.stage(6, "runtime: one shared backbone, two registered apps")
        runtime = Runtime(run_dir / "backbone", **device_kwargs(Runtime, self.device))
        try:
            runtime.register_app("news-ner", apps["ner"])
            runtime.register_app("assistant-intents", apps["tc"])
            ner_text = "Maria Lopez flew from Berlin to Toronto to meet Atlas Motors on Monday."
            tc_text = "please send 50 euros to Tom Baker"
            entities = runtime.extract_entities("news-ner", [ner_text])[0]
            label = runtime.classify("assistant-intents", [tc_text])[0]
        finally:
            runtime.close()
        self.console.print(f"[bold]extract_entities[/]({ner_text!r})")
        for e in entities:
            self.console.print(f"  {e['type']:6} {e['text']!r} [{e['start']}:{e['end']}] score {e['score']:.2f}")
        if not entities:
            self.console.print("  (no entities found)")
        top = label.get("label")
        self.console.print(f"[bold]classify[/]({tc_text!r}) -> {top} (p={label['probabilities'][top]:.2f})")
        self.done("runtime", t0)
        return {"entities": entities, "classification": label}


def _short_report(rep: dict) -> str:
    parts = []
    rep = rep.get("verification", rep)
    for kind in ("fp32", "int8"):
        if kind in rep:
            r = rep[kind]
            parts.append(f"{kind}: max|diff| {r.get('max_abs_diff', float('nan')):.2g}, "
                         f"mean cosine {r.get('mean_cosine', float('nan')):.4f}"
                         f"{'' if r.get('passed', True) else ' (OUTSIDE TOLERANCE)'}")
    return "; ".join(parts) or "ok"


def run_demo(out: str = "runs/demo", data_dir: str | None = None, ner: str | None = None, cls: str | None = None,
             steps: int = 40, fresh: bool = False, int8: bool = True, device: str = "auto") -> dict:
    from rich.console import Console

    from mtpf.device import resolve_device

    device = str(resolve_device(device))  # a bad --device fails before any work

    console = Console(soft_wrap=True)
    data = Path(data_dir) if data_dir else SAMPLE_DATA
    demo = Demo(Path(out), data, ner, cls, steps, fresh, int8, console, device)
    console.print(f"[bold]mtpf demo[/]: data {data}{'  (bundled sample)' if not data_dir else ''}, "
                  f"NER set {demo.ner_dir.name}, TC set {demo.cls_dir.name}, output {out}")
    t_all = time.perf_counter()
    labels = demo.label()
    run_dir = demo.pretrain(labels)
    evaluation = demo.evaluate(run_dir)
    apps = demo.apps(run_dir)
    exports = demo.export(run_dir, apps)
    answers = demo.serve(run_dir, apps)
    total = time.perf_counter() - t_all

    console.rule("[bold]results")
    console.print(Path(evaluation["tables_md"]).read_text() if "tables_md" in evaluation
                  else Path(out, "eval", "tables.md").read_text())
    console.print(f"[yellow]{DISCLAIMER}[/]")
    console.rule("[bold]artifacts")
    rows = [
        ("pseudo-labels", labels), ("run folder", run_dir), ("backbone (HF)", run_dir / "backbone"),
        ("task-primary adapters (PEFT)", run_dir / "adapters"),
        ("sentence-transformers model", run_dir / "sentence_transformer"),
        ("evaluation (results.json, tables.md/.csv, chart.png)", Path(out) / "eval"),
        ("NER app adapter", apps["ner"]), ("TC app adapter", apps["tc"]), ("ONNX exports", Path(out) / "onnx"),
    ]
    for name, path in rows:
        console.print(f"  {name:52} {path}")
    console.print(f"\nfinished in {total / 60:.1f} min "
                  f"({', '.join(f'{k} {v:.0f}s' for k, v in demo.timings.items())})")
    console.rule("[bold]next: real data")
    console.print(
        "  mtpf demo --data-dir ../shared/data --ner conll2003 --cls banking77     # this pipeline on real data\n"
        "  mtpf label --teacher packaged --corpus ../shared/data/raw --clusters 200 --out runs/labels/raw-k200\n"
        "  mtpf pretrain configs/local/mtpf-tpl.yaml                              # ~10 min here\n"
        "  mtpf evaluate --model \"Base model=packaged\" --model \"MTPF-TPL=runs/local/mtpf-tpl\" "
        "--base \"Base model\" --data-dir ../shared/data --output runs/eval\n"
        "  paper scale (hub models, NuNER teacher, GPU): configs/paper/*.yaml")
    summary = {"out": out, "minutes": total / 60, "timings": demo.timings, "answers": answers,
               "evaluation": evaluation, "exports": list(exports)}
    (Path(out) / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def add_parser(sub) -> None:
    from mtpf.config import positive_int
    from mtpf.device import add_device_argument

    p = sub.add_parser("demo", help="run the whole pipeline offline on bundled sample data (a few minutes)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); re-runs resume")
    p.add_argument("--data-dir", help="a folder in the ../shared/data layout instead of the bundled sample")
    p.add_argument("--ner", action="append", help="NER dataset name under DATA/ner (default: the first)")
    p.add_argument("--cls", action="append", help="classification dataset name under DATA/cls (default: the first)")
    p.add_argument("--steps", type=positive_int, default=40, help="pre-finetuning steps (default 40)")
    p.add_argument("--fresh", action="store_true", help="delete --out (a demo folder) first instead of resuming")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX exports")
    add_device_argument(p, "labelling, evaluation and the runtime")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from mtpf.config import ConfigError

    for flag, names in (("--ner", args.ner), ("--cls", args.cls)):
        if names and len(names) > 1:  # the demo runs one dataset per task: never drop one silently
            raise ConfigError(f"{flag} given {len(names)} times ({', '.join(names)}); the demo takes one")
    run_demo(args.out, args.data_dir, args.ner and args.ner[0], args.cls and args.cls[0], args.steps, args.fresh,
             not args.no_int8, args.device)
    return 0
