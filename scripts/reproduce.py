"""Drive the small-scale reproduction described by a ``configs/local/repro*.yaml`` (issue: measured repro).

label -> pretrain every strategy -> evaluate all models side by side -> score the embedded runtime (int8 ONNX
backbone + the app adapters of one model) -> Figure 3 curves. Every stage resumes: finished label shards,
finished runs (run.json) and finished evaluation cells are skipped, so the job may span sessions.

    python scripts/reproduce.py configs/local/repro.yaml [--only label|pretrain|evaluate|runtime|figures]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

MTPF = [sys.executable, "-m", "mtpf.cli"]


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--only", choices=["label", "pretrain", "evaluate", "runtime", "figures"])
    ap.add_argument("--output", help="output folder (default: the config's `output`)")
    args = ap.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.output or cfg["output"])
    labels = out / "labels"
    if args.only in (None, "label"):
        lab = cfg["labels"]
        if not (labels / "clusters.json").is_file():
            sh(MTPF + ["label", "--teacher", lab["teacher"], "--corpus", *lab["corpus"], "--clusters",
                       str(lab["clusters"]), "--fit-words", str(lab["fit_words"]), "--out", str(labels)])
    models = {}
    base = next(iter(cfg["models"]))
    for name, ref in cfg["models"].items():
        if str(ref).endswith((".yaml", ".yml")):
            run_dir = out / "runs" / Path(ref).stem
            models[name] = str(run_dir)
            if args.only in (None, "pretrain") and not (run_dir / "run.json").is_file():
                resume = "true" if (run_dir / "checkpoints").is_dir() else "false"
                sh(MTPF + ["pretrain", ref, f"output_dir={run_dir}", f"ner_data=[{labels}]", f"resume={resume}",
                           *cfg.get("pretrain_overrides", [])])
        else:
            models[name] = str(ref)
    if args.only in (None, "evaluate"):
        ev = cfg["evaluate"]
        for run_name, run in ev["runs"].items():
            cmd = MTPF + ["evaluate", *[a for n, r in models.items() for a in ("--model", f"{n}={r}")],
                          "--base", base, "--ner", *ev["ner"], "--output", str(out / "eval" / run_name),
                          "--cache-dir", str(out / "eval" / "cache"), "--save-apps",
                          "--fractions", ",".join(str(f) for f in run["fractions"]),
                          # the paper recipe + these overrides = the loop the documented numbers came from
                          "--recipe", "paper",
                          "--epochs-warmup", str(run["epochs_warmup"]), "--epochs", str(run["epochs"]),
                          "--batch-size", str(ev["batch_size"]), "--lr", str(ev["lr"]), "--head-lr", str(ev["head_lr"])]
            if run.get("tc", True):
                cmd += ["--cls", *ev["cls"]]
            sh(cmd)
    rt = cfg.get("runtime")
    if rt and args.only in (None, "runtime"):
        # The deployed path for one model: its NER apps from the suite (--save-apps) and a TC app, served by
        # the runtime on the int8 ONNX backbone, scored with the suite's protocols, tabled next to the suite rows.
        from mtpf.downstream.suite import _slug, app_folder_name

        ev, run_dir = cfg["evaluate"], models[rt["model"]]
        tc_app = out / "apps" / f"{_slug(rt['model'])}-tc-{Path(rt['tc_app_data']).name}"
        if not (tc_app / "mtpf_app.json").is_file():
            sh(MTPF + ["adapt", "tc", "--model", run_dir, "--data", rt["tc_app_data"], "--output", str(tc_app),
                       "--cache-dir", str(out / "eval" / "cache")])
        cmd = MTPF + ["evaluate-runtime", "--backbone", run_dir, "--label", rt["label"], "--tc-app", str(tc_app),
                      "--cls", *ev["cls"], "--base", base, "--output", str(out / "eval" / "runtime")]
        for run_name, run in ev["runs"].items():
            cmd += ["--with", str(out / "eval" / run_name / "results.json")]
            for ds in ev["ner"]:
                for frac in run["fractions"]:
                    app = out / "eval" / run_name / "apps" / app_folder_name(rt["model"], Path(ds).name, frac, 42)
                    cmd += ["--ner-app", f"{ds}={app}"]
        sh(cmd)
    if args.only in (None, "figures"):
        runs = [(n, r) for n, r in models.items() if (Path(r) / "logs" / "analysis.jsonl").is_file()]
        if runs:
            labels = [a for n, _ in runs for a in ("--label", n)]
            sh(MTPF + ["analyze", "plot", *[r for _, r in runs], *labels, "--losses",
                       "--out", str(out / "fig3.png")])


if __name__ == "__main__":
    main()
