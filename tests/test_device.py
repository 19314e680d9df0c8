"""``--device``: one resolver (mtpf.device) used by every command; cpu plumbing tested here, CUDA where present."""
import json
import shutil
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def test_resolve_device():
    from mtpf.config import ConfigError
    from mtpf.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device(None).type == resolve_device("auto").type
    for bad in ("gpu", "cuda:x", "cuda:", "tpu:0"):
        with pytest.raises(ConfigError, match="expected auto"):
            resolve_device(bad)
    if not CUDA:
        with pytest.raises(ConfigError, match="no CUDA GPU") as err:
            resolve_device("cuda:1")
        assert "\n" not in str(err.value)


def test_device_kwargs_follow_the_constructor():
    from mtpf.config import ConfigError
    from mtpf.device import device_kwargs

    class WithDevice:
        def __init__(self, backbone, device="cpu"):
            pass

    class CpuOnly:
        def __init__(self, backbone):
            pass

    assert device_kwargs(WithDevice, "cpu") == {"device": "cpu"}
    assert device_kwargs(CpuOnly, "cpu") == {} and device_kwargs(CpuOnly, "auto") == {}
    if CUDA:
        with pytest.raises(ConfigError, match="CPU only"):
            device_kwargs(CpuOnly, "cuda")


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def inputs(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("device-data")
    ner = root / "ner"
    ner.mkdir()
    rows = [{"tokens": ["Obama", "visited", "Paris"], "tags": ["B-PER", "O", "B-LOC"]}] * 6
    for split in ("train", "dev", "test"):
        (ner / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cls = root / "cls"
    cls.mkdir()
    texts = [{"text": "I lost my card", "label": "card"}, {"text": "rate of the euro", "label": "rate"}] * 4
    for split in ("train", "test"):
        (cls / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    return {"model": tiny_bert, "ner": str(ner), "cls": str(cls), "out": root / "out"}


def _commands(i):
    m, ner, cls, out = i["model"], i["ner"], i["cls"], str(i["out"])
    return {
        "adapt ner": (["adapt", "ner", "--model", m, "--data", ner, "--output", out], "mtpf.downstream.ner",
                      "train_ner"),
        "adapt tc": (["adapt", "tc", "--model", m, "--data", cls, "--output", out], "mtpf.downstream.tc", "adapt_tc"),
        "evaluate": (["evaluate", "--model", m, "--ner", ner, "--cls", cls, "--output", out],
                     "mtpf.downstream.suite", "run_suite"),
        "evaluate-runtime": (["evaluate-runtime", "--backbone", m, "--label", "x", "--cls", cls, "--tc-app", out,
                              "--output", out], "mtpf.downstream.runtime_eval", "evaluate_runtime"),
        "analyze": (["analyze", m, "--ner-data", ner, "--sentences", "2"], "mtpf.analysis.track",
                    "Tracker.measure"),
        "demo": (["demo", "--out", out], "mtpf.demo", "Demo.label"),
    }


COMMANDS = ["adapt ner", "adapt tc", "evaluate", "evaluate-runtime", "analyze", "demo"]


def _device_seen(args, kwargs) -> str:
    """What the patched worker got: a device argument, a config's device, or the model's / Demo's device."""
    if "device" in kwargs:
        return str(kwargs["device"])
    first = args[0]
    if hasattr(first, "device") and isinstance(first.device, str):  # SuiteConfig, Demo
        return first.device
    model = args[1]  # Tracker.measure(self, model, tokenizer, adapters)
    return str(next(model.parameters()).device)


@pytest.mark.parametrize("command", COMMANDS)
def test_device_cpu_reaches_the_worker(command, inputs, monkeypatch):
    import importlib

    from mtpf.cli import main

    argv, module, attr = _commands(inputs)[command]
    seen = []

    def spy(*args, **kwargs):
        seen.append(_device_seen(args, kwargs))
        raise _Stop

    target = importlib.import_module(module)
    if "." in attr:
        cls, name = attr.split(".")
        monkeypatch.setattr(getattr(target, cls), name, spy)
    else:
        monkeypatch.setattr(target, attr, spy)
    try:
        with pytest.raises(_Stop):
            main(argv + ["--device", "cpu"])
    finally:  # the commands share one --output: what a started command wrote must not meet the next one
        shutil.rmtree(inputs["out"], ignore_errors=True)
    assert seen == ["cpu"]


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", COMMANDS)
def test_device_cuda_without_a_gpu_is_a_one_line_error(command, inputs, capsys):
    from mtpf.cli import main

    argv, _, _ = _commands(inputs)[command]
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda" in err and "no CUDA GPU" in err and "\n" not in err and "Traceback" not in err
    assert not Path(inputs["out"]).exists() or not any(Path(inputs["out"]).iterdir())


def test_ner_result_says_where_it_ran(inputs, one_torch_thread):
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    res = train_ner(resolve(inputs["model"]), load_ner_dataset(inputs["ner"]),
                    NerConfig(epochs_warmup=1, epochs=1, batch_size=4), progress=False, device="cpu")
    assert res.device == "cpu" and 0 <= res.test["f1"] <= 1


@needs_cuda
def test_ner_adaptation_on_cuda_matches_cpu_quality(inputs):
    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    ds = load_ner_dataset(inputs["ner"])
    cfg = NerConfig(epochs_warmup=3, epochs=3, batch_size=4, lr=1e-3, head_lr=1e-2)
    gpu = train_ner(resolve(inputs["model"]), ds, cfg, progress=False, device="cuda", keep_model=True)
    cpu = train_ner(resolve(inputs["model"]), ds, cfg, progress=False, device="cpu")
    assert gpu.device.startswith("cuda") and next(gpu.model.parameters()).is_cuda
    assert abs(gpu.test["f1"] - cpu.test["f1"]) <= 0.35  # bf16 autocast: close, not equal
    assert len(gpu.history) == len(cpu.history)


@needs_cuda
def test_tc_embeddings_on_cuda_match_cpu(inputs):
    import numpy as np

    from mtpf.downstream.models import resolve
    from mtpf.downstream.tc import Embedder, TCConfig

    texts = ["I lost my card", "what is the exchange rate of the euro today", "hi"]
    ref = Embedder(resolve(inputs["model"]), TCConfig(), device="cpu").compute(texts)[0]
    gpu_embedder = Embedder(resolve(inputs["model"]), TCConfig(), device="cuda")
    gpu = gpu_embedder.compute(texts)[0]
    cos = (ref * gpu).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(gpu, axis=1)
    assert cos.min() > 0.99
    assert "bf16" in gpu_embedder.embed_config() or not torch.cuda.is_bf16_supported()


def test_accelerate_state_reset_api_exists():
    """ner_train resets accelerate's process-wide state when a second adaptation asks for another device or
    precision; that uses accelerate's private ``_reset_state``/``_shared_state``: fail loudly if they go."""
    from accelerate.state import AcceleratorState

    assert callable(getattr(AcceleratorState, "_reset_state", None))
    assert isinstance(AcceleratorState._shared_state, dict)


def test_second_adaptation_with_another_precision_gets_a_fresh_accelerator(monkeypatch):
    """What failed on the GPU machine: a CUDA adaptation (bf16) then a CPU one (fp32) in the same process.
    Mirrored on the CPU by letting the second call ask for bf16, then the third for fp32 again."""
    import torch

    import mtpf.device
    from mtpf.downstream.ner_train import _accelerator

    assert _accelerator(torch.device("cpu")).mixed_precision == "no"
    monkeypatch.setattr(mtpf.device, "bf16_supported", lambda device: True)
    assert _accelerator(torch.device("cpu")).mixed_precision == "bf16"
    monkeypatch.undo()
    acc = _accelerator(torch.device("cpu"))
    assert acc.mixed_precision == "no" and acc.device.type == "cpu"


def test_seed_dropout_per_rank_keeps_rank_0_and_separates_the_others():
    import torch

    from mtpf.device import seed_dropout_per_rank

    def draws(rank):
        torch.manual_seed(7)
        seed_dropout_per_rank(7, rank)
        return torch.rand(8)

    torch.manual_seed(7)
    expected = torch.rand(8)
    assert torch.equal(draws(0), expected)  # rank 0 (and a single process): the stream is unchanged
    assert torch.equal(draws(1), draws(1))
    assert not torch.equal(draws(1), draws(0)) and not torch.equal(draws(1), draws(2))
