"""No host synchronisation inside a pre-finetuning step (issue 9: "no host synchronisation per step").

On a GPU, reading a device value on the host (``.item()``, ``float(t)``, ``if t < 0``) or an operator whose
output size depends on the data (``nonzero``, boolean indexing, ``masked_select``, ``unique``) stalls the CPU
until the GPU has caught up, so the next kernels cannot queue behind the running ones. These operators
dispatch on the CPU too, so the CPU profiler counts them here. Not visible on a CPU: ``.tolist()``,
``.numpy()`` and ``.cpu()`` of a CPU tensor (they dispatch nothing).

The step runs with the CUDA code path's settings: batches from a DataLoader worker (batch preparation, which
does read lengths, runs there on CPU tensors and never touches the device) and ``cpu_speedups=false`` (the
CPU-only dropout RNG draws its seed on the host). Losses are read back only at log steps (out of reach here).

transformers' BERT checks once per forward whether the attention mask has any padding
(``masking_utils._ignore_bidirectional_mask_sdpa``: ``padding_mask.all()``), a read every HF encoder pays, the
baselines included. The test measures that per-forward count on the bare encoder and allows exactly that many
per forward of the step; everything else must be zero.
"""
import pytest
import torch
from conftest import tiny_run_overrides

from mtpf.config import load_config
from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
            "aten::unique_dim", "aten::unique_consecutive")


def _under(event, matches) -> bool:
    """Whether ``event`` or one of its enclosing profiler events has a name that ``matches``."""
    while event is not None:
        if matches(event.name):
            return True
        event = event.cpu_parent
    return False


def _sync_reads(events, region: str | None = None) -> dict[str, int]:
    """The sync ops among ``events`` (only those inside profiler region ``region``, if given).

    torch's AdamW reads its step count on the host in two places that do not sync a GPU: the CPU kernel of
    fused AdamW (the CUDA kernel reads it on the device), and foreach/single-tensor AdamW, whose step counts
    are CPU tensors unless ``capturable``. Reads under ``Optimizer.step`` are left out of the count."""
    from collections import Counter

    return dict(Counter(
        e.name for e in events
        if e.name in SYNC_OPS and not _under(e, lambda n: n.startswith("Optimizer.step"))
        and (region is None or _under(e, lambda n: n == region))))


def _count(fn) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return _sync_reads(prof.events())


def _backbone(recipe):
    encoder = recipe.accelerator.unwrap_model(recipe.model).encoder
    return encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder


@pytest.mark.parametrize("strategy,extra", [
    ("tc", {"tc_mini_batch_size": "null"}),     # uncached InfoNCE (the CUDA default)
    ("tc", {"tc_mini_batch_size": 4}),          # GradCache chunks
    ("ner", {}),
    ("mtpf-tpl", {"tc_mini_batch_size": "null"}),
    ("mtpf", {"pcgrad": "true", "tc_mini_batch_size": "null"}),
    # full_attention_mask (on by default on CUDA): not even transformers' per-forward read is left
    ("tc", {"tc_mini_batch_size": "null", "full_attention_mask": "true"}),
    ("ner", {"full_attention_mask": "true"}),
    ("mtpf-tpl", {"tc_mini_batch_size": "null", "full_attention_mask": "true"}),
], ids=["tc", "tc-gradcache", "ner", "mtpf-tpl", "mtpf-pcgrad", "tc-4d", "ner-4d", "mtpf-tpl-4d"])
def test_a_training_step_reads_nothing_back_from_the_device(tiny_bert, toy_data, tmp_path, strategy, extra):
    extra = {"full_attention_mask": "false", **extra}
    cfg = load_config(PretrainConfig, None, tiny_run_overrides(
        tiny_bert, toy_data, tmp_path / "run", strategy=strategy, num_workers=1, cpu_speedups="false",
        max_steps=10, log_every=10**9, save_every=10**9, max_grad_norm=1.0, **extra))
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.model.train()
    recipe.train_step()  # opens the loaders; the first step may build lazy state
    backbone = _backbone(recipe)

    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]])
    with torch.no_grad():
        per_forward = _count(lambda: backbone(input_ids=ids, attention_mask=(ids != 0).long()))
    forwards = []
    hook = backbone.register_forward_hook(lambda *a: forwards.append(1))
    try:
        reads = _count(lambda: [recipe.train_step() for _ in range(2)])
    finally:
        hook.remove()
    assert forwards, "the step ran no forward through the backbone"
    if cfg.full_attention_mask:
        assert recipe.model.full_mask and reads == {}, f"{strategy}: host reads with a 4-D mask: {reads}"
        return
    assert per_forward, "transformers no longer reads the mask per forward: drop the allowance below"
    allowed = {k: v * len(forwards) for k, v in per_forward.items()}
    assert reads == allowed, (f"{strategy}: host reads in train_step {reads}, transformers' own per forward "
                              f"{per_forward} x {len(forwards)} forwards")


def test_pcgrad_combination_reads_nothing_back():
    from mtpf.pretrain.pcgrad import pcgrad_combine

    g = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-1.0, 1.0, 0.0]), torch.tensor([0.5, 0.5, -3.0])]
    assert _count(lambda: pcgrad_combine(g, seed=0)) == {}


def test_the_profiler_sees_a_host_read():
    """The checks above can fail: ``.item()``, a tensor in an ``if`` and boolean indexing are all counted."""
    x = torch.randn(8)

    def reads():
        x.sum().item()
        if x.max() < 0:
            pass
        return x[x > 0]

    counts = _count(reads)
    assert counts["aten::_local_scalar_dense"] == 2 and counts["aten::nonzero"] == 1


def _regions(prof, name: str) -> int:
    return sum(1 for e in prof.events() if e.name == name)


def test_ner_adaptation_steps_read_nothing_back_from_the_device(tiny_bert, tmp_path):
    """``mtpf adapt ner``: the frozen-feature pass, the head warm-up steps and the LoRA steps (profiler regions
    ``mtpf.ner.*``) read no device value, apart from transformers' mask check once per forward."""
    from test_ner_recipe import planted_ner
    from torch.profiler import ProfilerActivity, profile

    from mtpf.downstream.data import load_ner_dataset
    from mtpf.downstream.models import resolve
    from mtpf.downstream.ner import NerConfig, train_ner

    ds = load_ner_dataset(str(planted_ner(tmp_path / "data", sizes=(40, 10, 10))))
    cfg = NerConfig(epochs_warmup=2, epochs=2, min_steps=0, min_steps_warmup=0, batch_size=8, max_grad_norm=1.0)
    model = resolve(tiny_bert)
    from mtpf.encoder import load_encoder

    ids = torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]])
    with torch.no_grad():
        per_forward = _count(lambda: load_encoder(tiny_bert)(input_ids=ids, attention_mask=(ids != 0).long()))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_ner(model, ds, cfg, seed=0, progress=False, device="cpu")
    for region in ("mtpf.ner.features", "mtpf.ner.head_step", "mtpf.ner.train_step"):
        n = _regions(prof, region)
        assert n > 0, f"no {region} region ran"
        forwards = 0 if region == "mtpf.ner.head_step" else n
        allowed = {k: v * forwards for k, v in per_forward.items() if forwards}
        assert _sync_reads(prof.events(), region) == allowed, region


@pytest.mark.parametrize("strategy", ["tc", "ner", "mtpf-tpl"])
def test_full_attention_mask_trains_the_same(tiny_bert_nodropout, toy_data, tmp_path, strategy):
    """The 4-D mask is the attention transformers builds itself: same losses and weights after two steps."""
    runs = {}
    for full in ("false", "true"):
        cfg = load_config(PretrainConfig, None, tiny_run_overrides(
            tiny_bert_nodropout, toy_data, tmp_path / full, strategy=strategy, full_attention_mask=full,
            tc_mini_batch_size="null", cpu_speedups="false", max_steps=10, log_every=10**9, save_every=10**9))
        recipe = PretrainRecipe(cfg)
        recipe.setup()
        recipe.model.train()
        assert recipe.model.full_mask == (full == "true")
        losses = [float(v) for _ in range(2) for _, v in sorted(recipe.train_step()[0].items())]
        runs[full] = losses, {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    (want_losses, want), (got_losses, got) = runs["false"], runs["true"]
    assert got_losses == pytest.approx(want_losses, rel=1e-5)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_an_encoder_that_reads_the_mask_its_own_way_keeps_the_2d_mask(tiny_bert):
    from mtpf.encoder import accepts_full_attention_mask, load_encoder

    bert = load_encoder(tiny_bert)
    assert accepts_full_attention_mask(bert)

    class Rejects(torch.nn.Module):  # e.g. older model code: get_extended_attention_mask raises on 4-D masks
        def __init__(self):
            super().__init__()
            self.inner, self.config = bert, bert.config

        def forward(self, input_ids, attention_mask):
            if attention_mask.dim() != 2:
                raise ValueError("Wrong shape for attention_mask")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    class Ignores(Rejects):  # takes it but attends everywhere: a different output
        def forward(self, input_ids, attention_mask):
            if attention_mask.dim() != 2:
                attention_mask = torch.ones_like(input_ids)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    assert not accepts_full_attention_mask(Rejects())
    assert not accepts_full_attention_mask(Ignores())
    bert.train()  # the check restores the mode it found
    accepts_full_attention_mask(bert)
    assert bert.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", ["tc", "mtpf-tpl"])
def test_cuda_steps_never_synchronise(tiny_bert, toy_data, tmp_path, strategy):
    """On a GPU, CUDA's own sync detector (``set_sync_debug_mode("error")``) also catches what the CPU
    profiler cannot see (``.tolist()``, ``.cpu()``, blocking copies): none inside a step at the defaults."""
    cfg = load_config(PretrainConfig, None, tiny_run_overrides(
        tiny_bert, toy_data, tmp_path / "run", strategy=strategy, tc_mini_batch_size="null",
        max_steps=10, log_every=10**9, save_every=10**9))
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.model.train()
    recipe.train_step()
    assert recipe.model.full_mask
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            recipe.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
