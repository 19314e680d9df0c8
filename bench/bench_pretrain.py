"""Training throughput of mtpf's pre-finetuning steps against the ecosystem's standard trainers.

Side by side, same model (packaged all-MiniLM-L6-v2), same examples, same batch size, one epoch each:
  contrastive: mtpf `strategy=tc` (uncached, and GradCache)  vs  sentence-transformers' trainer + MNRL
  token CE:    mtpf `strategy=ner`                            vs  HF Trainer + AutoModelForTokenClassification
Prints useful (non-padding) tokens/s, the ratio to the baseline, and achieved FLOP/s against this
machine's measured fp32 matmul peak.

    python bench/bench_pretrain.py [--data ../shared/data] [--pairs 640] [--sentences 640] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def matmul_peak(n: int = 1536, reps: int = 12) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def count_tokens(tok, texts, max_length):
    return sum(len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"])


def run_mtpf(strategy: str, overrides: dict, out: Path) -> float:
    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

    cfg = load_config(PretrainConfig, None, [f"{k}={v}" for k, v in {
        "strategy": strategy, "model": "packaged", "output_dir": str(out), "progress": "false",
        "tensorboard": "false", "save_every": 10**9, "log_every": 10**9, "warmup_ratio": 0.0, **overrides}.items()])
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.model.train()
    recipe.train_step()  # warm-up step (allocations), not timed: the baselines' first step is not timed either
    t = time.perf_counter()
    tokens = 0
    for _ in range(cfg.max_steps - 1):
        tokens += recipe.train_step()[1]
    return tokens / (time.perf_counter() - t), tokens





def run_st_mnrl(pairs, batch, max_length, mini_batch: int | None = None) -> float:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

    from mtpf.encoder import packaged_model_path

    model = SentenceTransformer(packaged_model_path(), device="cpu")
    model.max_seq_length = max_length
    ds = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=5e-5,
            report_to=[], save_strategy="no", logging_strategy="no", dataloader_drop_last=True,
            use_cpu=True, disable_tqdm=True, seed=42)
        loss = (CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=mini_batch) if mini_batch
                else MultipleNegativesRankingLoss(model, scale=20.0))
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss)
        timer = _StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    return timer.seconds_after_first()


def run_hf_token_classification(sentences, labels, num_labels, batch, max_length) -> float:
    from datasets import Dataset
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    from mtpf.data.ner_pseudo import align_first_subtoken
    from mtpf.encoder import packaged_model_path

    tok = AutoTokenizer.from_pretrained(packaged_model_path())
    model = AutoModelForTokenClassification.from_pretrained(packaged_model_path(), num_labels=num_labels)
    enc = tok(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    rows = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": [align_first_subtoken(enc.word_ids(i), labels[i]) for i in range(len(sentences))]}
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, num_train_epochs=1,
                                 learning_rate=5e-5, report_to=[], save_strategy="no", logging_strategy="no",
                                 use_cpu=True, disable_tqdm=True, seed=42, dataloader_drop_last=True)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(rows),
                          data_collator=DataCollatorForTokenClassification(tok))
        timer = _StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    return timer.seconds_after_first()


class _StepTimer:
    """Trainer callback: wall time of every step but the first (the same warm-up rule as for mtpf)."""

    def __init__(self):
        self.marks = []

    def __getattr__(self, name):  # TrainerCallback protocol: every other event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kw):
        self.marks.append(time.perf_counter())

    def seconds_after_first(self) -> float:
        return self.marks[-1] - self.marks[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--pairs", type=int, default=640, help="pairs (one epoch) for the contrastive runs")
    ap.add_argument("--sentences", type=int, default=640, help="sentences (one epoch) for the token-CE runs")
    ap.add_argument("--batch-tc", type=int, default=64)
    ap.add_argument("--batch-ner", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=2, help="runs of each configuration, interleaved; best kept")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mtpf.cli import quiet_libraries
    from mtpf.encoder import load_encoder, load_tokenizer

    quiet_libraries()
    data = Path(args.data)
    tok = load_tokenizer("packaged")
    n_params = non_embedding_params(load_encoder("packaged"))
    peak = matmul_peak()
    results = {"machine_fp32_matmul_peak_gflops": peak / 1e9, "threads": args.threads}

    # --- contrastive: the same pairs, one epoch, batch B ------------------------------------------------
    pairs, seen = [], set()
    with open(data / "pairs" / "nli_entailment_pairs.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            if r["anchor"] in seen or r["positive"] in seen:
                continue
            seen.update((r["anchor"], r["positive"]))
            pairs.append((r["anchor"], r["positive"]))
            if len(pairs) == args.pairs:
                break
    steps = len(pairs) // args.batch_tc
    per_step_tokens = count_tokens(tok, [t for p in pairs for t in p], args.max_length) / steps
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pairs"
        src.mkdir()
        with open(src / "bench.jsonl", "w") as fh:
            for a, p in pairs:
                fh.write(json.dumps({"anchor": a, "positive": p}) + "\n")
        common = {"pairs": f"[{src}]", "tc_batch_size": args.batch_tc, "max_steps": steps,
                  "max_length": args.max_length, "lr": 5e-5}
        plain, cached, st, st_cached = [], [], [], []
        for r in range(args.rounds):  # interleaved, so drifts of the machine hit every configuration alike
            plain.append(run_mtpf("tc", {**common, "tc_mini_batch_size": "null"}, Path(tmp) / f"a{r}")[0])
            cached.append(run_mtpf("tc", {**common, "tc_mini_batch_size": args.batch_tc // 2}, Path(tmp) / f"b{r}")[0])
            st.append(per_step_tokens * (steps - 1) / run_st_mnrl(pairs, args.batch_tc, args.max_length))
            st_cached.append(per_step_tokens * (steps - 1)
                             / run_st_mnrl(pairs, args.batch_tc, args.max_length, args.batch_tc // 2))
    tps_plain, tps_cached, tps_st, tps_st_cached = max(plain), max(cached), max(st), max(st_cached)
    results["contrastive"] = {"mtpf_uncached": plain, "mtpf_gradcache": cached, "sentence_transformers_mnrl": st,
                              "sentence_transformers_cached_mnrl": st_cached,
                              "batch": args.batch_tc, "steps": steps}

    # --- token CE: the same sentences and labels ---------------------------------------------------------
    sentences, labels, tagset = [], [], {}
    with open(data / "ner" / "conll2003" / "train.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            sentences.append(r["tokens"])
            labels.append([tagset.setdefault(t, len(tagset)) for t in r["tags"]])
            if len(sentences) == args.sentences:
                break
    steps_ner = len(sentences) // args.batch_ner
    with tempfile.TemporaryDirectory() as tmp:
        lab = Path(tmp) / "labels"
        lab.mkdir()
        with open(lab / "shard-00000.jsonl", "w") as fh:
            for s, l in zip(sentences, labels):
                fh.write(json.dumps({"tokens": s, "labels": l}) + "\n")
        ner_tokens = count_tokens(tok, [" ".join(s) for s in sentences], args.max_length)
        ours, hf = [], []
        for r in range(args.rounds):
            ours.append(run_mtpf("ner", {"ner_data": f"[{lab}]", "ner_batch_size": args.batch_ner,
                                         "max_steps": steps_ner, "max_length": args.max_length,
                                         "num_clusters": 9}, Path(tmp) / f"n{r}")[0])
            hf.append(ner_tokens / steps_ner * (steps_ner - 1)
                      / run_hf_token_classification(sentences, labels, 9, args.batch_ner, args.max_length))
    tps_ner, tps_hf = max(ours), max(hf)
    results["token_ce"] = {"mtpf": ours, "hf_trainer": hf, "batch": args.batch_ner, "steps": steps_ner}

    # --- report ------------------------------------------------------------------------------------------
    def flops(tps, passes=6):  # 6 N T for forward+backward; GradCache adds one forward (8 N T)
        return passes * n_params * tps / 1e9

    half = args.batch_tc // 2
    rows = [  # (kind, name, tokens/s, FLOP passes, baseline tokens/s)
        ("contrastive", "sentence-transformers MNRL (baseline)", tps_st, 6, tps_st),
        ("contrastive", "mtpf tc, uncached", tps_plain, 6, tps_st),
        ("contrastive", f"sentence-transformers CachedMNRL, mini-batch {half} (baseline)", tps_st_cached, 8,
         tps_st_cached),
        ("contrastive", f"mtpf tc, GradCache chunks of {half}", tps_cached, 8, tps_st_cached),
        ("token CE", "HF Trainer + AutoModelForTokenClassification (baseline)", tps_hf, 6, tps_hf),
        ("token CE", "mtpf ner (length-bucketed)", tps_ner, 6, tps_hf),
    ]
    print(f"\nfp32 matmul peak on this machine: {peak / 1e9:.1f} GFLOP/s ({args.threads} threads); "
          f"non-embedding params {n_params / 1e6:.1f}M")
    print(f"{'step':12} {'implementation':58} {'tokens/s':>9} {'vs base':>8} {'GFLOP/s':>8} {'% peak':>7}")
    for kind, name, tps, passes, base in rows:
        print(f"{kind:12} {name:58} {tps:9.0f} {tps / base:7.2f}x {flops(tps, passes):8.1f} "
              f"{100 * flops(tps, passes) * 1e9 / peak:6.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
