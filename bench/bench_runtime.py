"""Runtime benchmark: what sharing one backbone buys (memory, mixed-load throughput, latency, int8 accuracy).

    .venv/bin/python bench/bench_runtime.py [--requests 480] [--clients 32] [--threads 2] [--out bench/results]
    .venv/bin/python bench/bench_runtime.py --only analyze,memory --smoke     # a quick look (busy machine)

Setup: the packaged all-MiniLM-L6-v2 and random adapters in the mtpf-app/1 format (LoRA rank 32 / alpha 64 on
query, key and MLP, as `mtpf adapt` and the task-primary adapters use). Two sets of 8 apps:

* **issue set** (the paper's deployment, Section 6; issue 10's analyze and memory targets): 4 TC apps that all
  carry ONE `tc` task-primary adapter (LoRA on the last 2 layers, copied into each app folder as `mtpf adapt tc`
  copies the run's frozen adapter) with 4 different linear heads, and 4 NER apps with `--lora-layers 2` (each
  its own LoRA on the last 2 layers) + token heads. The runtime loads the shared `tc` adapter once.
* **today's set** (the mixed-load sections: "same 8 apps as today"): 4 NER apps with LoRA on all 6 layers
  (`mtpf adapt` NER defaults) + token heads, and 4 TC apps each with its OWN random LoRA on the last 2 layers
  + head.

Sections
1. memory (both app sets, labelled): weight bytes and measured RSS growth (fresh subprocesses) of one Runtime
   with 8 apps, one full model, and 8 separate full models (each app's LoRA merged into its own copy = the
   naive deployment); 8 apps on the int8 ONNX backend (one copy of the backbone) vs one int8 model.
2. throughput at mixed load (today's set; requests of 1 text, apps round-robin, ``--clients`` closed-loop client
   threads): micro-batching with PEFT mixed ``adapter_names`` / grouped per-app sub-batches, vs a per-request
   ``set_adapter`` loop (and the same loop with the runtime's cheap adapter switch), vs 8 separate models
   serving one request at a time. Also the int8 ONNX runtime.
   Load sweep: throughput and micro-batch size of the default runtime at 1..64 concurrent clients.
3. single-request latency p50/p95 (a TC app, sequential calls through the Runtime) for PyTorch, ONNX Runtime
   fp32 and ONNX Runtime int8 (dynamic, per-channel), plus the bare encoder forward without the runtime.
4. int8 accuracy: Banking77 under the MTEB protocol (8 per label, 10 experiments, LogisticRegression
   max_iter=100, seed 42; via mtpf.downstream.tc), PyTorch vs ONNX int8 embeddings (mean pooled, normalised).
5. analyze (issue set) on the same ``--analyze-texts`` texts: one ``Runtime.analyze`` call (shared trunk +
   shared `tc` adapter, heads fan out) vs the baseline of **8 separate per-app calls**: ``classify`` /
   ``extract_entities`` of one app on all the texts, one app after the other, on a runtime of the same backend
   built with ``shared_trunk=False, dedup=False`` (every call runs all layers of its app's model, its LoRA
   active, over every text; no trunk, no adapter or row sharing, no cache, nothing carried between calls).
   Also ``analyze`` with ``dedup=False`` (shared trunk only). Outputs compared; PyTorch and ONNX int8.

Select sections with ``--only a,b`` or ``--skip a,b`` (memory, throughput, sweep, latency, accuracy, analyze).
``--smoke``: analyze on 40 texts, 1 round; memory without the 8-separate-models probes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- setup
def make_apps(root: Path, backbone: str, ner_layers: int | str = "all", shared_tc: bool = False) -> dict[str, str]:
    """Today's set (``ner_layers="all"``, every TC app its own LoRA) or the issue set (``ner_layers=2``,
    ``shared_tc=True``: the 4 TC apps carry one `tc` task-primary adapter, each with its own head)."""
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.runtime.testing import make_app_adapter

    enc = load_encoder(backbone)
    fp = fingerprint_model(enc)
    apps = {}
    for i in range(4):
        apps[f"ner{i}"] = make_app_adapter(root / f"ner{i}", backbone, "ner", rank=32, alpha=64, layers=ner_layers,
                                           seed=i, lora_std=0.02, encoder=enc, fingerprint=fp)
    run_tc = None
    if shared_tc:  # the run's `tc` adapter (task-primary shape: last 2 layers); `mtpf adapt tc` copies it unchanged
        run_tc = make_app_adapter(root / "run_tc", backbone, "tc", rank=32, alpha=64, layers=2, seed=9,
                                  lora_std=0.02, encoder=enc, fingerprint=fp)
    for i in range(4):
        apps[f"tc{i}"] = make_app_adapter(root / f"tc{i}", backbone, "tc", labels=[f"c{j}" for j in range(10)],
                                          rank=32, alpha=64, layers=2, seed=10 + i, lora_std=0.02, encoder=enc,
                                          fingerprint=fp, lora_from=run_tc)
    return apps


def workload(n: int) -> list[tuple[str, str, str]]:
    """(app, op, text): apps round-robin; NER apps get CoNLL sentences, TC apps Banking77 questions."""
    ner_texts, tc_texts = [], []
    conll = DATA / "ner" / "conll2003" / "test.jsonl"
    bank = DATA / "cls" / "banking77" / "test.jsonl"
    if conll.is_file():
        with open(conll) as fh:
            for line in fh:
                toks = json.loads(line)["tokens"]
                if len(toks) >= 6:
                    ner_texts.append(" ".join(toks))
                if len(ner_texts) >= n:
                    break
    if bank.is_file():
        with open(bank) as fh:
            tc_texts = [json.loads(line)["text"] for _, line in zip(range(n), fh)]
    ner_texts = ner_texts or ["Barack Obama visited Berlin and Paris last week with Angela Merkel."] * n
    tc_texts = tc_texts or ["How do I reset my card PIN? My transfer has not arrived yet."] * n
    jobs = []
    for i in range(n):
        app = i % 8
        if app < 4:
            jobs.append((f"ner{app}", "entities", ner_texts[i % len(ner_texts)]))
        else:
            jobs.append((f"tc{app - 4}", "classify", tc_texts[i % len(tc_texts)]))
    return jobs


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- 1. memory
def memory_probe(kind: str, backbone: str, apps: dict[str, str], onnx_dir: str | None = None) -> dict:
    """Runs in a fresh subprocess: RSS growth of loading ``kind`` (+ one forward per app)."""
    import torch

    from mtpf.encoder import load_encoder, load_tokenizer

    torch.set_num_threads(1)
    import gc

    import onnxruntime  # noqa: F401
    import peft  # noqa: F401  - every import happens before the baseline
    import transformers  # noqa: F401

    import mtpf.downstream.ner  # noqa: F401 - the runtime's NER windowing code
    import mtpf.runtime  # noqa: F401
    from mtpf.runtime.onnx_export import merged_app_encoder

    load_tokenizer(backbone)  # warm the tokenizer code path; each kind below loads its own tokenizer(s)
    _trim()
    base = rss_mb()
    if kind == "onnx_int8_one_model":  # one int8 graph (the backbone) + tokenizer, as one app would ship it
        from mtpf.runtime.onnx_export import make_session

        tok = load_tokenizer(backbone)
        sess = make_session(Path(onnx_dir) / "one" / "model.int8.onnx", 1)
        enc = tok(["a short warm-up sentence"], return_tensors="np")
        sess.run(None, {n.name: enc[n.name].astype(np.int64) for n in sess.get_inputs()})
        keep = (tok, sess)
    elif kind == "onnx_int8_runtime":  # 8 apps on the int8 ONNX backend: one copy of the backbone
        from mtpf.runtime import Runtime

        rt = Runtime(backbone, backend="onnx", int8=True, onnx_dir=Path(onnx_dir) / "shared", num_threads=1,
                     batching=False)
        for name, d in apps.items():
            rt.register_app(name, d)
        for name in apps:
            (rt.extract_entities if name.startswith("ner") else rt.classify)(name, ["a short warm-up sentence"])
        keep = rt
    elif kind in ("runtime", "runtime_no_apps"):
        from mtpf.runtime import Runtime

        rt = Runtime(backbone, batching=False)
        for name, d in (apps.items() if kind == "runtime" else ()):
            rt.register_app(name, d)
        for name in (apps if kind == "runtime" else ()):
            (rt.extract_entities if name.startswith("ner") else rt.classify)(name, ["a short warm-up sentence"])
        keep = rt
    else:
        from mtpf.runtime.app import read_app
        from mtpf.runtime.onnx_export import merged_app_encoder

        # one full model = what each app ships in the naive deployment: the backbone with its LoRA merged
        names = list(apps)[:1] if kind == "one_model" else list(apps)
        keep = []
        for name in names:
            enc = merged_app_encoder(load_encoder(backbone).eval(), apps[name])
            tok = load_tokenizer(backbone)  # every app ships its own model and tokenizer
            batch = tok(["a short warm-up sentence"], return_tensors="pt")
            spec = read_app(apps[name])
            with torch.inference_mode():
                enc(**batch)
            keep.append((enc, tok, spec.head_weight))
    gc.collect()
    _trim()
    return {"kind": kind, "rss_growth_mb": rss_mb() - base}


def _trim() -> None:
    """Hand freed heap back to the OS so RSS counts live memory only (same treatment for every kind)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def weight_bytes(backbone: str, apps: dict[str, str]) -> dict:
    from safetensors import safe_open

    from mtpf.encoder import load_encoder
    from mtpf.runtime.core import lora_fingerprint

    enc = load_encoder(backbone)
    model = sum(p.numel() * p.element_size() for p in enc.parameters())
    per_app, seen = {}, set()
    for name, d in apps.items():
        total = 0
        lora = (Path(d) / "adapter_config.json").is_file()
        fp = lora_fingerprint(d) if lora else None
        files = ["head.safetensors"] + (["adapter_model.safetensors"] if lora and fp not in seen else [])
        seen.add(fp)
        for f in files:  # an adapter shared by several apps is held (and counted) once
            path = Path(d) / f
            if path.is_file():
                with safe_open(str(path), "pt") as fh:
                    for k in fh.keys():
                        t = fh.get_tensor(k)
                        total += t.numel() * t.element_size()
        per_app[name] = total
    heads = {n: (Path(d) / "head.safetensors").stat().st_size for n, d in apps.items()}
    shared = model + sum(per_app.values())
    naive = sum(model + heads[n] for n in apps)  # each app a full model copy (LoRA merged) + its head
    return {"model_mb": model / 2**20, "adapters_mb": {n: b / 2**20 for n, b in per_app.items()},
            "distinct_loras": len(seen - {None}),
            "runtime_mb": shared / 2**20, "naive_mb": naive / 2**20, "runtime_vs_one_model": shared / model,
            "naive_vs_one_model": naive / model}


# ----------------------------------------------------------------------------- 2. throughput
def closed_loop(fn, jobs, clients: int) -> float:
    """``clients`` threads each send their share of jobs one after another; returns requests/s."""
    errors = []

    def worker(k):
        for i in range(k, len(jobs), clients):
            try:
                fn(*jobs[i])
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return len(jobs) / dt


def throughput(backbone: str, apps: dict[str, str], n: int, clients: int, rounds: int, forward_rows: int,
               onnx_root: Path, threads: int) -> dict:
    import torch

    from mtpf.encoder import load_encoder, load_tokenizer
    from mtpf.runtime import Runtime
    from mtpf.runtime.app import read_app, softmax
    from mtpf.runtime.onnx_export import merged_app_encoder

    jobs = workload(n)
    results: dict[str, list[float]] = {}
    runtimes = {}
    for mode in ("mixed", "grouped"):
        rt = Runtime(backbone, mode=mode, max_batch_size=32, max_wait_ms=2, forward_rows=forward_rows)
        for name, d in apps.items():
            rt.register_app(name, d)
        runtimes[mode] = rt
    # the int8 ONNX backend: one copy of the backbone, apps as LoRA inputs, rows grouped per app
    rt = Runtime(backbone, backend="onnx", int8=True, onnx_dir=onnx_root / "int8", num_threads=threads,
                 max_batch_size=32, max_wait_ms=2, forward_rows=forward_rows)
    for name, d in apps.items():
        rt.register_app(name, d)
    runtimes["onnx_int8"] = rt
    # one request at a time, switching adapter before each: PEFT set_adapter (the baseline) / our cheap switch
    # (naive: every app's rows through all layers, no shared trunk)
    switch = Runtime(backbone, mode="grouped", batching=False, switch="set_adapter", shared_trunk=False)
    fast_switch = Runtime(backbone, mode="grouped", batching=False, switch="fast", shared_trunk=False)
    for name, d in apps.items():
        switch.register_app(name, d)
        fast_switch.register_app(name, d)

    def call(rt):
        return lambda app, op, text: rt.submit(app, op, [text]).result()

    # 8 separate full models (each app's LoRA merged into its own copy), one request at a time
    tok = load_tokenizer(backbone)
    separate = {}
    for name, d in apps.items():
        spec = read_app(d)
        separate[name] = (merged_app_encoder(load_encoder(backbone).eval(), d), spec)
    sep_lock = threading.Lock()

    def separate_call(app, op, text):
        model, spec = separate[app]
        with sep_lock, torch.inference_mode():
            enc = tok([text], return_tensors="pt", truncation=True, max_length=spec.max_length)
            h = model(**enc).last_hidden_state[0].numpy()
        if op == "classify":
            e = h.mean(0)
            e /= np.linalg.norm(e)
            return softmax(e @ spec.head_weight.T + spec.head_bias)
        return softmax(h @ spec.head_weight.T + spec.head_bias)

    modes = {
        "mixed_microbatch": (call(runtimes["mixed"]), clients),
        "grouped_microbatch": (call(runtimes["grouped"]), clients),
        "onnx_int8_microbatch": (call(runtimes["onnx_int8"]), clients),
        "per_request_set_adapter": (call(switch), clients),
        "per_request_fast_switch": (call(fast_switch), clients),
        "separate_models": (separate_call, clients),
    }
    for fn, c in modes.values():  # warm-up
        closed_loop(fn, jobs[:16], min(c, 4))
    for r in range(rounds):  # interleaved rounds: the 2 cores are shared, so load drifts
        for name, (fn, c) in modes.items():
            results.setdefault(name, []).append(closed_loop(fn, jobs, c))
            print(f"  round {r}: {name}: {results[name][-1]:.1f} req/s", flush=True)
    stats = {m: rt.stats() for m, rt in runtimes.items()}
    for rt in list(runtimes.values()) + [switch, fast_switch]:
        rt.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {"requests": n, "clients": clients, "rounds": rounds, "forward_rows": forward_rows, "req_per_s_median": med, "req_per_s_all": results,
            "batcher_stats": stats,
            "mixed_vs_switching": med["mixed_microbatch"] / med["per_request_set_adapter"],
            "grouped_vs_switching": med["grouped_microbatch"] / med["per_request_set_adapter"],
            "onnx_int8_vs_switching": med["onnx_int8_microbatch"] / med["per_request_set_adapter"],
            "best_vs_switching": max(med[k] for k in ("mixed_microbatch", "grouped_microbatch",
                                                      "onnx_int8_microbatch")) / med["per_request_set_adapter"],
            "best_vs_fast_switch": max(med["mixed_microbatch"], med["grouped_microbatch"])
            / med["per_request_fast_switch"],
            "best_vs_separate": max(med["mixed_microbatch"], med["grouped_microbatch"]) / med["separate_models"]}


def load_sweep(backbone: str, apps: dict[str, str], n: int, forward_rows: int) -> dict:
    """Throughput and mean micro-batch size of the default runtime as the number of concurrent clients grows."""
    from mtpf.runtime import Runtime

    jobs = workload(n)
    out = {}
    with Runtime(backbone, max_batch_size=32, max_wait_ms=2, forward_rows=forward_rows) as rt:
        for name, d in apps.items():
            rt.register_app(name, d)
        closed_loop(lambda a, op, t: rt.submit(a, op, [t]).result(), jobs[:16], 4)
        for clients in (1, 4, 16, 32, 64):
            before = len(rt.batch_log)
            rps = closed_loop(lambda a, op, t: rt.submit(a, op, [t]).result(), jobs, clients)
            rows = [r for _, r, _ in list(rt.batch_log)[before:]]
            out[str(clients)] = {"req_per_s": rps, "batch_rows_mean": float(np.mean(rows))}
            print(f"  {clients} clients: {rps:.1f} req/s, {np.mean(rows):.1f} rows/batch", flush=True)
    return out


# ----------------------------------------------------------------------------- 3. latency
def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1000, q))


def latency(backbone: str, apps: dict[str, str], onnx_root: Path, n: int, threads: int) -> dict:
    import torch

    from mtpf.runtime import Runtime

    texts = [t for _, op, t in workload(8 * n) if op == "classify"][:n]
    out = {}
    configs = [("pytorch", dict(backend="torch")),
               ("onnx_fp32", dict(backend="onnx", onnx_dir=onnx_root / "fp32", num_threads=threads)),
               ("onnx_int8", dict(backend="onnx", int8=True, onnx_dir=onnx_root / "int8", num_threads=threads))]
    rts = {}
    for name, kw in configs:
        rt = Runtime(backbone, max_wait_ms=2, **kw)
        for a in ("tc0", "tc1"):  # tc0: LoRA app (merged graph on ONNX); a head-only path is the backbone graph
            rt.register_app(a, apps[a])
        rt.classify("tc0", texts[:8])
        rts[name] = rt
    torch.set_num_threads(threads)
    samples = {name: [] for name in rts}
    for r in range(2):  # interleave so that background load hits all three alike
        for name, rt in rts.items():
            for t in texts[r::2]:
                t0 = time.perf_counter()
                rt.classify("tc0", [t])
                samples[name].append(time.perf_counter() - t0)
    # the bare forward, no runtime around it
    raw = {}
    enc_t = rts["pytorch"]
    tok = enc_t.tokenizer
    for name in rts:
        xs = []
        key = rts[name]._apps["tc0"].key
        for t in texts[:n // 2]:
            enc = tok([t], return_tensors="np")
            feeds = {k: enc[k].astype(np.int64) for k in enc_t.input_names}
            t0 = time.perf_counter()
            rts[name].backend.forward(feeds, [key])  # the backend alone: no queue, tokeniser or head
            xs.append(time.perf_counter() - t0)
        raw[name] = xs
    for name in rts:
        out[name] = {"runtime_p50_ms": pct(samples[name], 50), "runtime_p95_ms": pct(samples[name], 95),
                     "forward_p50_ms": pct(raw[name], 50), "forward_p95_ms": pct(raw[name], 95),
                     "n": len(samples[name])}
        rts[name].close()
    out["int8_vs_pytorch_p50"] = out["onnx_int8"]["runtime_p50_ms"] / out["pytorch"]["runtime_p50_ms"]
    out["fp32_vs_pytorch_p50"] = out["onnx_fp32"]["runtime_p50_ms"] / out["pytorch"]["runtime_p50_ms"]
    return out


# ----------------------------------------------------------------------------- 4. int8 accuracy
def int8_accuracy(backbone: str, onnx_root: Path, threads: int) -> dict:
    from mtpf.downstream.tc import TCConfig, experiment_indices, run_protocol
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.runtime import Runtime
    from mtpf.runtime.testing import make_app_adapter

    train = [json.loads(x) for x in (DATA / "cls" / "banking77" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (DATA / "cls" / "banking77" / "test.jsonl").read_text().splitlines()]
    labels = sorted({r["label"] for r in train})
    lid = {lab: i for i, lab in enumerate(labels)}
    ytr = np.asarray([lid[r["label"]] for r in train])
    yte = np.asarray([lid[r["label"]] for r in test])
    cfg = TCConfig()
    experiments = experiment_indices([r["label"] for r in train], 8, cfg.n_experiments, 42)
    union = sorted({i for e in experiments for i in e})
    texts_tr = [train[i]["text"] for i in union]
    texts_te = [r["text"] for r in test]
    with tempfile.TemporaryDirectory() as tmp:
        enc = load_encoder(backbone)
        # the bare backbone as an app: no LoRA, mean pooling, normalised (= the all-MiniLM-L6-v2 ST pipeline)
        app = make_app_adapter(Path(tmp) / "emb", backbone, "tc", lora=False, normalize=True, encoder=enc,
                               fingerprint=fingerprint_model(enc))
        out = {}
        for name, kw in (("pytorch", dict(backend="torch")),
                         ("onnx_int8", dict(backend="onnx", int8=True, onnx_dir=onnx_root / "int8",
                                            num_threads=threads))):
            t0 = time.perf_counter()
            with Runtime(backbone, max_batch_size=64, **kw) as rt:
                rt.register_app("emb", app)
                etr = np.concatenate([rt.embed("emb", texts_tr[i:i + 256]) for i in range(0, len(texts_tr), 256)])
                ete = np.concatenate([rt.embed("emb", texts_te[i:i + 256]) for i in range(0, len(texts_te), 256)])
            res = run_protocol(etr, ytr, ete, yte, experiments, cfg, seed=42, union=union)
            out[name] = {"accuracy": res["accuracy"], "accuracy_std": res["accuracy_std"], "f1": res["f1"],
                         "embed_s": time.perf_counter() - t0}
            out.setdefault("_emb", {})[name] = ete
        a, b = out["_emb"]["pytorch"], out.pop("_emb")["onnx_int8"]
        out["test_embedding_cosine_mean"] = float((a * b).sum(1).mean())
        out["test_embedding_cosine_min"] = float((a * b).sum(1).min())
    out["accuracy_drop_points"] = 100 * (out["pytorch"]["accuracy"] - out["onnx_int8"]["accuracy"])
    out["protocol"] = ("MTEB classification: 8 samples/label undersampled, 10 experiments, "
                       "LogisticRegression(max_iter=100, random_state=42), test split (2048 rows), accuracy; "
                       "mtpf.downstream.tc.experiment_indices/run_protocol")
    return out


# ----------------------------------------------------------------------------- 5. analyze (shared trunk)
def analyze_texts(n: int) -> list[str]:
    """Half CoNLL-2003 sentences, half Banking77 questions (the same texts for every app)."""
    jobs = workload(2 * n)
    ner = [t for _, op, t in jobs if op == "entities"]
    tc = [t for _, op, t in jobs if op == "classify"]
    return [x for pair in zip(ner, tc) for x in pair][:n]


def same_outputs(a: list[dict], b: dict[str, list]) -> bool:
    """analyze() result vs per-app results: same spans / labels, probabilities within 1e-4."""
    for i, row in enumerate(a):
        for app, got in row.items():
            want = b[app][i]
            if got["task"] == "ner":
                if [(s["type"], s["start"], s["end"]) for s in got["entities"]] != \
                        [(s["type"], s["start"], s["end"]) for s in want]:
                    return False
            elif got["label"] != want["label"] or not np.allclose(
                    list(got["probabilities"].values()), list(want["probabilities"].values()), atol=1e-4):
                return False
    return True


def agreement(a: list[dict], b: dict[str, list]) -> dict:
    """How far analyze() and per-app results agree: share of equal NER span lists and TC labels, largest TC
    probability difference (int8 ONNX: outputs move with the batch composition, see analyze_bench)."""
    spans, labels, diff = [], [], 0.0
    for i, row in enumerate(a):
        for app, got in row.items():
            want = b[app][i]
            if got["task"] == "ner":
                spans.append([(s["type"], s["start"], s["end"]) for s in got["entities"]]
                             == [(s["type"], s["start"], s["end"]) for s in want])
            else:
                labels.append(got["label"] == want["label"])
                diff = max(diff, float(np.abs(np.subtract(list(got["probabilities"].values()),
                                                          list(want["probabilities"].values()))).max()))
    return {"ner_span_lists_equal": float(np.mean(spans)) if spans else None,
            "tc_labels_equal": float(np.mean(labels)) if labels else None, "tc_max_prob_diff": diff}


def analyze_bench(backbone: str, apps: dict[str, str], n: int, rounds: int, onnx_root: Path, threads: int,
                  device: str = "cpu") -> dict:
    """``Runtime.analyze`` (trunk + shared adapters) vs 8 separate per-app calls on a runtime without either."""
    from mtpf.runtime import Runtime

    texts = analyze_texts(n)
    out = {"texts": len(texts), "apps": list(apps), "rounds": rounds,
           "baseline": "8 separate per-app calls (classify / extract_entities of one app on all texts, apps one "
                       "after the other) on Runtime(shared_trunk=False, dedup=False) of the same backend: every "
                       "call runs all layers of its app's model (its LoRA active) over every text"}
    for name, kw in (("pytorch", dict(backend="torch")),
                     ("onnx_int8", dict(backend="onnx", int8=True, onnx_dir=onnx_root / "int8", num_threads=threads))):
        rts = {"analyze": Runtime(backbone, max_batch_size=64, device=device, **kw),
               "analyze_no_dedup": Runtime(backbone, max_batch_size=64, device=device, dedup=False, **kw),
               "separate": Runtime(backbone, max_batch_size=64, device=device, shared_trunk=False, dedup=False,
                                   **kw)}
        try:
            for rt in rts.values():
                for a, d in apps.items():
                    rt.register_app(a, d)
                rt.analyze(texts[:8])  # warm-up
            rt = rts["analyze"]
            first = None
            times: dict[str, list[float]] = {"analyze": [], "analyze_no_dedup": [], "separate": []}
            t_alone: dict[str, list[float]] = {}
            rows_before = dict(rt.stats())
            for r in range(rounds):  # interleaved: load on the shared CPU drifts
                t0 = time.perf_counter()
                res = rt.analyze(texts, apps=list(apps))
                times["analyze"].append(time.perf_counter() - t0)
                if r == 0:
                    st = rt.stats()
                    rows = {k: st[k] - rows_before[k] for k in ("trunk_rows", "adapter_rows", "rows_served")}
                t0 = time.perf_counter()
                rts["analyze_no_dedup"].analyze(texts, apps=list(apps))
                times["analyze_no_dedup"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sep = {}
                for a in apps:
                    t1 = time.perf_counter()
                    base = rts["separate"]
                    sep[a] = (base.extract_entities if a.startswith("ner") else base.classify)(a, texts)
                    t_alone.setdefault(a, []).append(time.perf_counter() - t1)
                times["separate"].append(time.perf_counter() - t0)
                first = first or (res, sep)
            if name == "onnx_int8":
                # int8 dynamic quantisation scales activations per tensor, so a row's output depends on the
                # other rows of its forward: the baseline disagrees with itself when only the order of the
                # texts changes. Measured here to put the analyze-vs-baseline agreement in context.
                base = rts["separate"]
                rev = {a: (base.extract_entities if a.startswith("ner") else base.classify)(a, texts[::-1])[::-1]
                       for a in apps}
                self_rows = [{a: ({"task": "ner", "entities": first[1][a][i]} if a.startswith("ner")
                                  else {"task": "tc", **first[1][a][i]}) for a in apps} for i in range(len(texts))]
                baseline_self = agreement(self_rows, rev)
            med = {k: statistics.median(v) for k, v in times.items()}
            out[name] = {"analyze_s": med["analyze"], "analyze_no_dedup_s": med["analyze_no_dedup"],
                         "separate_calls_s": med["separate"], "speedup": med["separate"] / med["analyze"],
                         "speedup_no_dedup": med["separate"] / med["analyze_no_dedup"],
                         "all_s": times,
                         "analyze_ms_per_text_per_app": 1000 * med["analyze"] / (len(texts) * len(apps)),
                         "alone_ms_per_text": {a: 1000 * statistics.median(v) / len(texts) for a, v in t_alone.items()},
                         "same_outputs": same_outputs(*first),
                         "agreement": agreement(*first),
                         "analyze_rows": rows,
                         **({"baseline_vs_itself_texts_reversed": baseline_self} if name == "onnx_int8" else {}),
                         "adapters_loaded": {k: v.adapters_loaded for k, v in rts.items()},
                         "shared_layers": {a: rt.app_info(a)["shared_layers"] for a in apps}}
            print(f"  {name}: analyze {med['analyze']:.2f} s (no dedup {med['analyze_no_dedup']:.2f} s), "
                  f"8 separate calls {med['separate']:.2f} s -> {out[name]['speedup']:.2f}x "
                  f"(no dedup {out[name]['speedup_no_dedup']:.2f}x; same outputs: {out[name]['same_outputs']}, "
                  f"agreement {out[name]['agreement']}; rows {rows})", flush=True)
            if name == "onnx_int8":
                print(f"    int8 baseline vs itself with the texts reversed: {baseline_self}", flush=True)
        finally:
            for rt in rts.values():
                rt.close()
    return out


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="packaged")
    ap.add_argument("--requests", type=int, default=480)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency-requests", type=int, default=100)
    ap.add_argument("--sweep-requests", type=int, default=160, help="requests per point of the load sweep")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / ONNX Runtime intra-op threads (1: the 2 cores here are shared with other jobs)")
    ap.add_argument("--forward-rows", type=int, default=8, help="rows per forward pass inside a micro-batch")
    ap.add_argument("--analyze-texts", type=int, default=200, help="texts of the analyze section")
    ap.add_argument("--device", default="cpu", help="device of the analyze section: cpu, cuda, cuda:N, auto")
    ap.add_argument("--smoke", action="store_true",
                    help="quick look: analyze on 40 texts and 1 round, memory without the 8 separate models")
    ap.add_argument("--skip", default="",
                    help="comma list of sections to skip: memory,throughput,sweep,latency,accuracy,analyze")
    ap.add_argument("--only", default="", help="comma list of the only sections to run (same names)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--memory-probe", nargs=2, metavar=("KIND", "APPS_JSON"), help=argparse.SUPPRESS)
    ap.add_argument("--probe-onnx-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from mtpf.cli import quiet_libraries

    quiet_libraries()
    from mtpf.encoder import resolve_model

    backbone = resolve_model(args.backbone)
    if args.memory_probe:
        kind, apps_json = args.memory_probe
        print(json.dumps(memory_probe(kind, backbone, json.loads(apps_json), args.probe_onnx_dir)))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    sections = {"memory", "throughput", "sweep", "latency", "accuracy", "analyze"}
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))
    if (skip | only) - sections:
        print(f"bench_runtime.py: unknown section(s) {sorted((skip | only) - sections)}; "
              f"choose from {sorted(sections)}", file=sys.stderr)
        return 2
    if only:
        skip = sections - only
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "threads": args.threads,
                          "loadavg_start": os.getloadavg()},
              "backbone": backbone, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtpf-bench-") as tmp:
        tmp = Path(tmp)
        if args.smoke:
            args.analyze_texts, args.rounds = min(args.analyze_texts, 40), 1
            report["smoke"] = True
        apps = make_apps(tmp / "apps", backbone)  # today's set
        apps_issue = make_apps(tmp / "apps_issue", backbone, ner_layers=2, shared_tc=True)
        report["apps"] = {n: json.loads((Path(d) / "mtpf_app.json").read_text())["task"] for n, d in apps.items()}
        report["app_sets"] = {
            "issue": "4 TC apps sharing one `tc` task-primary adapter (rank 32, last 2 layers) + 4 different heads; "
                     "4 NER apps with --lora-layers 2 (own LoRA each) + heads",
            "today": "4 NER apps with LoRA on all layers + heads; 4 TC apps with their own LoRA (last 2 layers) "
                     "+ heads"}
        if "memory" not in skip:
            print("== memory", flush=True)
            from mtpf.encoder import load_encoder, load_tokenizer
            from mtpf.runtime import Runtime
            from mtpf.runtime.onnx_export import export_encoder_dir

            onnx_mem = tmp / "onnx_mem"  # exported here, so the probes only load
            export_encoder_dir(load_encoder(backbone), load_tokenizer(backbone), onnx_mem / "one", int8=True)
            Runtime(backbone, backend="onnx", int8=True, onnx_dir=onnx_mem / "shared", batching=False).close()

            def probe(kind, app_set):
                out = subprocess.run([sys.executable, __file__, "--backbone", backbone, "--memory-probe", kind,
                                      json.dumps(app_set), "--probe-onnx-dir", str(onnx_mem)],
                                     capture_output=True, text=True, check=True)
                return json.loads(out.stdout.strip().splitlines()[-1])["rss_growth_mb"]

            mem = {}
            for kind in ("one_model", "runtime_no_apps", "onnx_int8_one_model"):  # no app set involved
                mem[kind] = probe(kind, apps)
                print(f"  {kind}: +{mem[kind]:.0f} MB RSS", flush=True)
            for label, app_set in (("issue_set", apps_issue), ("today_set", apps)):
                m = {"apps": report["app_sets"][label.split("_")[0]], "weights": weight_bytes(backbone, app_set)}
                kinds = ("runtime", "onnx_int8_runtime") + (() if args.smoke else ("separate_models",))
                for kind in kinds:
                    m[kind] = probe(kind, app_set)
                    print(f"  {label}: {kind}: +{m[kind]:.0f} MB RSS", flush=True)
                m["runtime_vs_one_model_rss"] = m["runtime"] / mem["one_model"]
                m["onnx_int8_runtime_vs_one_int8_model_rss"] = m["onnx_int8_runtime"] / mem["onnx_int8_one_model"]
                if "separate_models" in m:
                    m["separate_vs_one_model_rss"] = m["separate_models"] / mem["one_model"]
                    m["separate_vs_runtime_rss"] = m["separate_models"] / m["runtime"]
                print(f"  {label}: 8 apps on int8 ONNX vs one int8 model: "
                      f"{m['onnx_int8_runtime_vs_one_int8_model_rss']:.2f}x; 8 apps on PyTorch vs one model: "
                      f"{m['runtime_vs_one_model_rss']:.2f}x", flush=True)
                mem[label] = m
            report["memory"] = mem
        if "throughput" not in skip:
            print("== throughput", flush=True)
            report["throughput"] = throughput(backbone, apps, args.requests, args.clients, args.rounds,
                                              args.forward_rows, tmp / "onnx", args.threads)
            tp = report["throughput"]
            print(f"  best micro-batching vs per-request set_adapter: {tp['best_vs_switching']:.2f}x "
                  f"(torch mixed {tp['mixed_vs_switching']:.2f}x, grouped {tp['grouped_vs_switching']:.2f}x, "
                  f"onnx int8 {tp['onnx_int8_vs_switching']:.2f}x)", flush=True)
        if "sweep" not in skip:
            print("== load sweep", flush=True)
            report["load_sweep"] = load_sweep(backbone, apps, args.sweep_requests, args.forward_rows)
        if "latency" not in skip:
            print("== latency", flush=True)
            report["latency"] = latency(backbone, apps, tmp / "onnx", args.latency_requests, args.threads)
            print(json.dumps(report["latency"], indent=1), flush=True)
        if "accuracy" not in skip and (DATA / "cls" / "banking77").is_dir():
            print("== int8 accuracy (Banking77)", flush=True)
            report["int8_accuracy"] = int8_accuracy(backbone, tmp / "onnx", args.threads)
            print(json.dumps(report["int8_accuracy"], indent=1), flush=True)
        if "analyze" not in skip:
            print("== analyze: issue set (4 TC sharing the tc adapter, 4 NER --lora-layers 2), same texts",
                  flush=True)
            report["analyze"] = analyze_bench(backbone, apps_issue, args.analyze_texts, args.rounds, tmp / "onnx",
                                              args.threads, args.device)
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runtime.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
