"""Task-primary LoRAs: each LoRA group learns only from its own task; the backbone from both."""
import pytest
import torch

from mtpf.config import load_config
from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

from conftest import tiny_run_overrides


def _recipe(tiny, toy_data, tmp_path, **extra):
    extra.setdefault("strategy", "mtpf-tpl")
    cfg = load_config(PretrainConfig, None, tiny_run_overrides(tiny, toy_data, tmp_path / "run", **extra))
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    return recipe


def _groups(model):
    groups = {"ner": {}, "tc": {}, "backbone": {}, "head": {}}
    for n, p in model.named_parameters():
        key = "ner" if ".lora_A.ner." in n or ".lora_B.ner." in n else "tc" if ".lora_A.tc." in n or ".lora_B.tc." in n \
            else "head" if n.startswith("ner_head") else "backbone"
        groups[key][n] = p
    return groups


@pytest.mark.parametrize("task", ["tc", "ner"])
def test_one_task_step_touches_only_its_group(tiny_bert, toy_data, tmp_path, task):
    recipe = _recipe(tiny_bert, toy_data, tmp_path, weight_decay=0.01)
    model = recipe.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = recipe._tc_micro_step if task == "tc" else recipe._ner_micro_step
    step(recipe._next_batch(task), 1.0, True)
    groups = _groups(model)
    other = "ner" if task == "tc" else "tc"
    assert groups[other] and all(p.grad is None for p in groups[other].values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[task].values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["backbone"].values())
    recipe.optimizer.step()
    after = dict(model.named_parameters())
    changed = lambda names: any(not torch.equal(before[n], after[n]) for n in names)  # noqa: E731
    assert not changed(groups[other]), f"{other} LoRA moved on a {task}-only step"
    assert changed(groups[task]) and changed(groups["backbone"])
    if task == "tc":
        assert not changed(groups["head"])


def _capture_step_grads(recipe):
    """Run recipe.train_step() but record the gradients the optimizer is about to apply."""
    captured = {}
    real_step = recipe.optimizer.step

    def spy(*a, **k):
        for n, p in recipe.model.named_parameters():
            captured[n] = None if p.grad is None else p.grad.clone()
        return real_step(*a, **k)

    recipe.optimizer.step = spy
    recipe.train_step()
    recipe.optimizer.step = real_step
    return captured


@pytest.mark.parametrize("pcgrad", [False, True])
def test_backbone_gets_sum_or_pcgrad_of_task_gradients(tiny_bert_nodropout, toy_data, tmp_path, pcgrad):
    from mtpf.pretrain.pcgrad import flatten, pcgrad_combine, unflatten

    recipe = _recipe(tiny_bert_nodropout, toy_data, tmp_path, pcgrad=pcgrad, max_grad_norm="null")
    model = recipe.model
    data = {task: recipe._next_batch(task) for task in ("ner", "tc")}
    per_task = {}
    for task, fn in (("ner", recipe._ner_micro_step), ("tc", recipe._tc_micro_step)):
        fn(data[task], 1.0, True)
        per_task[task] = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    recipe._next_batch = data.__getitem__  # the step sees the same batches
    step_grads = _capture_step_grads(recipe)

    groups = _groups(model)
    names = list(groups["backbone"])
    params = [groups["backbone"][n] for n in names]
    g_ner = flatten([per_task["ner"][n] for n in names], params)
    g_tc = flatten([per_task["tc"][n] for n in names], params)
    if pcgrad:
        expected = pcgrad_combine([g_ner, g_tc], seed=recipe.cfg.seed * 1_000_003 + 0)
        # the projection must actually act here, or the test would not tell PCGrad from a sum
        assert not torch.allclose(expected, g_ner + g_tc)
    else:
        expected = g_ner + g_tc
    for n, e in zip(names, unflatten(expected, params)):
        torch.testing.assert_close(step_grads[n], e, rtol=1e-4, atol=1e-7)
    # task-owned parameters keep exactly their own task's gradient
    for n in groups["ner"]:
        torch.testing.assert_close(step_grads[n], per_task["ner"][n])
    for n in groups["tc"]:
        torch.testing.assert_close(step_grads[n], per_task["tc"][n])


@pytest.mark.parametrize("strategy", ["mtpf-tpl", "pf-lora"])
def test_clipping_keeps_each_lora_to_its_own_task(tiny_bert_nodropout, toy_data, tmp_path, strategy):
    """With clipping on, a full train_step: the tc LoRA after the step does not depend on the NER loss (only its
    weight changes here), while the backbone (mtpf-tpl) does. One global norm made every gradient's scale depend
    on both losses."""
    after = {}
    for w in (1.0, 10.0):
        recipe = _recipe(tiny_bert_nodropout, toy_data, tmp_path / f"w{w}", strategy=strategy, max_grad_norm=1.0,
                         ner_loss_weight=w, lr=1e-3)
        recipe.train_step()
        after[w] = {k: {n: p.detach().clone() for n, p in g.items()} for k, g in _groups(recipe.model).items()}
    tc = after[1.0]["tc"]
    assert tc and all(torch.equal(tc[n], after[10.0]["tc"][n]) for n in tc)
    if strategy == "mtpf-tpl":  # the shared backbone does feel the NER weight (the test can tell a change)
        bb = after[1.0]["backbone"]
        assert any(not torch.equal(bb[n], after[10.0]["backbone"][n]) for n in bb)
