"""CPU speed-ups of pre-finetuning (mtpf/pretrain/cpu_speed.py): padding-free NER batches give the padded
batch's logits, loss and gradients; FastDropout draws the same Bernoulli mask distribution, seeded by torch."""
import pytest
import torch
from torch import nn

from mtpf.pretrain import cpu_speed


def test_keep_mask_rate_seed_and_quantisation():
    torch.manual_seed(0)
    a = cpu_speed.keep_mask((1000, 1000), 0.1)
    assert a.dtype == torch.bool and a.shape == (1000, 1000)
    # keep probability 58982 / 65536; binomial sd over 1e6 draws is 3e-4
    assert abs(a.float().mean().item() - 58982 / 65536) < 1.5e-3
    torch.manual_seed(0)
    assert torch.equal(cpu_speed.keep_mask((1000, 1000), 0.1), a)  # torch's seed decides the mask
    assert not torch.equal(cpu_speed.keep_mask((1000, 1000), 0.1), a)  # and the generator advances
    assert cpu_speed.keep_mask((7,), 1e-9).all()  # p below the 1/65536 grain keeps everything
    assert not cpu_speed.keep_mask((64,), 1.0 - 1e-9).any()


def test_fast_dropout_scales_kept_values_and_backpropagates_the_mask():
    drop = cpu_speed.FastDropout(0.25)
    x = torch.randn(50, 40, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert 0.6 < kept.float().mean() < 0.9
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    drop.eval()
    assert drop(x) is x
    assert isinstance(drop, nn.Dropout) and drop.p == 0.25  # still what transformers/PEFT expect


def test_pack_batch_layout():
    b = cpu_speed.pack_batch([[5, 6, 7], [8], [9, 10]], [[1, 2], [3], [4, 5]])
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert b["labels"].tolist() == [[1, 2, -100, 3, 4, 5]]
    assert b["mtpf_pack"]["index"].tolist() == [0, 1, 2, 3, 6, 7]  # row * 3 + position
    assert b["mtpf_pack"]["key_mask"][:, 0, 0].tolist() == [[True, True, True], [True, False, False],
                                                             [True, True, False]]


def _tiny(tmp_path, dropout: float):
    from transformers import AutoConfig, AutoModel

    from mtpf.testing import make_tiny_encoder

    path = make_tiny_encoder(tmp_path / "m", "bert", layers=2)
    cfg = AutoConfig.from_pretrained(path)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = dropout
    return AutoModel.from_pretrained(path, config=cfg)


def test_packed_batch_gives_the_padded_hidden_states_and_gradients(tmp_path):
    from mtpf.data.samplers import pad_batch

    ref = _tiny(tmp_path, 0.0)
    fast = _tiny(tmp_path, 0.0)
    assert cpu_speed.install(fast) is True
    seqs = [[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102], [101, 2129, 2024, 2017, 102]]
    padded = pad_batch(seqs, 0)
    packed = cpu_speed.pack_batch(seqs, [[0] * len(s) for s in seqs])
    h_ref = ref(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).last_hidden_state
    h_fast = fast(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                  mtpf_pack=packed["mtpf_pack"]).last_hidden_state
    real = padded["attention_mask"].bool()
    assert h_fast.shape == (1, int(real.sum()), ref.config.hidden_size)
    torch.testing.assert_close(h_fast[0], h_ref[real], rtol=1e-5, atol=1e-5)
    weights = torch.randn(h_fast.shape[-1])
    (h_ref[real] @ weights).square().sum().backward()
    (h_fast[0] @ weights).square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    # evaluation and padded batches keep transformers' SDPA path: same outputs as an untouched model
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(**padded).last_hidden_state, ref(**padded).last_hidden_state)


def test_training_attention_dropout_drops_probabilities_not_padding(tmp_path):
    """The fast attention path: with p under the mask's grain it equals SDPA without dropout (so the
    masking and scaling are right); with p = 0.5 outputs change, reproducibly under one seed."""
    from mtpf.data.samplers import pad_batch

    model = _tiny(tmp_path, 0.0)
    cpu_speed.install(model)
    batch = pad_batch([[101, 2023, 2003, 102], [101, 7592, 102]], 0)
    layer = model.encoder.layer[0].attention.self
    q = torch.randn(2, 2, 4, 16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    mask = batch["attention_mask"].bool()[:, None, None, :]
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    got, _ = cpu_speed.attention(layer, q, k, v, mask, dropout=1e-9)
    torch.testing.assert_close(got, want)
    torch.manual_seed(3)
    a, _ = cpu_speed.attention(layer, q, k, v, mask, dropout=0.5)
    torch.manual_seed(3)
    b, _ = cpu_speed.attention(layer, q, k, v, mask, dropout=0.5)
    assert torch.equal(a, b) and not torch.allclose(a, want)


def test_install_keeps_saved_model_loadable_without_mtpf(tmp_path):
    from transformers import AutoModel

    model = _tiny(tmp_path, 0.1)
    cpu_speed.install(model)
    assert all(type(m) is not nn.Dropout for m in model.modules())
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModel.from_pretrained(tmp_path / "saved")
    assert loaded.config._attn_implementation != cpu_speed.ATTENTION


def test_roberta_gets_dropout_but_no_packing(tmp_path):
    from transformers import AutoModel

    from mtpf.testing import make_tiny_encoder

    model = AutoModel.from_pretrained(make_tiny_encoder(tmp_path / "r", "roberta"))
    assert cpu_speed.install(model) is False
    assert any(isinstance(m, cpu_speed.FastDropout) for m in model.modules())


@pytest.mark.parametrize("speedups", ["true", "false"])
def test_recipe_packs_ner_batches_only_with_cpu_speedups(tiny_bert_nodropout, toy_data, tmp_path, speedups):
    from conftest import tiny_run_overrides

    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

    cfg = load_config(PretrainConfig, None, tiny_run_overrides(tiny_bert_nodropout, toy_data, tmp_path / "run",
                                                               strategy="ner", cpu_speedups=speedups))
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    batch = recipe._next_batch("ner")["batch"]
    assert ("mtpf_pack" in batch) == (speedups == "true")
    assert ("attention_mask" in batch) == (speedups == "false")
