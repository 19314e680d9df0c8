"""scripts/reproduce.py: a run killed between (or inside) units recomputes nothing already recorded; finished cells
are published (and committed) as they complete; the shipped repro configs are valid."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


repro = _load("reproduce")


class Killed(Exception):
    pass


class FakeMtpf:
    """Stands in for the mtpf CLI: writes what each command would, one cell at a time, skipping recorded cells
    like the suite does; ``kill_after`` cells it dies mid-unit."""

    def __init__(self, kill_after=None):
        self.kill_after, self.computed, self.pretrained = kill_after, [], []

    def __call__(self, cmd):
        args = cmd[len(repro.MTPF):]
        verb = args[0]
        if verb == "label":
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "clusters.json").write_text("{}")
        elif verb == "pretrain":
            run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
            (run_dir / "logs").mkdir(parents=True, exist_ok=True)
            (run_dir / "logs" / "metrics.jsonl").write_text('{"step": 1, "loss_ner": 1.0}\n')
            (run_dir / "logs" / "analysis.jsonl").write_text('{"step": 1, "perturbed_cosine": 0.5}\n')
            (run_dir / "run.json").write_text("{}")
            self.pretrained.append(str(run_dir))
        elif verb == "evaluate":
            self.evaluate(args)
        elif verb == "adapt":
            out = Path(args[args.index("--output") + 1])
            out.mkdir(parents=True)
            (out / "mtpf_app.json").write_text("{}")
        elif verb == "evaluate-runtime":
            apps = [a.split("=", 1)[1] for i, a in enumerate(args) if args[i - 1] == "--ner-app"]
            assert apps and all((Path(a) / "mtpf_app.json").is_file() for a in apps), apps
            out = Path(args[args.index("--output") + 1])
            out.mkdir(parents=True, exist_ok=True)
            seed = int(args[args.index("--seed") + 1])
            cells = [{"key": f"rt{d}", "task": "tc", "dataset": Path(d).name, "fraction": 1.0, "seed": seed}
                     for d in args[args.index("--cls") + 1:] if not d.startswith("--")]
            (out / "results.json").write_text(json.dumps({"cells": cells}))
        elif verb == "analyze":
            Path(args[args.index("--out") + 1]).write_bytes(b"\x89PNG")
        else:
            raise AssertionError(f"unexpected command {args}")

    def evaluate(self, args):
        def opt(name):
            return args[args.index(name) + 1]

        def many(name):
            i = args.index(name) + 1
            out = []
            while i < len(args) and not args[i].startswith("--"):
                out.append(args[i])
                i += 1
            return out

        out = Path(opt("--output"))
        out.mkdir(parents=True, exist_ok=True)
        label = opt("--model").split("=", 1)[0]
        seed = int(opt("--seeds"))
        path = out / "results.json"
        results = json.loads(path.read_text()) if path.is_file() else {"format": "mtpf-eval/1", "cells": []}
        if "--ner" in args:  # the config the real suite stores: what the flags build
            config = repro.expected_config(args[1:], "ner")
            todo = [("ner", Path(d).name, float(f), config) for d in many("--ner")
                    for f in opt("--fractions").split(",")]
        else:
            todo = [("tc", Path(d).name, 1.0, repro.expected_config(args[1:], "tc")) for d in many("--cls")]
        from mtpf.downstream.suite import app_folder_name

        for task, ds, frac, config in todo:
            key = f"{label}|{task}|{ds}|{frac}|{seed}|{json.dumps(config, sort_keys=True)}"
            app = out / "apps" / app_folder_name(label, ds, frac, seed)
            if any(c["key"] == key for c in results["cells"]) and (
                    "--save-apps" not in args or task != "ner" or (app / "mtpf_app.json").is_file()):
                continue  # as the suite: with --save-apps a NER cell is done only with its app
            if self.kill_after is not None and len(self.computed) == self.kill_after:
                raise Killed
            self.computed.append(key)
            results["cells"] = [c for c in results["cells"] if c["key"] != key] + [
                {"key": key, "task": task, "model": label, "dataset": ds, "fraction": frac, "seed": seed,
                 "config": config, "main_score": 0.5, "metrics": {}}]
            path.write_text(json.dumps(results))  # the suite writes atomically after every cell
            if "--save-apps" in args and task == "ner":
                app.mkdir(parents=True)
                (app / "mtpf_app.json").write_text("{}")


CONFIG = {
    "output": None, "seeds": [1, 2],
    "labels": {"teacher": "packaged", "corpus": ["raw.txt"], "clusters": 4, "fit_words": 10},
    "models": {"Base model": "packaged", "MTPF-TPL": "configs/local/mtpf-tpl.yaml",
               "TPL last 1 layer": {"config": "configs/local/mtpf-tpl.yaml",
                                    "overrides": ["tpl.ner.layers=1", "tpl.tc.layers=1"]}},
    "evaluate": {"ner": ["data/ner/conll2003", "data/ner/mit_restaurant"], "cls": ["data/cls/a", "data/cls/b"],
                 "runs": {"full": {"fractions": [1.0], "epochs_warmup": 3, "epochs": 3},
                          "low": {"fractions": [0.1, 0.5], "epochs_warmup": 10, "epochs": 5}},
                 "batch_size": 32, "lr": 3e-4, "head_lr": 1e-3},
}


def _run(tmp_path, fake, *extra):
    cfg = dict(CONFIG, output=str(tmp_path / "work"))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "repro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    repro.main([str(path), "--results-dir", str(tmp_path / "results"), *extra], run=fake)


def test_killed_run_recomputes_nothing_recorded(tmp_path):
    whole = FakeMtpf()
    _run(tmp_path / "a", whole)
    # 2 seeds x 3 models x (2 NER datasets x 3 shares + 2 TC sets) cells, 2 seeds x 2 pre-finetuned models
    assert len(whole.computed) == len(set(whole.computed)) == 2 * 3 * (2 * 3 + 2)
    assert len(whole.pretrained) == 4

    killed = FakeMtpf(kill_after=13)  # dies inside a unit, after 13 recorded cells
    with pytest.raises(Killed):
        _run(tmp_path / "b", killed)
    resumed = FakeMtpf()
    _run(tmp_path / "b", resumed)
    assert not set(killed.computed) & set(resumed.computed)  # nothing recorded is computed again
    assert sorted(killed.computed + resumed.computed) == sorted(whole.computed)
    assert len(killed.pretrained) + len(resumed.pretrained) == 4

    again = FakeMtpf()  # a third run has nothing to do and starts no process
    calls = []
    _run(tmp_path / "b", lambda cmd: (calls.append(cmd), again(cmd)))
    assert calls == []

    results = tmp_path / "b" / "results"
    cells = json.loads((results / "s2" / "TPL_last_1_layer.json").read_text())["cells"]
    assert len(cells) == 2 * 3 + 2
    timings = json.loads((results / "timings.json").read_text())
    assert {t["part"] for t in timings.values()} == {"label", "pretrain", "ner-full", "ner-low", "tc", "figures"}
    assert (results / "s1" / "pretrain" / "MTPF-TPL" / "logs" / "metrics.jsonl").is_file()
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["seeds"] == [1, 2] and manifest["base"] == "Base model"


def test_one_replicate_per_session(tmp_path, capsys):
    first = FakeMtpf()
    _run(tmp_path, first, "--seeds", "2")  # this session: seed 2 only
    assert first.computed and all(k.split("|")[4] == "2" for k in first.computed)
    rest = FakeMtpf()
    _run(tmp_path, rest)  # the next: the remaining seed, nothing of seed 2 again
    assert rest.computed and all(k.split("|")[4] == "1" for k in rest.computed)
    manifest = json.loads((tmp_path / "results" / "manifest.json").read_text())
    assert manifest["seeds"] == [1, 2]
    with pytest.raises(SystemExit) as exc:
        _run(tmp_path, FakeMtpf(), "--seeds", "7")
    assert exc.value.code == 2 and "not among the config's seeds" in capsys.readouterr().err


def test_commit_results_commits_each_finished_unit(tmp_path):
    git = ["git", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["config", "user.email", "t@example.com"], check=True)
    subprocess.run(git + ["config", "user.name", "t"], check=True)
    (tmp_path / "other.txt").write_text("not part of the results")
    subprocess.run(git + ["add", "other.txt"], check=True)
    _run(tmp_path, FakeMtpf(), "--commit-results")
    log = subprocess.run(git + ["log", "--format=%s"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert any(s.startswith("repro results: s2 TPL last 1 layer") for s in log)
    tracked = subprocess.run(git + ["ls-tree", "-r", "--name-only", "HEAD"], capture_output=True, text=True, check=True).stdout.split()
    assert "results/s1/Base_model.json" in tracked and "other.txt" not in tracked  # only the results folder is committed
    assert subprocess.run(git + ["status", "--porcelain", "results"], capture_output=True, text=True, check=True).stdout == ""


@pytest.mark.parametrize("name", ["local/repro.yaml", "local/repro-scaled.yaml", "gpu/repro-16x.yaml"])
def test_repro_configs_load(name):
    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig

    cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
    r = repro.Repro(cfg, Path("/nonexistent"), Path("/nonexistent"), commit=False, run=None)
    steps, tokens = {}, {}  # tokens: (TC pairs, NER sentences) a model sees, relative to repro.yaml's 150 steps
    for label, (conf, overrides, _) in r.models.items():
        if conf:
            c = load_config(PretrainConfig, ROOT / conf, cfg["pretrain_overrides"] + overrides + ["seed=7"])
            steps[label] = c.max_steps
            tokens[label] = (c.max_steps * c.tc_batch_size / (150 * 64), c.max_steps * c.ner_batch_size / (150 * 32))
            assert c.seed == 7
    if name == "gpu/repro-16x.yaml":  # issue 11: the GPU run pre-finetunes at >= 10x the 150-step run's tokens
        assert all(min(t) >= 10 for t in tokens.values()), tokens
        assert set(cfg["models"]) == set(yaml.safe_load((ROOT / "configs/local/repro-scaled.yaml").read_text())["models"])
    if name == "local/repro-scaled.yaml":
        assert len(r.seeds) >= 3 and min(steps.values()) >= 4 * 150  # >= 4x the tokens of repro.yaml
        fracs = {f for run in cfg["evaluate"]["runs"].values() for f in run["fractions"]}
        assert fracs == {1.0, 0.1, 0.2, 0.5}
        assert cfg["evaluate"]["runs"]["full"]["epochs"] > 0  # LoRA adaptation, not a probe
        tpl = cfg["tpl_experiment"]
        assert sorted(tpl["depth"]) == [1, 2, 4] and len(tpl["asymmetric"]) >= 2
        assert all(m in cfg["models"] for m in [tpl["uniform"], *tpl["depth"].values(), *tpl["asymmetric"]])


def test_every_command_is_valid_for_the_mtpf_cli(tmp_path):
    """The commands reproduce.py builds parse with mtpf's own argument parser (no misspelt flag)."""
    from mtpf.cli import build_parser

    cmds = []
    fake = FakeMtpf()
    cfg = dict(CONFIG, output=str(tmp_path / "work"),
               runtime={"model": "MTPF-TPL", "label": "MTPF-TPL, runtime int8", "tc_app_data": "data/cls/a"})
    path = tmp_path / "repro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    repro.main([str(path), "--results-dir", str(tmp_path / "results")], run=lambda c: (cmds.append(c), fake(c)))
    verbs = [c[len(repro.MTPF)] for c in cmds]
    assert {"label", "pretrain", "evaluate", "adapt", "evaluate-runtime", "analyze"} <= set(verbs)
    parser = build_parser()
    for cmd in cmds:
        parser.parse_args(cmd[len(repro.MTPF):])  # SystemExit on an unknown flag
        flags = [a for a in cmd if a.startswith("--") and a not in ("--model", "--label", "--with", "--ner-app")]
        assert len(flags) == len(set(flags)), cmd  # no flag given twice
    rt = next(c for c in cmds if "evaluate-runtime" in c)
    assert sum(a == "--ner-app" for a in rt) == 2 * 3  # every NER dataset x share of the first seed
    assert (tmp_path / "results" / "runtime.json").is_file()


def test_by_model_lands_each_model_before_the_next_starts(tmp_path, capsys):
    events = []

    class Logged(FakeMtpf):
        def __call__(self, cmd):
            args = cmd[len(repro.MTPF):]
            if args[0] == "pretrain":
                events.append(("pretrain", Path(next(a for a in args if a.startswith("output_dir="))).name))
            elif args[0] == "evaluate":
                events.append(("evaluate", args[args.index("--model") + 1].split("=", 1)[0]))
            super().__call__(cmd)

    _run(tmp_path, Logged(), "--seeds", "1", "--models", "TPL last 1 layer,Base model", "--by-model")
    order = [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]
    assert order == [("pretrain", repro.slug("TPL last 1 layer")), ("evaluate", "TPL last 1 layer"),
                     ("evaluate", "Base model")]  # MTPF-TPL was not asked for; Base needs no pretraining
    assert not (tmp_path / "work" / "runs" / "s1" / repro.slug("MTPF-TPL")).exists()
    with pytest.raises(SystemExit) as exc:
        _run(tmp_path, FakeMtpf(), "--models", "Nope")
    assert exc.value.code == 2 and "not among the config's models" in capsys.readouterr().err


def test_a_run_limited_to_some_models_skips_the_others(tmp_path):
    fake = FakeMtpf()
    cfg = json.loads(json.dumps(CONFIG))
    cfg["evaluate"]["runs"]["low"]["models"] = ["Base model", "MTPF-TPL"]
    cfg["output"] = str(tmp_path / "work")
    path = tmp_path / "repro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    repro.main([str(path), "--results-dir", str(tmp_path / "results")], run=fake)
    keys = [k.split("|") for k in fake.computed]  # label, task, dataset, fraction, seed, config
    low = {k[0] for k in keys if k[1] == "ner" and float(k[3]) < 1}
    assert low == {"Base model", "MTPF-TPL"}
    full = {k[0] for k in keys if k[1] == "ner" and float(k[3]) == 1}
    assert full == {"Base model", "MTPF-TPL", "TPL last 1 layer"}


def _fresh_threads_env(monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # --jobs sets them with setdefault: start unset, restore
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def test_jobs_run_units_two_at_a_time_and_compute_the_same_cells(tmp_path, monkeypatch):
    import os
    import threading

    _fresh_threads_env(monkeypatch)
    serial = FakeMtpf()
    _run(tmp_path / "serial", serial, "--by-model")

    lock, both = threading.Lock(), threading.Event()
    state = {"in_flight": 0, "max": 0, "threads": set()}

    class Concurrent(FakeMtpf):
        def __call__(self, cmd):
            with lock:
                state["in_flight"] += 1
                state["max"] = max(state["max"], state["in_flight"])
                state["threads"].add(os.environ.get("OMP_NUM_THREADS"))
                if state["in_flight"] == 2:
                    both.set()
            try:
                if cmd[len(repro.MTPF)] == "pretrain":
                    both.wait(timeout=30)  # a deadlock guard, not a timing: the other unit must start meanwhile
                super().__call__(cmd)
            finally:
                with lock:
                    state["in_flight"] -= 1

    parallel = Concurrent()
    _run(tmp_path / "parallel", parallel, "--by-model", "--jobs", "2")
    assert state["max"] == 2  # two units were in flight at once, never more
    assert state["threads"] == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert sorted(parallel.computed) == sorted(serial.computed)  # each cell once, the same cells
    assert len(parallel.computed) == len(set(parallel.computed))
    for name in ("s1/Base_model.json", "s2/TPL_last_1_layer.json"):
        assert (json.loads((tmp_path / "parallel" / "results" / name).read_text())["cells"] ==
                json.loads((tmp_path / "parallel" / "work" / "eval" / name.replace(".json", "") /
                            "results.json").read_text())["cells"])
    timings = json.loads((tmp_path / "parallel" / "results" / "timings.json").read_text())
    units = [t for t in timings.values() if t["part"] in ("pretrain", "ner-full", "ner-low", "tc")]
    assert len(units) == 2 * (2 + 3 * (2 * 3 + 1)) and {t["jobs"] for t in units} == {2}


def test_a_failed_unit_stops_new_units_and_is_raised(tmp_path, monkeypatch):
    _fresh_threads_env(monkeypatch)
    made = []

    class Captured(repro.Repro):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(repro, "Repro", Captured)

    class Broken(FakeMtpf):
        def __call__(self, cmd):
            args = cmd[len(repro.MTPF):]
            if args[0] == "pretrain" and "MTPF-TPL" in next(a for a in args if a.startswith("output_dir=")):
                raise subprocess.CalledProcessError(1, cmd)
            if args[0] == "evaluate" and "Base model=" in " ".join(args):
                made[0].stop.wait(timeout=30)  # the Base unit is still running when MTPF-TPL fails beside it
            super().__call__(cmd)

    broken = Broken()
    with pytest.raises(subprocess.CalledProcessError):
        _run(tmp_path, broken, "--by-model", "--jobs", "2")
    # units: s1 Base model (in flight beside s1 MTPF-TPL: finishes), s1 MTPF-TPL (fails), then none starts
    assert broken.computed and {tuple(k.split("|")[0:5:4]) for k in broken.computed} == {("Base model", "1")}
    assert len(broken.computed) == 2 * 3 + 2  # the whole Base unit
    assert not (tmp_path / "work" / "runs" / "s1" / repro.slug("TPL last 1 layer")).exists()
    assert not (tmp_path / "work" / "eval" / "s2").exists()
    resumed = FakeMtpf()  # the rerun picks up where it stopped and recomputes nothing recorded
    _run(tmp_path, resumed, "--by-model", "--jobs", "2")
    assert not set(broken.computed) & set(resumed.computed)
    assert len(broken.computed) + len(resumed.computed) == 2 * 3 * (2 * 3 + 2)


def test_jobs_need_by_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(tmp_path, FakeMtpf(), "--jobs", "2")
    assert exc.value.code == 2 and "--by-model" in capsys.readouterr().err


def test_status_lists_what_a_resumed_run_would_run_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(Killed):
        _run(tmp_path, FakeMtpf(kill_after=13))
    capsys.readouterr()

    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")
                if p.is_file() and p.name != "repro.yaml"}  # _run writes the config it passes

    before, calls = snapshot(), []
    _run(tmp_path, calls.append, "--status")
    status = capsys.readouterr().out
    assert calls == [] and snapshot() == before  # runs nothing, writes nothing
    resumed, started = FakeMtpf(), []
    _run(tmp_path, lambda cmd: (started.append(cmd), resumed(cmd)))
    assert f"left: {len(started)} units," in status  # exactly the units the resumed run starts
    assert "seed 2: 0 of 3 models complete; left: 21 evaluation units\n" in status  # 3 x (2 x 3 NER + TC)
    capsys.readouterr()
    _run(tmp_path, FakeMtpf(), "--status")
    assert "nothing left to run" in capsys.readouterr().out


def test_status_estimates_each_unit_from_recorded_timings():
    t = {"pretrain s1 A": {"part": "pretrain", "seconds": 100.0, "jobs": 1},
         "pretrain s1 B": {"part": "pretrain", "seconds": 300.0, "jobs": 2},
         "evaluate s1 A NER conll @1 (full)": {"part": "ner-full", "seconds": 50.0, "jobs": 1},
         "evaluate s1 B NER mit @1 (full)": {"part": "ner-full", "seconds": 9.0, "jobs": 1},
         "evaluate s1 A TC": {"part": "tc", "seconds": 20.0, "jobs": 1}}
    assert repro.estimate("pretrain s2 A", "pretrain", t, 2) == 100.0  # the same unit at another seed first
    assert repro.estimate("pretrain s2 C", "pretrain", t, 2) == 300.0  # else its part, same --jobs preferred
    assert repro.estimate("pretrain s2 C", "pretrain", t, 1) == 100.0
    assert repro.estimate("evaluate s2 C NER conll @1 (full)", "ner-full", t, 1) == 50.0  # same dataset, share
    assert repro.estimate("evaluate s2 C TC", "tc", t, 1) == 20.0
    assert repro.estimate("evaluate s2 C NER conll @0.1 (low)", "ner-low", t, 1) is None


def test_a_unit_made_with_another_recipe_is_not_taken_as_done(tmp_path):
    """unit_done compares the whole config the unit's command builds: explicit epochs vs the recipe's own
    defaults, or a recipe given through `args:`, are other cells; a field added since (at its default) is not."""
    results = tmp_path / "results.json"
    cmd = ["--model", "M=packaged", "--output", "o", "--seeds", "1", "--recipe", "default", "--ner", "d/conll2003",
           "--fractions", "0.1"]
    want = repro.expected_config(cmd, "ner")

    def store(config):
        results.write_text(json.dumps({"cells": [{"task": "ner", "seed": 1, "dataset": "conll2003", "fraction": 0.1,
                                                  "config": config}]}))
        return repro.unit_done(results, "ner", ["d/conll2003"], [0.1], 1, want)

    assert store(want)
    assert not store({**want, "epochs_warmup": 10, "epochs": 5})  # the fixed epochs used at first
    assert not store(repro.expected_config([*cmd, "--recipe", "paper"], "ner"))  # a recipe from args:
    assert store({k: v for k, v in want.items() if k != "cpu_speedups"})  # before the field existed
    assert not store({k: v for k, v in want.items() if k != "epochs"})  # a missing non-default field


def test_a_fresh_work_folder_recomputes_nothing_committed(tmp_path):
    """Another machine or a wiped disk: the work folder (runs, weights, eval folders) is gone, the committed results
    folder is not. Nothing recorded there is labelled, pre-finetuned or evaluated again."""
    import shutil

    _run(tmp_path, FakeMtpf(), "--seeds", "1")
    shutil.rmtree(tmp_path / "work")
    calls = []
    _run(tmp_path, lambda cmd: calls.append(cmd), "--seeds", "1")
    assert calls == []
    rest = FakeMtpf()
    _run(tmp_path, rest)  # seed 2 still runs in full, labels first
    assert rest.computed and all(k.split("|")[4] == "2" for k in rest.computed)
    assert (tmp_path / "work" / "labels" / "clusters.json").is_file() and len(rest.pretrained) == 2


def test_a_fresh_work_folder_rebuilds_the_apps_the_runtime_row_serves(tmp_path):
    """The runtime row serves the NER apps its model's evaluation saved (--save-apps). A session that ends in the
    runtime stage, then a fresh work folder: the evaluation cells are restored from the committed results, but
    their apps are not, so those units run again (the suite redoes a cell whose app is missing)."""
    import shutil

    cfg = dict(CONFIG, output=str(tmp_path / "work"), seeds=[1])
    cfg["runtime"] = {"model": "MTPF-TPL", "label": "MTPF-TPL, runtime int8", "tc_app_data": "data/cls/a"}
    path = tmp_path / "repro.yaml"
    path.write_text(yaml.safe_dump(cfg))

    class EndsAtRuntime(FakeMtpf):
        def __call__(self, cmd):
            if cmd[len(repro.MTPF)] == "evaluate-runtime":
                raise Killed
            return super().__call__(cmd)

    with pytest.raises(Killed):
        repro.main([str(path), "--results-dir", str(tmp_path / "results")], run=EndsAtRuntime())
    shutil.rmtree(tmp_path / "work")
    fake = FakeMtpf()
    repro.main([str(path), "--results-dir", str(tmp_path / "results")], run=fake)  # the fake checks the apps
    assert fake.computed and all(k.startswith("MTPF-TPL|ner|") for k in fake.computed)  # only those units
    assert (tmp_path / "results" / "runtime.json").is_file()
