"""Operators per optimizer step: mtpf's pre-finetuning steps against bare PyTorch loops, counted on any device.

On a GPU a MiniLM step at batch 1024 is close to launch-bound (issue 9: mtpf `tc` ran at 0.44x of the bare loop
on an H200 because it cut the batch into 8 chunks, i.e. 4x the kernels). Without a GPU the launch count can
still be compared: the CPU profiler counts the ATen operators a step dispatches, and on CUDA each operator that
computes something is at least one kernel. Counted per step, as medians over ``--steps`` steady-state steps:
  all        every ATen call (host dispatch work)
  compute    leaf calls that are not views or metadata (the kernel-launch proxy)
  host reads ``_local_scalar_dense`` / ``nonzero`` outside the optimizer (each would sync a GPU)
  host s     (``--host-time``) seconds per step of the same graph on a model of the same depth and heads but
             width 24 and batches of 8 x ~16 tokens: almost no arithmetic is left, so this is the host's cost of
             issuing the step (Python, autograd, dispatch). On a GPU a step cannot take less than that (the
             kernel launches come on top), whatever the GPU's speed; it is the floor behind the 0.08 s target.
mtpf runs with the CUDA path's settings (``tc_pad_chunk=0``: one padded chunk per side, ``cpu_speedups=false``,
batches from a DataLoader worker), with the 2-D mask except in the "4-D mask" row (the CUDA default). The bare
loops are bench_pretrain.py's ceilings (pre-tokenised, pre-padded batches, fused AdamW). Counts do not depend
on the batch size, only on the graph.

    python bench/bench_step_ops.py --host-time --json bench/results/step_ops.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from statistics import median

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_pretrain import make_model, random_minilm, read_ner, read_pairs, write_jsonl

VIEWS = {"aten::view", "aten::_unsafe_view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided",
         "aten::transpose", "aten::t", "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze",
         "aten::slice", "aten::select", "aten::detach", "aten::alias", "aten::empty", "aten::empty_strided",
         "aten::empty_like", "aten::resize_", "aten::split", "aten::split_with_sizes", "aten::unbind",
         "aten::chunk", "aten::narrow", "aten::lift_fresh", "aten::result_type", "aten::to", "aten::_to_copy",
         "aten::flatten", "aten::expand_as", "aten::view_as", "aten::contiguous", "aten::numpy_T"}
READS = ("aten::_local_scalar_dense", "aten::nonzero")


def under_optimizer(e) -> bool:
    """Inside ``Optimizer.step`` (AdamW's host reads of its step count do not sync a GPU)."""
    while e is not None:
        if e.name.startswith("Optimizer.step"):
            return True
        e = e.cpu_parent
    return False


def count(step, steps: int) -> dict:
    """Median per-step counts of ``steps`` calls of ``step`` (after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    per = []
    for _ in range(steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        per.append({
            "all": len(events),
            "compute": sum(1 for e in events if not e.cpu_children and e.name not in VIEWS),
            "host_reads": sum(1 for e in events if e.name in READS and not under_optimizer(e)),
        })
    return {k: median(p[k] for p in per) for k in per[0]}


def host_seconds(step, steps: int) -> float:
    """Median seconds per call of ``step`` over ``steps`` calls, after three warm-up calls."""
    import time

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return median(times)


def narrow_model(args, out: Path) -> str:
    """MiniLM-L6's graph (6 layers, 12 heads, its vocabulary) at width 24: the same operators, ~no arithmetic."""
    return random_minilm(args.tokenizer, out, hidden=24, intermediate=32)


def mtpf_step(model: str, strategy: str, overrides: dict, out: Path):
    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

    cfg = load_config(PretrainConfig, None, [f"{k}={v}" for k, v in {
        "strategy": strategy, "model": model, "output_dir": str(out), "progress": "false", "tensorboard": "false",
        "save_every": 10**9, "log_every": 10**9, "max_steps": 100, "num_workers": 1, "cpu_speedups": "false",
        "tc_pad_chunk": 0, "tc_mini_batch_size": "null", **overrides}.items()])
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.model.train()
    return recipe.train_step


def bare_tc_step(model: str, pairs, batch: int):
    from mtpf.data.samplers import pad_batch
    from mtpf.encoder import load_encoder, load_tokenizer, mean_pool
    from mtpf.losses import info_nce

    tok, net = load_tokenizer(model), load_encoder(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=5e-5, fused=True)
    chunk = pairs[:batch]
    a, b = (pad_batch(tok([x[i] for x in chunk], truncation=True, max_length=64)["input_ids"], tok.pad_token_id)
            for i in (0, 1))

    def step():
        ea = mean_pool(net(**a).last_hidden_state, a["attention_mask"])
        eb = mean_pool(net(**b).last_hidden_state, b["attention_mask"])
        info_nce(ea, eb, 0.05).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bare_ner_step(model: str, sentences, labels, num_labels: int, batch: int):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from mtpf.data.ner_pseudo import align_first_subtoken
    from mtpf.data.samplers import pad_batch
    from mtpf.encoder import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    net = AutoModelForTokenClassification.from_pretrained(resolve_model(model), num_labels=num_labels).train()
    enc = tok(sentences[:batch], is_split_into_words=True, truncation=True, max_length=64)
    labs = [align_first_subtoken(enc.word_ids(i), labels[i]) for i in range(batch)]
    b = pad_batch(enc["input_ids"], tok.pad_token_id, labs)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-5, fused=True)

    def step():
        net(**b).loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--random-init", action="store_true", default=True,
                    help="random MiniLM-L6-shaped weights (the default: counts do not depend on the weights)")
    ap.add_argument("--tokenizer", default="packaged")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--batch-tc", type=int, default=32)
    ap.add_argument("--batch-ner", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--host-time", action="store_true", help="also time each step on the narrow model")
    ap.add_argument("--time-steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="--host-time: rounds of all steps side by side")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "step_ops.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mtpf.cli import quiet_libraries

    quiet_libraries()
    data = Path(args.data)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(args, tmp / "model")
        pairs = read_pairs(data, 4 * args.batch_tc)
        src = write_jsonl(tmp / "pairs" / "p.jsonl", ({"anchor": a, "positive": p} for a, p in pairs))
        sentences, labels = read_ner(data, 4 * args.batch_ner)
        k = 1 + max(x for lab in labels for x in lab)
        lab = write_jsonl(tmp / "labels" / "shard-00000.jsonl",
                          ({"tokens": s, "labels": lb} for s, lb in zip(sentences, labels)))
        common = {"pairs": f"[{src}]", "ner_data": f"[{lab.parent}]", "num_clusters": k,
                  "tc_batch_size": args.batch_tc, "ner_batch_size": args.batch_ner, "max_length": 64}
        def steps_for(m, tag, batch_tc, batch_ner):
            c = {**common, "tc_batch_size": batch_tc, "ner_batch_size": batch_ner}
            return {
                "bare tc": bare_tc_step(m, pairs, batch_tc),
                "bare ner": bare_ner_step(m, sentences, labels, k, batch_ner),
                **{f"mtpf {st}": mtpf_step(m, st, c, tmp / f"{tag}-{st}") for st in ("tc", "ner", "mtpf", "mtpf-tpl")},
                "mtpf mtpf + pcgrad": mtpf_step(m, "mtpf", {**c, "pcgrad": "true"}, tmp / f"{tag}-pc"),
                # the CUDA default: a ready 4-D mask, no host read per forward
                "mtpf mtpf-tpl, 4-D mask": mtpf_step(m, "mtpf-tpl", {**c, "full_attention_mask": "true"},
                                                     tmp / f"{tag}-tpl4d"),
            }

        for name, step in steps_for(model, "ops", args.batch_tc, args.batch_ner).items():
            rows[name] = count(step, args.steps)
        if args.host_time:
            narrow = steps_for(narrow_model(args, tmp / "narrow"), "narrow", 8, 8)
            times = {n: [] for n in narrow}
            for r in range(args.rounds):  # side by side, every round
                for n, step in narrow.items():
                    times[n].append(host_seconds(step, args.time_steps))
                print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1] * 1e3:.1f} ms" for n, v in times.items()),
                      flush=True)
            for n, row in rows.items():
                row["host_s"] = median(times[n])
    both = {k: rows["bare tc"][k] + rows["bare ner"][k] for k in rows["bare tc"]}
    ref = {"mtpf tc": rows["bare tc"], "mtpf ner": rows["bare ner"], "mtpf mtpf": both, "mtpf mtpf-tpl": both,
           "mtpf mtpf + pcgrad": both, "mtpf mtpf-tpl, 4-D mask": both}
    print(f"{'step':26} {'all ops':>8} {'compute':>8} {'reads':>6} {'host ms':>8}   compute / host vs bare")
    for name, r in rows.items():
        vs = f"{r['compute'] / ref[name]['compute']:.2f}x" if name in ref else ""
        if name in ref and "host_s" in r:
            vs += f" / {r['host_s'] / ref[name]['host_s']:.2f}x"
        host = f"{r['host_s'] * 1e3:8.1f}" if "host_s" in r else f"{'':8}"
        print(f"{name:26} {r['all']:8.0f} {r['compute']:8.0f} {r['host_reads']:6.0f} {host}   {vs}")
    out = {"rows": rows, "bare_tc_plus_ner": both, "compute_vs_bare": {
        n: rows[n]["compute"] / ref[n]["compute"] for n in ref}, "torch": torch.__version__,
        "machine": os.uname().machine, "cpu_count": os.cpu_count(), "args": vars(args)}
    if args.host_time:
        out["host_vs_bare"] = {n: rows[n]["host_s"] / ref[n]["host_s"] for n in ref}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
