"""Is it faster to run two 1-thread trainings side by side than one training with all the cores?

The question behind ``scripts/reproduce.py --jobs``: on a small CPU a MiniLM-L6 step does not scale perfectly over
intra-op threads, so N single-thread processes may do more work together than one N-thread process. This bench
trains a random-init MiniLM-L6-shaped BERT (forward, backward, AdamW on random token ids of a fixed shape) for
``--seconds`` in each setting, alternating them ``--rounds`` times, and prints the tokens per second of each and
their ratio (baseline: one process with ``--cores`` threads).

    python bench/bench_cpu_jobs.py                 # 2 cores: 1 x 2 threads vs 2 x 1 thread, 40 s each, 2 rounds
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import sys, time, torch
from transformers import BertConfig, BertModel
threads, batch, length, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                             intermediate_size=1536))
opt = torch.optim.AdamW(model.parameters(), 1e-4)
ids = torch.randint(1000, 30000, (batch, length))
mask = torch.ones_like(ids)
def step():
    model(input_ids=ids, attention_mask=mask).last_hidden_state.mean().backward()
    opt.step()
    opt.zero_grad()
for _ in range(3):  # warm-up: allocator, first-call overheads
    step()
t0, n = time.perf_counter(), 0
while time.perf_counter() - t0 < seconds:
    step()
    n += 1
print(n * batch * length / (time.perf_counter() - t0))
"""


def run(procs: int, threads: int, args) -> float:
    """Total tokens/s of ``procs`` concurrent processes with ``threads`` threads each."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", WORKER, str(threads), str(args.batch), str(args.length), str(args.seconds)]
    ps = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outs = [p.communicate()[0] for p in ps]
    if any(p.returncode for p in ps):
        sys.exit("a worker failed")
    return sum(float(o.strip().splitlines()[-1]) for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads of the baseline = processes")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=40.0, help="timed seconds per setting and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    rows = []
    for r in range(args.rounds):
        one = run(1, args.cores, args)
        many = run(args.cores, 1, args)
        rows.append({"round": r + 1, "one_process_tokens_s": round(one), "split_tokens_s": round(many),
                     "ratio": round(many / one, 3)})
        print(f"round {r + 1}: 1 process x {args.cores} threads {one:,.0f} tokens/s | {args.cores} processes x "
              f"1 thread {many:,.0f} tokens/s together | ratio {many / one:.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"bench": "cpu_jobs", "date": time.strftime("%Y-%m-%d"), "cores": args.cores,
                       "batch": args.batch, "length": args.length, "seconds": args.seconds,
                       "torch_threads_note": "OMP_NUM_THREADS per process", "rounds": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
