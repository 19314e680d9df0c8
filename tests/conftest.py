import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread. With 2 threads on a busy shared CPU every tiny op waits for a
    descheduled worker (ms per op); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    from mtpf.testing import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_bert_nodropout(tmp_path_factory) -> str:
    """Dropout off: lets runs with different process counts see identical forward passes."""
    from transformers import AutoConfig, AutoModel

    from mtpf.testing import make_tiny_encoder

    path = make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert-nd"), "bert")
    cfg = AutoConfig.from_pretrained(path)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    model = AutoModel.from_pretrained(path, config=cfg)
    model.save_pretrained(path)
    return path


WORDS = ("the a man woman Paris Berlin Obama Merkel Apple Google visited bought city company said "
         "on Monday in York new talks").split()


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict:
    """Pseudo-label shards (K=7) and two pair sources, small enough for 2-step runs."""
    root = tmp_path_factory.mktemp("toy-data")
    rng = random.Random(0)
    (root / "labels").mkdir()
    with open(root / "labels" / "shard-00000.jsonl", "w") as f:
        for _ in range(96):
            toks = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
            f.write(json.dumps({"tokens": toks, "labels": [WORDS.index(t) % 7 for t in toks]}) + "\n")
    (root / "labels" / "clusters.json").write_text(json.dumps({"K": 7}))
    (root / "pairs").mkdir()
    for src in ("news", "captions"):
        with open(root / "pairs" / f"{src}.jsonl", "w") as f:
            for i in range(120 if src == "news" else 60):
                f.write(json.dumps({"anchor": f"{src} {i} {rng.choice(WORDS)} {rng.choice(WORDS)}",
                                    "positive": f"about {src} item {i} {rng.choice(WORDS)}"}) + "\n")
    return {"root": root, "labels": str(root / "labels"), "pairs": str(root / "pairs")}


def tiny_run_overrides(model: str, data: dict, out: Path, **extra) -> list[str]:
    base = {
        "model": model, "output_dir": str(out), "ner_data": f"[{data['labels']}]", "pairs": f"[{data['pairs']}]",
        "ner_batch_size": 8, "tc_batch_size": 16, "tc_mini_batch_size": 4, "max_steps": 2, "save_every": 1,
        "log_every": 1, "max_length": 32, "tensorboard": "false", "progress": "false", "head_lr": 1e-3,
        "lr": 1e-3, "warmup_ratio": 0.0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def make_fake_tpl_run(tiny_bert: str, out) -> str:
    """An mtpf-tpl-style run folder written by the engine's own exporter (``ner``/``tc`` adapters on the last
    layer, small random LoRA B so the adapters change the output)."""
    import torch

    from mtpf.encoder import load_encoder, load_tokenizer
    from mtpf.lora import LoraSpec, add_task_adapters
    from mtpf.pretrain.export import export_run
    from mtpf.pretrain.model import MultiTaskEncoder

    torch.manual_seed(0)
    specs = {"ner": LoraSpec(layers=1), "tc": LoraSpec(layers=1)}
    enc = add_task_adapters(load_encoder(tiny_bert), specs, train_backbone=True)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    export_run(MultiTaskEncoder(enc, 5, {"ner": "ner", "tc": "tc"}), load_tokenizer(tiny_bert), out,
               {"strategy": "mtpf-tpl"}, [], {k: v.to_dict() for k, v in specs.items()})
    return str(out)
