"""HTTP serving benchmark: fairness between apps and bounded /metrics, over loopback (127.0.0.1) only.

    .venv/bin/python bench/bench_serve.py [--small-requests 40] [--unknown-requests 10000] [--threads 1]
    .venv/bin/python bench/bench_serve.py --smoke      # tiny random backbone, a few requests: checks it runs

Setup: the packaged all-MiniLM-L6-v2 (``--backbone``) with two apps with random adapters in the mtpf-app/1
format: ``flood``, an NER app (LoRA rank 32 on query, key, MLP of all layers + token head, max_length 256),
and ``small``, a TC app (LoRA rank 32 on the last 2 layers + head).

1. fairness: one client sends ``flood`` maximal legal requests back to back (64 texts of 5,000 characters,
   entities); meanwhile another client sends ``small`` one-text classify requests one after another. Reported:
   the small requests' latency p50/p95/max and the flood's throughput, for the default fair scheduler and for
   the FIFO baseline (a scheduler that hands every request to the runtime whole, as the server did before),
   run side by side on the same runtime. Target: fair p95 <= 1 s.
2. /metrics growth: the size of ``GET /metrics`` before and after ``--unknown-requests`` requests to random
   paths and random app names with random keys (all 401/404). Target: growth <= 10 kB for 10,000.

Bounded: every section stops after ``--max-seconds``. Prints the numbers and writes ``--out``/serve.json
(bench/results/serve.json; a temp folder with ``--smoke``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
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


def make_apps(root: Path, backbone: str) -> dict[str, str]:
    from mtpf.encoder import fingerprint_model, load_encoder
    from mtpf.runtime.testing import make_app_adapter

    enc = load_encoder(backbone)
    fp = fingerprint_model(enc)
    return {
        "flood": make_app_adapter(root / "flood", backbone, "ner", rank=32, alpha=64, layers="all", seed=1,
                                  lora_std=0.02, encoder=enc, fingerprint=fp),
        "small": make_app_adapter(root / "small", backbone, "tc", labels=[f"c{j}" for j in range(10)], rank=32,
                                  alpha=64, layers=2, seed=2, lora_std=0.02, encoder=enc, fingerprint=fp),
    }


def texts() -> tuple[list[str], list[str]]:
    """64 texts of exactly 5,000 characters (CoNLL sentences joined) and short Banking77-like questions."""
    sents, questions = [], []
    conll, bank = DATA / "ner" / "conll2003" / "test.jsonl", DATA / "cls" / "banking77" / "test.jsonl"
    if conll.is_file():
        with open(conll) as fh:
            for _, line in zip(range(2000), fh):
                sents.append(" ".join(json.loads(line)["tokens"]))
    if bank.is_file():
        with open(bank) as fh:
            questions = [json.loads(line)["text"] for _, line in zip(range(200), fh)]
    sents = sents or ["Angela Merkel met Barack Obama in Berlin on Monday to talk about trade."]
    questions = questions or ["How do I reset my card PIN?", "My transfer has not arrived yet."]
    rng = random.Random(0)
    big = []
    for _ in range(64):
        parts, n = [], 0
        while n < 5000:
            s = rng.choice(sents)
            parts.append(s)
            n += len(s) + 1
        big.append(" ".join(parts)[:5000])
    return big, questions


def fairness(url: str, keys: dict, big: list[str], questions: list[str], n_small: int, max_s: float) -> dict:
    import httpx

    stop = threading.Event()
    flood = {"requests": 0, "texts": 0, "errors": 0, "started": threading.Event()}

    def flood_loop():
        with httpx.Client(base_url=url, timeout=900) as http:
            t0 = time.perf_counter()
            while not stop.is_set():
                flood["started"].set()
                r = http.post("/v1/apps/flood/entities", json={"texts": big}, headers={"X-API-Key": keys["flood"]})
                if r.status_code == 200:
                    flood["requests"] += 1
                    flood["texts"] += len(big)
                else:
                    flood["errors"] += 1
            flood["seconds"] = time.perf_counter() - t0

    th = threading.Thread(target=flood_loop, daemon=True)
    th.start()
    flood["started"].wait(60)
    time.sleep(0.5)  # the flood request is queued / being served
    lat, errors, t_end = [], 0, time.perf_counter() + max_s
    with httpx.Client(base_url=url, timeout=900) as http:
        for i in range(n_small):
            if time.perf_counter() > t_end:
                break
            t0 = time.perf_counter()
            r = http.post("/v1/apps/small/classify", json={"texts": [questions[i % len(questions)]]},
                          headers={"X-API-Key": keys["small"]})
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
            else:
                errors += 1
            time.sleep(0.05)
    stop.set()
    th.join(timeout=900)
    arr = np.asarray(lat) if lat else np.zeros(1)
    return {"small_requests": len(lat), "small_errors": errors, "small_p50_s": float(np.percentile(arr, 50)),
            "small_p95_s": float(np.percentile(arr, 95)), "small_max_s": float(arr.max()),
            "flood_requests": flood["requests"], "flood_errors": flood["errors"],
            "flood_texts_per_s": flood["texts"] / flood.get("seconds", float("nan"))}


def metrics_growth(url: str, n: int, max_s: float, clients: int = 4) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        before = len(http.get("/metrics").content)
    sent, codes, lock = [0], {}, threading.Lock()
    t_end = time.perf_counter() + max_s

    def worker(w):
        rng = random.Random(w)
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(w, n, clients):
                if time.perf_counter() > t_end:
                    return
                name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
                path = rng.choice([f"/{name}", f"/v1/apps/{name}/classify", f"/v1/apps/{name}/entities",
                                   f"/v1/apps/{name}", f"/v1/apps/{name}/{name}", f"/v1/{name}"])
                r = http.request(rng.choice(["GET", "POST"]), path, json={"texts": ["x"]},
                                 headers={"X-API-Key": "mtpf_" + name * 3})
                with lock:
                    sent[0] += 1
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with httpx.Client(base_url=url, timeout=60) as http:
        after = len(http.get("/metrics").content)
    return {"requests": sent[0], "status_codes": {str(k): v for k, v in sorted(codes.items())},
            "metrics_bytes_before": before, "metrics_bytes_after": after, "growth_bytes": after - before}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="packaged")
    ap.add_argument("--small-requests", type=int, default=40)
    ap.add_argument("--unknown-requests", type=int, default=10000)
    ap.add_argument("--max-seconds", type=float, default=180.0, help="per section")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: fairness,metrics")
    ap.add_argument("--smoke", action="store_true", help="tiny random backbone, few requests (a run check)")
    ap.add_argument("--out", help="folder for serve.json (default: bench/results; --smoke: a temp folder)")
    args = ap.parse_args(argv)

    import torch

    from mtpf.runtime import Runtime
    from mtpf.runtime.keys import KeyStore
    from mtpf.runtime.scheduler import FairScheduler
    from mtpf.runtime.server import Limits, create_app, serve_in_thread

    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    backbone = args.backbone
    if args.smoke:
        from mtpf.testing import make_tiny_encoder

        backbone = make_tiny_encoder(tmp / "backbone", "bert")
        args.small_requests, args.unknown_requests = min(args.small_requests, 8), min(args.unknown_requests, 300)
    else:
        from mtpf.encoder import resolve_model

        backbone = str(resolve_model(backbone))
    apps = make_apps(tmp / "apps", backbone)
    big, questions = texts()
    if args.smoke:
        big = big[:8]
    result = {"command": "bench/bench_serve.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "mode": "smoke" if args.smoke else "full", "backbone": str(args.backbone),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "threads": args.threads, "loadavg": os.getloadavg()},
              "flood_request": {"texts": len(big), "chars_per_text": len(big[0])}}
    rt = Runtime(backbone)
    keys = KeyStore()
    issued = {}
    for name, path in apps.items():
        rt.register_app(name, path)
        issued[name] = keys.issue(name)
    try:
        if "fairness" not in skip:
            configs = {
                # the server before the scheduler: every request handed to the runtime whole, first come first served
                "fifo": FairScheduler(chunk_chars=10 ** 12, inflight_chars=10 ** 12, max_queued_texts=10 ** 6,
                                      deadline_s=3600),
                "fair": FairScheduler(deadline_s=3600),  # the `mtpf serve` defaults, deadline out of the way
            }
            result["fairness"] = {}
            for label, sched in configs.items():
                app = create_app(rt, keys, Limits(), scheduler=sched)
                with serve_in_thread(app) as url:
                    res = fairness(url, issued, big, questions, args.small_requests, args.max_seconds)
                result["fairness"][label] = res
                print(f"fairness [{label}]: small one-text request p50 {res['small_p50_s']:.3f} s, p95 "
                      f"{res['small_p95_s']:.3f} s, max {res['small_max_s']:.3f} s ({res['small_requests']} requests, "
                      f"{res['small_errors']} errors); flood {res['flood_texts_per_s']:.1f} texts/s", flush=True)
            f = result["fairness"]
            f["p95_fifo_over_fair"] = f["fifo"]["small_p95_s"] / max(f["fair"]["small_p95_s"], 1e-9)
            f["flood_throughput_fair_over_fifo"] = (f["fair"]["flood_texts_per_s"] /
                                                    max(f["fifo"]["flood_texts_per_s"], 1e-9))
            f["target_p95_s"], f["meets_target"] = 1.0, f["fair"]["small_p95_s"] <= 1.0
            print(f"fairness: p95 fifo/fair = {f['p95_fifo_over_fair']:.1f}x; flood throughput fair/fifo = "
                  f"{f['flood_throughput_fair_over_fifo']:.2f}x; target p95 <= 1 s: "
                  f"{'met' if f['meets_target'] else 'NOT met'}", flush=True)
        if "metrics" not in skip:
            app = create_app(rt, keys, Limits())
            with serve_in_thread(app) as url:
                m = metrics_growth(url, args.unknown_requests, args.max_seconds)
            m["target_growth_bytes"] = 10_000 if args.unknown_requests >= 10_000 else None
            result["metrics"] = m
            print(f"/metrics: {m['metrics_bytes_before']} -> {m['metrics_bytes_after']} bytes after {m['requests']} "
                  f"random unknown requests (growth {m['growth_bytes']} bytes; codes {m['status_codes']})", flush=True)
    finally:
        rt.close()
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out or (tmp if args.smoke else ROOT / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'serve.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
