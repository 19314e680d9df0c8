"""Drive the reproduction described by a ``configs/local/repro*.yaml``, resumable cell by cell across sessions.

label -> pretrain every model once per seed -> evaluate every (seed, model) cell -> score the embedded runtime
(int8 ONNX backbone + one model's app adapters, first seed) -> Figure 3 curves (first seed).

    python scripts/reproduce.py configs/local/repro-scaled.yaml [--only label|pretrain|evaluate|runtime|figures]
                                                                 [--seeds 42] [--models A,B] [--by-model]
                                                                 [--commit-results] [--status]

Seeds: ``seeds: [42, 43, 44]`` are replicate seeds. Replicate ``s`` pre-finetunes every model with ``seed=s`` and
adapts/evaluates it with seed ``s`` (NER adaptation seed and MTEB task seed), so the tables' intervals cover both
sources of variation and two models compared on seed ``s`` share everything but the method (paired differences).
``--seeds 42`` runs only that replicate now (finish one replicate per session; the tables fill seed by seed).

Order: by default every model is pre-finetuned before any is evaluated. ``--by-model`` pre-finetunes and evaluates
one (seed, model) at a time, seed by seed, models in the order of ``--models`` (else the config's), so on a slow
machine each finished model lands as results before the next one starts; a session that ends keeps whole models,
not pre-finetuned weights that only the next session's disk may still hold.

Jobs: ``--by-model --jobs 2`` runs two (seed, model) units at once, each command with ``OMP_NUM_THREADS`` = cores /
jobs (unless set). On a 2-core CPU two 1-thread trainings do ~13 % more work than one 2-thread one (MiniLM-L6
forward + backward + AdamW at batch 32 x 48, ``bench/bench_cpu_jobs.py``: median ratio 1.13 over five rounds,
1.00-1.23), and the single-threaded parts (data preparation, seqeval, logistic regression) no longer leave a core
idle. Each unit then takes longer on its own: ``timings.json`` records the ``jobs`` a unit ran with. Units never
share a run or evaluation folder; bookkeeping (timings, copies, commits) is serialised with a lock.

Resume: a run with ``run.json`` is not pre-finetuned again (an interrupted one resumes from its checkpoint); an
evaluation unit — one NER dataset at one train share, or all TC datasets — whose cells are already in its
``results.json`` is not started (the suite itself also skips recorded cells by key and writes results.json
atomically after every cell). A unit counts as done only if its cells were made with exactly the config its
command builds (recipe defaults resolved, ``args:`` flags included). A run killed at any point recomputes nothing
already recorded, and a fresh work folder (another machine, a wiped disk) starts from the committed
``results_dir``: recorded units are not evaluated again, and a model none of whose units is left is not
pre-finetuned again. ``--status`` (with the flags of the run) prints what is left, seed by seed and model by
model, and the wall time it should take at ``--jobs`` from the recorded ``timings.json``, without running or
writing anything.

Results: after every finished unit its results.json, the pre-finetuning logs and ``timings.json`` (wall time and
command of every unit) are copied to ``results_dir`` (default ``docs/results/<config name>``);
``--commit-results`` also commits that folder (``git commit -- results_dir``) after every unit, so a session that
ends loses at most the cell in flight. ``scripts/write_results.py results_dir --doc DOC`` turns it into a page (repro-scaled's is docs/results.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import yaml

MTPF = [sys.executable, "-m", "mtpf.cli"]
NER_KEYS = ("recipe", "epochs_warmup", "epochs", "batch_size", "lr", "head_lr")  # run keys that are NerConfig fields


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def slug(label: str) -> str:
    from mtpf.downstream.suite import _slug

    return _slug(label)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def copy_atomic(src: Path, dst: Path) -> None:
    """A killed copy leaves the old file (or none), never a torn one that a later session would commit."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def recorded(results: Path) -> list[dict]:
    try:
        return json.loads(results.read_text()).get("cells", [])
    except (OSError, json.JSONDecodeError):
        return []


def unit_done(results: Path, task: str, datasets: list[str], fractions: list[float], seed: int,
              config: dict | None = None) -> bool:
    """Every (dataset, fraction) of this unit has a cell at this seed, made with exactly ``config`` (the NER or TC
    config the unit's command builds, :func:`expected_config`) when given."""
    have = set()
    for c in recorded(results):
        if c.get("task") != task or int(c.get("seed", -1)) != seed:
            continue
        if config is not None and not same_config(c.get("config") or {}, config, task):
            continue
        have.add((c["dataset"], float(c["fraction"])))
    return all((Path(d).name, float(f)) in have for d in datasets for f in fractions)


def same_config(stored: dict, expected: dict, task: str) -> bool:
    """``stored`` (a cell's config) equals ``expected``; a field added to the config since the cell ran counts as
    equal when it is at its default (the default is what that cell ran with: e.g. NerConfig.cpu_speedups)."""
    from mtpf.downstream.ner import NerConfig
    from mtpf.downstream.tc import TCConfig

    defaults = {f.name: f.default for f in dataclasses.fields(NerConfig if task == "ner" else TCConfig)}
    return all(stored[k] == v if k in stored else defaults.get(k, dataclasses.MISSING) == v
               for k, v in expected.items())


def expected_config(evaluate_args: list[str], task: str) -> dict:
    """The NER or TC config that ``mtpf evaluate EVALUATE_ARGS`` builds and stores in each cell: the recipe
    defaults resolved, flags from ``args:`` included, so a unit made with another recipe is never taken as done."""
    from mtpf.cli import build_parser
    from mtpf.downstream.cli import _ner_config, _tc_config

    args = build_parser().parse_args(["evaluate", *evaluate_args])
    cfg = _ner_config(args) if task == "ner" else _tc_config(args)
    return json.loads(json.dumps(cfg.to_dict()))  # as stored in results.json


def _count(units: list[tuple[str, str]]) -> list[str]:
    pre = sum(part == "pretrain" for _, part in units)
    ev = len(units) - pre
    return ([f"{pre} pre-finetuning{'s' * (pre != 1)}"] if pre else []) + (
        [f"{ev} evaluation unit{'s' * (ev != 1)}"] if ev else [])


def estimate(name: str, part: str, timings: dict, jobs: int) -> float | None:
    """Seconds a planned unit should take: the same unit at another seed, else a unit of the same part on the same
    dataset and share (NER) or the same part (TC, pre-finetuning), preferring units run with the same ``jobs``."""
    def key(n):  # "evaluate s42 MTPF NER conll2003 @1 (full)" -> ("evaluate", "MTPF NER conll2003 @1 (full)")
        verb, _, rest = n.partition(" ")
        return verb, rest.partition(" ")[2] if rest.startswith("s") and rest[1:2].isdigit() else rest

    def tail(n):
        rest = key(n)[1]
        return rest.rsplit(" NER ", 1)[1] if " NER " in rest else None

    for same in (lambda n, t: key(n) == key(name),
                 lambda n, t: t["part"] == part and tail(n) == tail(name)):
        found = [t for n, t in timings.items() if same(n, t)]
        pick = [t for t in found if t.get("jobs", 1) == jobs] or found
        if pick:
            return float(sorted(t["seconds"] for t in pick)[len(pick) // 2])
    return None


class Repro:
    def __init__(self, cfg: dict, out: Path, results_dir: Path, commit: bool, run=sh, seeds=None, models=None,
                 jobs: int = 1):
        self.cfg, self.out, self.results_dir, self.commit, self.run = cfg, out, results_dir, commit, run
        self.jobs = jobs
        self.lock = threading.RLock()  # timings, result copies and git commits of concurrent units
        self.stop = threading.Event()  # set by a failed unit: no unit starts after it
        self.all_seeds = [int(s) for s in cfg.get("seeds", [42])]
        self.first = self.all_seeds[0]  # the runtime row and Figure 3 use this seed's runs
        self.seeds = [int(s) for s in seeds] if seeds else self.all_seeds  # this invocation's seeds
        self.models = {}  # label -> (config path or None, overrides, ref)
        for label, spec in cfg["models"].items():
            if isinstance(spec, dict):
                self.models[label] = (spec["config"], list(spec.get("overrides", [])), None)
            elif str(spec).endswith((".yaml", ".yml")):
                self.models[label] = (str(spec), [], None)
            else:
                self.models[label] = (None, [], str(spec))
        self.base = next(iter(self.models))
        self.selected = list(models) if models else list(self.models)  # this invocation's models, in order
        self.timings_path = results_dir / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        self._local = threading.local()  # `planned`, per thread: a unit's check must not plan another's steps

    @property
    def planned(self) -> list[tuple[str, str]] | None:
        """Not None: units are listed here (``--status``, ``needs_weights``), not run, and nothing is written."""
        return getattr(self._local, "planned", None)

    @planned.setter
    def planned(self, value: list[tuple[str, str]] | None) -> None:
        self._local.planned = value

    # ------------------------------------------------------------------ bookkeeping
    def step(self, name: str, part: str, cmd: list[str]) -> None:
        """Run one unit and record its wall time and command (the caller copies its results, then publishes)."""
        if self.planned is not None:
            self.planned.append((name, part))
            return
        t0 = time.perf_counter()
        self.run(cmd)
        with self.lock:
            self.timings[name] = {"part": part, "seconds": round(time.perf_counter() - t0, 1),
                                  "command": " ".join(cmd[len(MTPF):] if cmd[:len(MTPF)] == MTPF else cmd),
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": self.jobs}
            write_json(self.timings_path, self.timings)

    def publish(self, message: str) -> None:
        if not self.commit or self.planned is not None:
            return
        with self.lock:
            self._commit(message)

    def _commit(self, message: str) -> None:
        root = subprocess.run(["git", "-C", str(self.results_dir), "rev-parse", "--show-toplevel"],
                              capture_output=True, text=True, check=True).stdout.strip()
        rel = os.path.relpath(self.results_dir.resolve(), root)
        subprocess.run(["git", "-C", root, "add", "--", rel], check=True)
        staged = subprocess.run(["git", "-C", root, "diff", "--cached", "--quiet", "--", rel], check=False)
        if staged.returncode:
            subprocess.run(["git", "-C", root, "commit", "-q", "-m", f"repro results: {message}", "--", rel],
                           check=True)

    def run_dir(self, label: str, seed: int) -> Path:
        return self.out / "runs" / f"s{seed}" / slug(label)

    def ref(self, label: str, seed: int) -> str:
        conf, _, ref = self.models[label]
        return ref if conf is None else str(self.run_dir(label, seed))

    def eval_dir(self, label: str, seed: int) -> Path:
        return self.out / "eval" / f"s{seed}" / slug(label)

    def write_manifest(self) -> None:
        write_json(self.results_dir / "manifest.json", {
            "format": "mtpf-repro/1", "config": self.cfg, "seeds": self.all_seeds, "base": self.base,
            "models": {label: slug(label) for label in self.models}})

    # ------------------------------------------------------------------ stages
    def label(self) -> None:
        lab, labels = self.cfg["labels"], self.out / "labels"
        if not (labels / "clusters.json").is_file() and self.to_pretrain():
            self.step("label", "label", MTPF + ["label", "--teacher", lab["teacher"], "--corpus", *lab["corpus"],
                                                "--clusters", str(lab["clusters"]), "--fit-words",
                                                str(lab["fit_words"]), "--out", str(labels)])
            self.publish("labels")

    def pretrain(self, labels: list[str] | None = None, seeds: list[int] | None = None) -> None:
        for seed in seeds or self.seeds:
            for label in labels or self.selected:
                conf, overrides, _ = self.models[label]
                if conf is None:
                    continue
                run_dir = self.run_dir(label, seed)
                if not (run_dir / "run.json").is_file() and not self.needs_weights(label, seed):
                    continue  # every cell of it is recorded (a fresh work folder beside committed results)
                if not (run_dir / "run.json").is_file():
                    resume = "true" if (run_dir / "checkpoints").is_dir() else "false"
                    ner_data = json.dumps([str(self.out / "labels")])  # a JSON list: any path stays one entry
                    self.step(f"pretrain s{seed} {label}", "pretrain",
                              MTPF + ["pretrain", conf, f"output_dir={run_dir}", f"ner_data={ner_data}",
                                      f"resume={resume}", f"seed={seed}", *self.cfg.get("pretrain_overrides", []),
                                      *overrides])
                self.copy_logs(label, seed)
                self.publish(f"pretrain s{seed} {label}")

    def to_pretrain(self) -> list[tuple[int, str]]:
        """(seed, model) units of this invocation that will pre-finetune (the teacher labels are only for them)."""
        return [(s, m) for s in self.seeds for m in self.selected if self.models[m][0] is not None
                and not (self.run_dir(m, s) / "run.json").is_file() and self.needs_weights(m, s)]

    def needs_weights(self, label: str, seed: int) -> bool:
        """Some evaluation unit of (label, seed) is not recorded yet, or the runtime row will serve its apps."""
        rt = self.cfg.get("runtime") or {}
        if rt.get("model") == label and seed == self.first and not self.runtime_done():
            return True
        saved, self.planned = self.planned, []
        try:
            self.evaluate([label], [seed])
            return bool(self.planned)
        finally:
            self.planned = saved

    def runtime_done(self) -> bool:
        out = self.out / "eval" / "runtime" / "results.json"
        out = out if out.is_file() else self.results_dir / "runtime.json"  # a fresh work folder: the committed row
        return out.is_file() and unit_done(out, "tc", self.cfg["evaluate"]["cls"], [1.0], self.first)

    def results_file(self, label: str, seed: int) -> Path:
        """The unit's results.json in the work folder; a fresh work folder (another machine, a wiped disk) starts
        from the committed copy in results_dir, so nothing recorded there is computed again."""
        work = self.eval_dir(label, seed) / "results.json"
        committed = self.results_dir / f"s{seed}" / f"{slug(label)}.json"
        if not work.is_file() and committed.is_file():
            if self.planned is not None:
                return committed  # --status reads, never writes
            copy_atomic(committed, work)
        return work

    def copy_logs(self, label: str, seed: int) -> None:
        """Pre-finetuning curves and config (small files) next to the results, for Figures 3 and 4."""
        if self.planned is not None:
            return
        src, dst = self.run_dir(label, seed), self.results_dir / f"s{seed}" / "pretrain" / slug(label)
        for name in ("pretrain_config.json", "run.json", "logs/metrics.jsonl", "logs/analysis.jsonl"):
            if (src / name).is_file():
                copy_atomic(src / name, dst / name)

    def evaluate(self, labels: list[str] | None = None, seeds: list[int] | None = None) -> None:
        from mtpf.downstream.suite import app_folder_name

        ev = self.cfg["evaluate"]
        rt = self.cfg.get("runtime") or {}
        for seed in seeds or self.seeds:
            for label in labels or self.selected:
                out = self.eval_dir(label, seed)
                results = self.results_file(label, seed)
                base = MTPF + ["evaluate", "--model", f"{label}={self.ref(label, seed)}", "--output", str(out),
                               "--cache-dir", str(self.out / "eval" / "cache"), "--seeds", str(seed), "--no-progress",
                               *ev.get("args", [])]
                for run_name, run in ev["runs"].items():
                    if run.get("models") and label not in run["models"]:
                        continue  # a run limited to some models (e.g. the data-scarce rows: Table 11's four)
                    # the NER recipe: the run's keys, else evaluate-level ones (batch_size, lr, head_lr)
                    rcfg = {k: run.get(k, ev.get(k)) for k in NER_KEYS if run.get(k, ev.get(k)) is not None}
                    flags = [a for k, v in rcfg.items() for a in (f"--{k.replace('_', '-')}", str(v))]
                    flags += list(run.get("args", []))
                    if label == rt.get("model") and seed == self.first:
                        flags.append("--save-apps")  # the runtime row serves these NER apps
                    for ds in ev["ner"]:
                        for frac in run["fractions"]:
                            cmd = base + flags + ["--ner", ds, "--fractions", str(frac)]
                            app = self.eval_dir(label, seed) / "apps" / app_folder_name(label, Path(ds).name, frac,
                                                                                         seed)
                            if unit_done(results, "ner", [ds], [frac], seed,
                                         expected_config(cmd[len(MTPF) + 1:], "ner")) and (
                                    "--save-apps" not in flags or (app / "mtpf_app.json").is_file()):
                                continue  # (the runtime row needs the app: a fresh work folder rebuilds it)
                            self.step(f"evaluate s{seed} {label} NER {Path(ds).name} @{frac:g} ({run_name})",
                                      "ner-full" if float(frac) == 1 else "ner-low", cmd)
                            self.copy_results(label, seed)
                cmd = base + ["--cls", *ev.get("cls", [])]
                if ev.get("cls") and not unit_done(results, "tc", ev["cls"], [1.0], seed,
                                                   expected_config(cmd[len(MTPF) + 1:], "tc")):
                    self.step(f"evaluate s{seed} {label} TC", "tc", cmd)
                    self.copy_results(label, seed)
                self.copy_results(label, seed)

    def copy_results(self, label: str, seed: int) -> None:
        src = self.eval_dir(label, seed) / "results.json"
        if src.is_file() and self.planned is None:
            dst = self.results_dir / f"s{seed}" / f"{slug(label)}.json"
            with self.lock:
                copy_atomic(src, dst)
                self.publish(f"s{seed} {label}")

    def by_model(self) -> None:
        """Pre-finetune and evaluate each (seed, model) unit in turn, ``jobs`` units at a time. The first failure
        stops new units from starting; the running ones finish (their cells are recorded), then it is raised."""
        units = [(seed, label) for seed in self.seeds for label in self.selected]

        def one(unit):
            if self.stop.is_set():
                return
            seed, label = unit
            try:
                self.pretrain([label], [seed])
                self.evaluate([label], [seed])
            except BaseException:
                self.stop.set()
                raise

        if self.jobs <= 1:
            for unit in units:
                one(unit)
            return
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(one, u) for u in units]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:  # all done, a unit failed, or Ctrl-C (the running commands get it too): start no more
                self.stop.set()
        for f in futures:
            if f.exception() is not None:
                raise f.exception()

    def status(self) -> str:
        """What is left to run (every stage's units, by seed and model) and how long it should take, estimated
        from ``timings.json``; runs nothing and writes nothing."""
        self.planned = []
        self.label()
        left = {}  # (seed, label) -> units
        for seed in self.seeds:
            for label in self.selected:
                before = len(self.planned)
                self.pretrain([label], [seed])
                self.evaluate([label], [seed])
                left[seed, label] = self.planned[before:]
        if self.first in self.seeds:
            if self.cfg.get("runtime"):
                self.runtime()
            self.figures()
        lines = []
        for seed in self.seeds:
            todo = [(label, units) for (s, label), units in left.items() if s == seed and units]
            if len(todo) == len(self.selected):  # nothing of this seed yet: the totals say enough
                parts = [", ".join(_count([u for _, units in todo for u in units]))]
            else:
                parts = [f"{label} ({', '.join(_count(units))})" for label, units in todo]
            lines.append(f"seed {seed}: {len(self.selected) - len(todo)} of {len(self.selected)} models complete"
                         + (f"; left: {'; '.join(parts)}" if todo else ""))
        if not self.planned:
            return "\n".join(lines + ["nothing left to run"])
        est = [estimate(name, part, self.timings, self.jobs) for name, part in self.planned]
        hours = sum(e for e in est if e is not None) / 3600
        unknown = sum(e is None for e in est)
        lines.append(f"left: {len(self.planned)} units, about {hours:.1f} unit-hours = {hours / self.jobs:.1f} h of "
                     f"wall time at --jobs {self.jobs}" + (f" ({unknown} units with no timing to go by)" if unknown
                                                           else "")
                     + "; each unit's time is its recorded time at another seed, else that of the same dataset and "
                     "share (or part), preferring units that ran with the same --jobs")
        return "\n".join(lines)

    def runtime(self) -> None:
        # The deployed path for one model (first seed): its NER apps from the suite (--save-apps) and a TC app,
        # served by the runtime on the int8 ONNX backbone, scored with the suite's protocols.
        from mtpf.downstream.suite import app_folder_name

        rt, ev, seed = self.cfg["runtime"], self.cfg["evaluate"], self.first
        run_dir, out = self.ref(rt["model"], seed), self.out / "eval" / "runtime"
        if self.runtime_done():
            return
        tc_app = self.out / "apps" / f"{slug(rt['model'])}-tc-{Path(rt['tc_app_data']).name}"
        if not (tc_app / "mtpf_app.json").is_file():
            self.step("runtime TC app", "runtime", MTPF + ["adapt", "tc", "--model", run_dir, "--data",
                                                           rt["tc_app_data"], "--output", str(tc_app), "--cache-dir",
                                                           str(self.out / "eval" / "cache")])
        cmd = MTPF + ["evaluate-runtime", "--backbone", run_dir, "--label", rt["label"], "--tc-app", str(tc_app),
                      "--cls", *ev["cls"], "--base", self.base, "--seed", str(seed), "--output", str(out)]
        for label in (self.base, rt["model"]):
            cmd += ["--with", str(self.eval_dir(label, seed) / "results.json")]
        apps = self.eval_dir(rt["model"], seed) / "apps"
        for run in ev["runs"].values():
            for ds in ev["ner"]:
                for frac in run["fractions"]:
                    cmd += ["--ner-app", f"{ds}={apps / app_folder_name(rt['model'], Path(ds).name, frac, seed)}"]
        self.step("runtime", "runtime", cmd)
        if self.planned is not None:
            return
        copy_atomic(out / "results.json", self.results_dir / "runtime.json")
        self.publish("runtime")

    def figures(self) -> None:
        seed = self.first
        runs = [(label, self.run_dir(label, seed)) for label, (conf, _, _) in self.models.items()
                if conf is not None and (self.run_dir(label, seed) / "logs" / "analysis.jsonl").is_file()]
        figure = self.cfg.get("figure3_models")
        runs = [(n, r) for n, r in runs if figure is None or n in figure]
        fig = self.results_dir / "fig3.png"
        if runs and fig.is_file() and fig.stat().st_mtime >= max(
                (r / "logs" / "analysis.jsonl").stat().st_mtime for _, r in runs):
            return  # up to date
        if runs:
            self.step("figure 3", "figures", MTPF + ["analyze", "plot", *[str(r) for _, r in runs],
                                                     *[a for n, _ in runs for a in ("--label", n)], "--losses",
                                                     "--out", str(fig)])
            self.publish("figure 3")


def main(argv: list[str] | None = None, run=sh) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--only", choices=["label", "pretrain", "evaluate", "runtime", "figures"])
    ap.add_argument("--output", help="work folder: runs, apps, caches (default: the config's `output`)")
    ap.add_argument("--results-dir", help="where finished cells are copied (default: the config's `results_dir`, "
                                          "else docs/results/<config name>)")
    ap.add_argument("--seeds", help="comma list: run only these of the config's seeds now (e.g. finish one "
                                    "replicate per session); the runtime row and Figure 3 need the first")
    ap.add_argument("--models", help="comma list of the config's model labels: run only these now, in this order")
    ap.add_argument("--by-model", action="store_true",
                    help="pre-finetune and evaluate one model at a time (results land model by model)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="with --by-model: (seed, model) units run at once, each with cores/jobs threads")
    ap.add_argument("--status", action="store_true",
                    help="print what is left to run and an estimate of its wall time (from timings.json); run nothing")
    ap.add_argument("--commit-results", action="store_true",
                    help="git-commit the results folder after every finished unit (for runs spanning sessions)")
    args = ap.parse_args(argv)
    if not Path(args.config).is_file():
        ap.error(f"{args.config}: no such config file")
    cfg = yaml.safe_load(Path(args.config).read_text())
    results_dir = Path(args.results_dir or cfg.get("results_dir") or Path("docs/results") / Path(args.config).stem)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
    unknown = sorted(set(seeds or []) - {int(x) for x in cfg.get("seeds", [42])})
    if unknown:
        ap.error(f"{args.config}: --seeds {unknown} are not among the config's seeds {cfg.get('seeds', [42])}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    missing = [m for m in models or [] if m not in cfg["models"]]
    if missing:
        ap.error(f"{args.config}: --models {missing} are not among the config's models {list(cfg['models'])}")
    if args.jobs < 1 or (args.jobs > 1 and not (args.by_model and args.only is None)):
        ap.error("--jobs N (N >= 1) runs whole (seed, model) units at once: use it with --by-model, without --only")
    if args.jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # torch's intra-op threads in every command
            os.environ.setdefault(var, threads)
    repro = Repro(cfg, Path(args.output or cfg["output"]), results_dir, args.commit_results, run, seeds, models,
                  args.jobs)
    if args.status:
        print(repro.status())
        return
    repro.write_manifest()
    stages = ("label", "pretrain", "evaluate", "runtime", "figures")
    if args.by_model and args.only is None:
        repro.label()
        repro.by_model()
        stages = ("runtime", "figures")
    for stage in stages if args.only is None else (args.only,):
        if stage in ("runtime", "figures") and (repro.first not in repro.seeds or
                                                (stage == "runtime" and not cfg.get("runtime"))):
            continue
        getattr(repro, stage)()
    repro.publish("manifest")


if __name__ == "__main__":
    main()
