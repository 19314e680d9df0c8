"""Steady-state training throughput of mtpf's pre-finetuning steps against the ecosystem's trainers.

Same model, same examples, same batch size. Every configuration runs two passes over its examples: the first
(warm-up) meets the padded shapes (allocator, cuDNN/cuBLAS plans), only the second is timed. The bare loops
replay the same batches, so every shape has been met; mtpf's sampler and the libraries' trainers reshuffle for
the second pass, so a few widths can be new to them. With DataLoader workers (CUDA) the libraries' workers
persist between the passes, as mtpf's one endless loader does: nobody restarts workers inside the timed pass.
  contrastive: mtpf `tc` (uncached and GradCache)  vs  sentence-transformers MNRL and CachedMNRL
  token CE:    mtpf `ner`                          vs  HF Trainer + AutoModelForTokenClassification with length
                                                       grouping (train_sampling_strategy="group_by_length")
  ceiling:     a bare PyTorch loop on pre-tokenised, pre-padded device batches (InfoNCE; token CE on
               globally length-sorted batches)
  mtpf-tpl:    seconds per optimizer step at --tpl-batch-tc / --tpl-batch-ner
Prints useful (non-padding) tokens/s and ratios; --json writes the raw numbers.

    python bench/bench_pretrain.py --device cpu --pairs 640 --sentences 640 --json bench/results/pretrain.json
    python bench/bench_pretrain.py --write-slice bench/data-slice --pairs 16384 --sentences 4096   # here, then carry it
    python bench/bench_pretrain.py --device cuda --random-init --tokenizer bench/data-slice/tokenizer \
        --data bench/data-slice --batch-tc 1024 --pairs 16384 --batch-ner 256 --sentences 4096 --max-length 128
Smoke test (< 1 min): --pairs 64 --batch-tc 16 --sentences 64 --batch-ner 16 --tpl-batch-tc 16 --tpl-batch-ner 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

if {"--device cpu", "--device=cpu"} & ({" ".join(sys.argv[i:i + 2]) for i in range(len(sys.argv))} | set(sys.argv)):
    # --device cpu on a GPU machine: hide the GPU before torch starts, or accelerate would put mtpf's run there
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_model(args, out: Path) -> str:
    """The packaged all-MiniLM-L6-v2, or (--random-init) a random model of its shape for machines without
    the packaged weights; the tokenizer comes from --tokenizer."""
    if not args.random_init:
        return "packaged"
    return random_minilm(args.tokenizer, out)


def random_minilm(tokenizer: str, out: Path, hidden: int = 384, intermediate: int = 1536) -> str:
    """A random BERT with MiniLM-L6's graph (6 layers, 12 heads, the tokenizer's vocabulary) saved to ``out``;
    ``hidden``/``intermediate`` change only its width."""
    from transformers import AutoModel, AutoTokenizer, BertConfig

    from mtpf.encoder import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=intermediate, max_position_embeddings=512)
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def count_tokens(tok, texts, max_length):
    return sum(len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"])


def run_mtpf(args, model: str, strategy: str, overrides: dict, out: Path, steps: int) -> dict:
    """Two passes of ``steps`` optimizer steps; the second is timed."""
    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

    cfg = load_config(PretrainConfig, None, [f"{k}={v}" for k, v in {
        "strategy": strategy, "model": model, "output_dir": str(out), "progress": "false", "lr": 5e-5,
        "tensorboard": "false", "save_every": 10**9, "log_every": 10**9, "warmup_ratio": 0.0,
        "max_steps": 2 * steps, "max_length": args.max_length, **overrides}.items()])
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.model.train()
    for _ in range(steps):
        recipe.train_step()
    sync(args.device)
    t, tokens = time.perf_counter(), 0
    for _ in range(steps):
        tokens += recipe.train_step()[1]
    sync(args.device)
    seconds = time.perf_counter() - t
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / steps, "tokens": tokens}


class _PassTimer:
    """Trainer callback: marks the end of the warm-up pass and of the timed pass (synchronising the device
    only there, so the baseline keeps its own overlap between steps)."""

    def __init__(self, steps: int, device: str):
        self.steps, self.device, self.marks = steps, device, []

    def __getattr__(self, name):  # TrainerCallback protocol: every other event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in (self.steps, 2 * self.steps):
            sync(self.device)
            self.marks.append(time.perf_counter())

    def seconds(self) -> float:
        return self.marks[-1] - self.marks[0]


def loader_workers(args) -> int:
    """The baselines prepare batches with as many DataLoader workers as mtpf does (its default: 4 on CUDA, 0 on a
    CPU), so neither side tokenises or collates on the training thread while the other does not."""
    return args.workers if args.workers is not None else (4 if args.device == "cuda" else 0)


def run_st(args, model: str, pairs, mini_batch: int | None, steps: int) -> float:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from sentence_transformers.models import Pooling, Transformer

    from mtpf.encoder import resolve_model

    word = Transformer(resolve_model(model), max_seq_length=args.max_length)
    st = SentenceTransformer(modules=[word, Pooling(word.get_word_embedding_dimension(), "mean")], device=args.device)
    ds = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    with tempfile.TemporaryDirectory() as tmp:
        targs = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_tc, num_train_epochs=2, learning_rate=5e-5,
            report_to=[], save_strategy="no", logging_strategy="no", dataloader_drop_last=True,
            use_cpu=args.device == "cpu", bf16=args.device == "cuda", disable_tqdm=True, seed=42,
            dataloader_num_workers=loader_workers(args), dataloader_persistent_workers=loader_workers(args) > 0)
        loss = (CachedMultipleNegativesRankingLoss(st, scale=20.0, mini_batch_size=mini_batch) if mini_batch
                else MultipleNegativesRankingLoss(st, scale=20.0))
        trainer = SentenceTransformerTrainer(model=st, args=targs, train_dataset=ds, loss=loss)
        timer = _PassTimer(steps, args.device)
        trainer.add_callback(timer)
        trainer.train()
    return timer.seconds()


def _trainer_with_window(window: int):
    """HF ``Trainer`` whose length grouping sorts within mega-batches of ``window`` batches, the window mtpf's
    BucketBatchSampler uses (50). transformers picks ``min(len // (4 * batch), 50)`` batches, so on a bench-sized
    set (640 sentences at batch 32: 5) it sorts within far smaller windows than it would on a real one (>= 200
    batches: 50), and the Trainer would pay padding that only the small bench gives it. Overrides the private
    ``Trainer._get_train_sampler`` (transformers 5.x; bench-only) and passes ``mega_batch_mult`` to transformers'
    own ``get_length_grouped_indices``."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class WindowSampler(LengthGroupedSampler):
        def __iter__(self):
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, mega_batch_mult=window,
                                                   generator=self.generator))

    class WindowTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            default = super()._get_train_sampler(train_dataset)
            if not isinstance(default, LengthGroupedSampler):
                raise TypeError("this transformers release no longer groups by length in _get_train_sampler")
            return WindowSampler(default.batch_size, lengths=default.lengths, generator=default.generator)

    return WindowTrainer


def run_hf_token_classification(args, model: str, sentences, labels, num_labels, steps: int,
                                window: int | None = None) -> float:
    """``window``: length-group within mega-batches of that many batches (None: transformers' own choice)."""
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from mtpf.data.ner_pseudo import align_first_subtoken
    from mtpf.encoder import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    net = AutoModelForTokenClassification.from_pretrained(resolve_model(model), num_labels=num_labels)
    enc = tok(sentences, is_split_into_words=True, truncation=True, max_length=args.max_length)
    rows = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": [align_first_subtoken(enc.word_ids(i), labels[i]) for i in range(len(sentences))]}
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(output_dir=tmp, per_device_train_batch_size=args.batch_ner, num_train_epochs=2,
                      learning_rate=5e-5, report_to=[], save_strategy="no", logging_strategy="no",
                      use_cpu=args.device == "cpu", bf16=args.device == "cuda", disable_tqdm=True, seed=42,
                      dataloader_drop_last=True, dataloader_num_workers=loader_workers(args),
                      dataloader_persistent_workers=loader_workers(args) > 0)
        try:  # transformers 5's name for length grouping; older releases call it group_by_length=True
            targs = TrainingArguments(**common, train_sampling_strategy="group_by_length")
        except TypeError:
            targs = TrainingArguments(**common, group_by_length=True)
        trainer_cls = Trainer if window is None else _trainer_with_window(window)
        trainer = trainer_cls(model=net, args=targs, train_dataset=Dataset.from_dict(rows),
                          data_collator=DataCollatorForTokenClassification(
                              tok, pad_to_multiple_of=8 if args.device.startswith("cuda") else None))
        timer = _PassTimer(steps, args.device)
        trainer.add_callback(timer)
        trainer.train()
    return timer.seconds()


def run_bare(args, model: str, pairs, steps: int) -> float:
    """The ceiling: batches tokenised, padded (to a multiple of 8 on CUDA) and on the device before the clock
    starts."""
    from mtpf.data.pipeline import pad_multiple
    from mtpf.data.samplers import pad_batch
    from mtpf.encoder import load_encoder, load_tokenizer, mean_pool
    from mtpf.losses import info_nce

    tok = load_tokenizer(model)
    net = load_encoder(model).to(args.device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=5e-5, fused=True)
    batches = []
    for s in range(steps):
        chunk = pairs[s * args.batch_tc : (s + 1) * args.batch_tc]
        enc = [tok([x[i] for x in chunk], truncation=True, max_length=args.max_length)["input_ids"] for i in (0, 1)]
        batches.append([{k: v.to(args.device)
                         for k, v in pad_batch(e, tok.pad_token_id, multiple_of=pad_multiple(args.device)).items()}
                        for e in enc])
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else torch.autocast("cpu", enabled=False)
    for p in range(2):
        if p == 1:
            sync(args.device)
            t = time.perf_counter()
        for a, b in batches:
            with amp:
                ea = mean_pool(net(**a).last_hidden_state, a["attention_mask"]).float()
                eb = mean_pool(net(**b).last_hidden_state, b["attention_mask"]).float()
            info_nce(ea, eb, 0.05).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    sync(args.device)
    return time.perf_counter() - t


def run_bare_ner(args, model: str, sentences, labels, num_labels, steps: int) -> float:
    """The token-CE ceiling: AutoModelForTokenClassification in a plain loop on batches cut from the
    length-sorted sentences (the least padding any sampler can get), tokenised, padded and on the device
    before the clock starts; dropout, AdamW and clipping as in the Trainer."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from mtpf.data.ner_pseudo import align_first_subtoken
    from mtpf.data.pipeline import pad_multiple
    from mtpf.data.samplers import pad_batch
    from mtpf.encoder import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    net = AutoModelForTokenClassification.from_pretrained(resolve_model(model), num_labels=num_labels)
    net = net.to(args.device).train()
    enc = tok(sentences, is_split_into_words=True, truncation=True, max_length=args.max_length)
    labs = [align_first_subtoken(enc.word_ids(i), labels[i]) for i in range(len(sentences))]
    order = sorted(range(len(sentences)), key=lambda i: len(enc["input_ids"][i]))
    batches = []
    for s in range(steps):
        rows = order[s * args.batch_ner : (s + 1) * args.batch_ner]
        b = pad_batch([enc["input_ids"][i] for i in rows], tok.pad_token_id, [labs[i] for i in rows],
                      multiple_of=pad_multiple(args.device))
        batches.append({k: v.to(args.device) for k, v in b.items()})
    opt = torch.optim.AdamW(net.parameters(), lr=5e-5, fused=True)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else torch.autocast("cpu", enabled=False)
    for p in range(2):
        if p == 1:
            sync(args.device)
            t = time.perf_counter()
        for b in batches:
            with amp:
                loss = net(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    sync(args.device)
    return time.perf_counter() - t


def read_pairs(data: Path, n: int):
    """The first ``n`` pairs with no repeated text, NLI first, then the other ``pairs/*.jsonl[.gz]`` files
    (batch 1024 needs more distinct pairs than one of the shared sources has)."""
    from mtpf.data.io import iter_jsonl

    files = sorted((data / "pairs").glob("*.jsonl*"), key=lambda f: (not f.name.startswith("nli"), f.name))
    pairs, seen = [], set()
    for f in files:
        for _, r in iter_jsonl(f):
            if r["anchor"] in seen or r["positive"] in seen:
                continue
            seen.update((r["anchor"], r["positive"]))
            pairs.append((r["anchor"], r["positive"]))
            if len(pairs) == n:
                return pairs
    return pairs


def read_ner(data: Path, n: int):
    from mtpf.data.io import iter_jsonl

    sentences, labels, tagset = [], [], {}
    for _, r in iter_jsonl(next((data / "ner" / "conll2003").glob("train.jsonl*"))):
        sentences.append(r["tokens"])
        labels.append([tagset.setdefault(t, len(tagset)) for t in r["tags"]])
        if len(sentences) == n:
            break
    return sentences, labels


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--random-init", action="store_true", help="random MiniLM-L6-shaped weights (no packaged model)")
    ap.add_argument("--tokenizer", default="packaged", help="tokenizer for --random-init (folder or 'packaged')")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                    help="folder with pairs/nli_entailment_pairs.jsonl and ner/conll2003/train.jsonl")
    ap.add_argument("--pairs", type=int, default=640, help="pairs per pass (contrastive)")
    ap.add_argument("--sentences", type=int, default=640, help="sentences per pass (token CE)")
    ap.add_argument("--batch-tc", type=int, default=64)
    ap.add_argument("--batch-ner", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--mini-batch", type=int, default=None, help="GradCache chunk (default batch-tc / 2)")
    ap.add_argument("--tpl-batch-tc", type=int, default=1024)
    ap.add_argument("--tpl-batch-ner", type=int, default=256)
    ap.add_argument("--tpl-steps", type=int, default=5, help="timed mtpf-tpl steps (after as many warm-up steps)")
    ap.add_argument("--tpl-mask-ab", action="store_true", help="also time mtpf-tpl with full_attention_mask=false")
    ap.add_argument("--workers", type=int, default=None, help="mtpf num_workers (default: the recipe's auto)")
    ap.add_argument("--skip", default="", help="comma list of: tc,cached,ner,bare,tpl")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=1, help="token CE: repeat the three runs side by side this many "
                    "times and report medians (a shared CPU drifts by +-10 %% between 10-second passes)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "pretrain.json"))
    ap.add_argument("--write-slice", metavar="DIR", help="only write the --pairs pairs (at least 2 x tpl-steps x "
                    "tpl-batch-tc) and --sentences sentences of --data into DIR (for --data on another machine)")
    args = ap.parse_args()
    if args.write_slice:
        out = Path(args.write_slice)
        n = max(args.pairs, 2 * args.tpl_steps * args.tpl_batch_tc)
        write_jsonl(out / "pairs" / "nli_entailment_pairs.jsonl",
                    ({"anchor": a, "positive": p} for a, p in read_pairs(Path(args.data), n)))
        sents, _ = read_ner(Path(args.data), args.sentences)
        with open(Path(args.data) / "ner" / "conll2003" / "train.jsonl") as fh:
            write_jsonl(out / "ner" / "conll2003" / "train.jsonl", (json.loads(next(fh)) for _ in sents))
        from mtpf.encoder import load_tokenizer

        load_tokenizer(args.tokenizer).save_pretrained(out / "tokenizer")  # for --random-init --tokenizer DIR/tokenizer
        print(f"wrote {out}")
        return
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    from mtpf.cli import quiet_libraries
    from mtpf.encoder import load_tokenizer

    quiet_libraries()
    data = Path(args.data)
    mini = args.mini_batch or args.batch_tc // 2
    workers = {} if args.workers is None else {"num_workers": args.workers}
    results = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
               "threads": args.threads, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(args, tmp / "model")
        tok = load_tokenizer(model)
        rows = []  # (kind, name, tokens/s, baseline tokens/s)

        pairs = read_pairs(data, args.pairs)
        steps = len(pairs) // args.batch_tc
        pairs = pairs[: steps * args.batch_tc]
        tc_tokens = count_tokens(tok, [t for p in pairs for t in p], args.max_length)
        src = write_jsonl(tmp / "pairs" / "bench.jsonl", ({"anchor": a, "positive": p} for a, p in pairs))
        common = {"pairs": f"[{src}]", "tc_batch_size": args.batch_tc, **workers}
        if "tc" not in skip:
            st = tc_tokens / run_st(args, model, pairs, None, steps)
            ours = run_mtpf(args, model, "tc", {**common, "tc_mini_batch_size": "null"}, tmp / "tc", steps)
            rows += [("contrastive", "sentence-transformers MNRL (baseline)", st, st),
                     ("contrastive", "mtpf tc, uncached", ours["tokens_per_s"], st)]
            results["contrastive"] = {"st_mnrl": st, "mtpf_tc": ours}
        if "cached" not in skip:
            stc = tc_tokens / run_st(args, model, pairs, mini, steps)
            ours = run_mtpf(args, model, "tc", {**common, "tc_mini_batch_size": mini}, tmp / "tcc", steps)
            rows += [("contrastive", f"sentence-transformers CachedMNRL, mini-batch {mini} (baseline)", stc, stc),
                     ("contrastive", f"mtpf tc, GradCache chunks of {mini}", ours["tokens_per_s"], stc)]
            results["contrastive_cached"] = {"st_cached_mnrl": stc, "mtpf_tc_gradcache": ours}
        if "bare" not in skip:
            bare = tc_tokens / run_bare(args, model, pairs, steps)
            rows.append(("contrastive", "bare pre-tokenised PyTorch loop (ceiling)", bare,
                         results.get("contrastive", {}).get("st_mnrl", bare)))
            results["bare_loop_tokens_per_s"] = bare
            if "contrastive" in results:
                results["mtpf_tc_vs_bare"] = results["contrastive"]["mtpf_tc"]["tokens_per_s"] / bare
        save_json(args.json, results)  # after each part: a run cut short by its time limit keeps what it measured

        sentences, labels = read_ner(data, args.sentences)
        steps_ner = len(sentences) // args.batch_ner
        sentences, labels = sentences[: steps_ner * args.batch_ner], labels[: steps_ner * args.batch_ner]
        k = 1 + max(x for l in labels for x in l)
        lab = write_jsonl(tmp / "labels" / "shard-00000.jsonl",
                          ({"tokens": s, "labels": l} for s, l in zip(sentences, labels)))
        if "ner" not in skip:
            ner_tokens = count_tokens(tok, [" ".join(s) for s in sentences], args.max_length)
            rounds = {"hf": [], "hf_window50": [], "mtpf": [], "bare": []}
            mtpf_runs = []
            for r in range(args.rounds):  # each round runs all of them side by side; medians over rounds
                rounds["hf"].append(ner_tokens / run_hf_token_classification(args, model, sentences, labels, k,
                                                                             steps_ner))
                # the Trainer with mtpf's grouping window: what it does on a set of >= 200 batches
                rounds["hf_window50"].append(ner_tokens / run_hf_token_classification(
                    args, model, sentences, labels, k, steps_ner, window=50))
                ours = run_mtpf(args, model, "ner", {"ner_data": f"[{lab.parent}]", "ner_batch_size": args.batch_ner,
                                                     "num_clusters": k, **workers}, tmp / f"ner{r}", steps_ner)
                rounds["mtpf"].append(ours["tokens_per_s"])
                mtpf_runs.append(ours)
                if "bare" not in skip:
                    rounds["bare"].append(ner_tokens / run_bare_ner(args, model, sentences, labels, k, steps_ner))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rounds.items() if v)
                      + f" tokens/s; mtpf/hf {rounds['mtpf'][-1] / rounds['hf'][-1]:.2f}, mtpf/hf_window50 "
                      f"{rounds['mtpf'][-1] / rounds['hf_window50'][-1]:.2f}", flush=True)
            hf, hf50, ours_tps = median(rounds["hf"]), median(rounds["hf_window50"]), median(rounds["mtpf"])
            # the whole record of the median mtpf round (not the last round's with the median's rate)
            ours = sorted(mtpf_runs, key=lambda o: o["tokens_per_s"])[(len(mtpf_runs) - 1) // 2]
            rows += [("token CE", "HF Trainer + AutoModelForTokenClassification, group_by_length (its own window)",
                      hf, hf),
                     ("token CE", "HF Trainer, group_by_length in mtpf's window of 50 batches (baseline)", hf50, hf50),
                     ("token CE", "mtpf ner (length-bucketed)", ours_tps, hf50)]
            results["token_ce"] = {
                "hf_trainer_group_by_length": hf, "hf_trainer_group_by_length_window50": hf50, "mtpf_ner": ours,
                "rounds": rounds,
                "mtpf_vs_hf_per_round": [m / h for m, h in zip(rounds["mtpf"], rounds["hf"])],
                "mtpf_vs_hf_window50_per_round": [m / h for m, h in zip(rounds["mtpf"], rounds["hf_window50"])]}
            results["token_ce"]["mtpf_vs_hf_median_of_rounds"] = median(results["token_ce"]["mtpf_vs_hf_per_round"])
            results["token_ce"]["mtpf_vs_hf_window50_median_of_rounds"] = median(
                results["token_ce"]["mtpf_vs_hf_window50_per_round"])
            if rounds["bare"]:
                bare_ner = median(rounds["bare"])
                rows.append(("token CE", "bare loop, globally length-sorted pre-padded batches (ceiling)",
                             bare_ner, hf50))
                results["token_ce"]["bare_loop"] = bare_ner
                results["token_ce"]["mtpf_ner_vs_bare"] = ours_tps / bare_ner
        save_json(args.json, results)
        if "tpl" not in skip:
            many = read_pairs(data, 2 * args.tpl_steps * args.tpl_batch_tc)
            tsrc = write_jsonl(tmp / "tpl_pairs" / "nli.jsonl", ({"anchor": a, "positive": p} for a, p in many))
            tpl_cfg = {"pairs": f"[{tsrc}]", "ner_data": f"[{lab.parent}]", "num_clusters": k,
                       "tc_batch_size": args.tpl_batch_tc, "ner_batch_size": min(args.tpl_batch_ner, len(sentences)),
                       "tc_mini_batch_size": "null", **workers}
            tpl = run_mtpf(args, model, "mtpf-tpl", tpl_cfg, tmp / "tpl", args.tpl_steps)
            results["mtpf_tpl"] = {"batch_tc": args.tpl_batch_tc, "batch_ner": args.tpl_batch_ner, **tpl}
            if args.tpl_mask_ab:  # the same steps with the 2-D mask (one host read per forward), side by side
                results["mtpf_tpl_2d_mask"] = run_mtpf(args, model, "mtpf-tpl", {**tpl_cfg, "full_attention_mask":
                                                                                 "false"}, tmp / "tpl2d", args.tpl_steps)

    print(f"\ndevice {args.device} {results['gpu'] or ''}, threads {args.threads}")
    print(f"{'step':12} {'implementation':72} {'tokens/s':>10} {'vs base':>8}")
    for kind, name, tps, base in rows:
        print(f"{kind:12} {name:72} {tps:10.0f} {tps / base:7.2f}x")
    if "mtpf_tc_vs_bare" in results:
        print(f"mtpf tc / bare loop: {results['mtpf_tc_vs_bare']:.2f}")
    if "mtpf_tpl" in results:
        print(f"mtpf-tpl at batches {args.tpl_batch_tc}/{args.tpl_batch_ner}: {results['mtpf_tpl']['s_per_step']:.3f} s/step")
    if "mtpf_tpl_2d_mask" in results:
        print(f"mtpf-tpl with the 2-D mask: {results['mtpf_tpl_2d_mask']['s_per_step']:.3f} s/step")
    save_json(args.json, results)


def save_json(path, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
