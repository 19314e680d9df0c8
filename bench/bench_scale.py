"""Scale of the pre-finetuning data path: memory and setup time against the source size, sampler cost per step.

1. `mtpf pretrain strategy=tc` on a generated local JSONL source of --big pairs vs one of --small pairs, each
   run twice (the first builds the Arrow + tokenisation caches beside the data, the second reuses them):
   peak RSS of the command (ru_maxrss of a fresh child) and its wall time (--steps steps, so the difference
   between sources is setup). Targets: big - small peak RSS <= +150 MB; second-run wall time <= +15 s.
2. The hierarchical sampler's time per batch (--batch) on a --sampler-big-row Arrow source vs a
   --sampler-small-row one (keys read from the memory-mapped rows). Target: ratio <= 2.

    python bench/bench_scale.py                                  # 2M vs 20k pairs, 10M vs 10k rows
    python bench/bench_scale.py --model tiny --big 20000 --small 2000 --sampler-big 200000 --steps 2   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the a man woman city company visited bought said on in new talks market river music game team "
         "phone price good bad small large red blue cheap near far fast slow old young").split()
WRAP = ("import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); "
        "print(f'{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {time.perf_counter() - t} {r.returncode}')")


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            a = " ".join(rng.choices(WORDS, k=rng.randint(6, 20)))
            p = " ".join(rng.choices(WORDS, k=rng.randint(6, 20)))
            fh.write(json.dumps({"anchor": f"{i} {a}", "positive": f"{p} {i}"}) + "\n")


def pretrain(args, pairs: Path, out: Path) -> dict:
    """One `mtpf pretrain` in a fresh wrapper process: (peak RSS of the command in MB, wall seconds)."""
    cmd = [sys.executable, "-m", "mtpf.cli", "pretrain", "strategy=tc", f"model={args.model}",
           f"pairs=[{pairs}]", f"output_dir={out}", f"max_steps={args.steps}", f"tc_batch_size={args.batch_tc}",
           "tc_mini_batch_size=null", "max_length=64", "progress=false", "tensorboard=false",
           f"save_every={10**9}", "log_every=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", WRAP, *cmd], env=env, capture_output=True, text=True)
    rss_kb, seconds, rc = res.stdout.split()[-3:]
    if rc != "0":
        raise SystemExit(f"mtpf pretrain failed:\n{res.stderr[-3000:]}")
    return {"peak_rss_mb": int(rss_kb) / 1024, "wall_s": float(seconds)}


def sampler_seconds_per_step(rows: int, batch: int, steps: int, folder: Path) -> float:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    from mtpf.data.samplers import HierarchicalPairSampler

    path = folder / f"rows-{rows}.arrow"
    ids = pa.array(np.arange(rows)).cast(pa.string())
    table = pa.table({"anchor": pc.binary_join_element_wise("a", ids, ""),
                      "positive": pc.binary_join_element_wise("p", ids, "")})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100_000)
    del table, ids
    ds = Dataset.from_file(str(path))

    def keys(name, idx):
        got = ds[idx.tolist()]
        return list(zip(got["anchor"], got["positive"]))

    s = HierarchicalPairSampler({"s": rows}, batch, seed=0)
    s.next_batch(keys)
    t = time.perf_counter()
    for _ in range(steps):
        s.next_batch(keys)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=2_000_000)
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-tc", type=int, default=64)
    ap.add_argument("--model", default="packaged", help="encoder; 'tiny' = a 2-layer random BERT (smoke runs)")
    ap.add_argument("--sampler-big", type=int, default=10_000_000)
    ap.add_argument("--sampler-small", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--sampler-steps", type=int, default=50)
    ap.add_argument("--skip", default="", help="comma list of: pretrain,sampler")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "scale.json"))
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    results = {"args": vars(args), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model == "tiny":
            from mtpf.testing import make_tiny_encoder

            args.model = make_tiny_encoder(tmp / "tiny", "bert")
        if "pretrain" not in skip:
            for label, n in (("small", args.small), ("big", args.big)):
                folder = tmp / label
                folder.mkdir()
                t = time.perf_counter()
                write_pairs(folder / f"{label}.jsonl", n)
                print(f"{label}: {n} pairs generated in {time.perf_counter() - t:.0f} s", flush=True)
                runs = [pretrain(args, folder / f"{label}.jsonl", tmp / f"run-{label}-{k}") for k in (1, 2)]
                results[label] = {"pairs": n, "bytes": (folder / f"{label}.jsonl").stat().st_size,
                                  "first_run": runs[0], "second_run": runs[1]}
                print(label, results[label], flush=True)
            for run in ("first_run", "second_run"):
                results[f"{run}_delta"] = {
                    "peak_rss_mb": results["big"][run]["peak_rss_mb"] - results["small"][run]["peak_rss_mb"],
                    "wall_s": results["big"][run]["wall_s"] - results["small"][run]["wall_s"]}
        if "sampler" not in skip:
            per = {n: sampler_seconds_per_step(n, args.batch, args.sampler_steps, tmp)
                   for n in (args.sampler_small, args.sampler_big)}
            results["sampler_s_per_step"] = {str(k): v for k, v in per.items()}
            results["sampler_ratio_big_over_small"] = per[args.sampler_big] / per[args.sampler_small]
    print(json.dumps({k: v for k, v in results.items() if k != "args"}, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
