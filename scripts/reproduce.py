"""Drive the small-scale reproduction described by a ``configs/local/repro*.yaml`` (issue: measured repro).

label -> pretrain every strategy -> evaluate all models side by side. Every stage resumes: finished label
shards, finished runs (run.json) and finished evaluation cells are skipped, so the job may span sessions.

    python scripts/reproduce.py configs/local/repro.yaml [--only label|pretrain|evaluate]
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
    ap.add_argument("--only", choices=["label", "pretrain", "evaluate"])
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
        base = next(iter(models))
        for run_name, run in ev["runs"].items():
            cmd = MTPF + ["evaluate", *[a for n, r in models.items() for a in ("--model", f"{n}={r}")],
                          "--base", base, "--ner", *ev["ner"], "--output", str(out / "eval" / run_name),
                          "--cache-dir", str(out / "eval" / "cache"), "--save-apps",
                          "--fractions", ",".join(str(f) for f in run["fractions"]),
                          "--epochs-warmup", str(run["epochs_warmup"]), "--epochs", str(run["epochs"]),
                          "--batch-size", str(ev["batch_size"]), "--lr", str(ev["lr"]), "--head-lr", str(ev["head_lr"])]
            if run.get("tc", True):
                cmd += ["--cls", *ev["cls"]]
            sh(cmd)


if __name__ == "__main__":
    main()
