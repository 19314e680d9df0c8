import math

import pytest
import torch
import torch.nn.functional as F

from mtpf.losses import cached_info_nce_backward, info_nce
from mtpf.pretrain.pcgrad import pcgrad_combine


def reference_info_nce(a, p, tau):
    """Literal Eq. 1 of the paper, written as loops."""
    a = [x / x.norm() for x in a]
    p = [x / x.norm() for x in p]
    total = 0.0
    for i in range(len(a)):
        scores = [float(a[i] @ p[j]) / tau for j in range(len(p))]
        total += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    return total / len(a)


def test_info_nce_matches_equation_and_sentence_transformers():
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert info_nce(a, p, 0.05).item() == pytest.approx(reference_info_nce(a, p, 0.05), rel=1e-5)
    # sentence-transformers' MultipleNegativesRankingLoss: cross-entropy over scale * cos_sim, scale = 1/tau
    from sentence_transformers.util import cos_sim

    st_loss = F.cross_entropy(cos_sim(a, p) * 20.0, torch.arange(6))
    assert info_nce(a, p, 0.05).item() == pytest.approx(st_loss.item(), rel=1e-6)
    sym = (reference_info_nce(a, p, 0.1) + reference_info_nce(p, a, 0.1)) / 2
    assert info_nce(a, p, 0.1, symmetric=True).item() == pytest.approx(sym, rel=1e-5)


def test_gradcache_gradients_equal_uncached(tiny_bert):
    """Same parameter gradients with and without caching, dropout included (its RNG is replayed)."""
    from mtpf.encoder import load_encoder, load_tokenizer, mean_pool

    torch.manual_seed(0)
    model = load_encoder(tiny_bert)
    model.train()
    tok = load_tokenizer(tiny_bert)
    anchors = [f"anchor number {i} with {'words ' * (i % 5)}" for i in range(12)]
    positives = [f"positive {i} text {'more ' * (i % 3)}" for i in range(12)]

    def embed(batch):
        return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])

    def chunks(texts, size):
        return [tok(texts[s : s + size], padding=True, return_tensors="pt") for s in range(0, len(texts), size)]

    torch.manual_seed(1)
    full_a, full_p = chunks(anchors, 12)[0], chunks(positives, 12)[0]
    loss = info_nce(embed(full_a), embed(full_p), 0.05)
    loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    # Uncached with dropout: re-run with the same RNG stream as the cached first pass would use.
    torch.manual_seed(1)
    cached_loss = cached_info_nce_backward(embed, chunks(anchors, 12), chunks(positives, 12), 0.05)
    assert cached_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for n, p in model.named_parameters():
        if n in reference:
            torch.testing.assert_close(p.grad, reference[n], rtol=1e-4, atol=1e-6)
    # Now with real chunking (4 per chunk): compare against an uncached loss over chunk-wise embeddings
    # produced under the same RNG stream, i.e. identical dropout masks.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    a_chunks, p_chunks = chunks(anchors, 4), chunks(positives, 4)
    a = torch.cat([embed(c) for c in a_chunks])
    p = torch.cat([embed(c) for c in p_chunks])
    loss = info_nce(a, p, 0.05)
    loss.backward()
    reference = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    cached_loss = cached_info_nce_backward(embed, a_chunks, p_chunks, 0.05)
    assert cached_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert reference
    for n, q in model.named_parameters():
        if n in reference:
            torch.testing.assert_close(q.grad, reference[n], rtol=1e-4, atol=1e-6)


def test_gradcache_with_length_sorted_chunks_restores_pair_order():
    lin = torch.nn.Linear(3, 4)
    x_a, x_p = torch.randn(8, 3), torch.randn(8, 3)
    order = torch.tensor([3, 0, 7, 1, 5, 2, 6, 4])  # row k of the chunks is pair order[k]
    loss = info_nce(lin(x_a), lin(x_p), 0.05)
    loss.backward()
    ref = lin.weight.grad.clone()
    lin.zero_grad()
    chunks_a = [{"x": x_a[order[:4]]}, {"x": x_a[order[4:]]}]
    chunks_p = [{"x": x_p[order[:4]]}, {"x": x_p[order[4:]]}]
    out = cached_info_nce_backward(lambda c: lin(c["x"]), chunks_a, chunks_p, 0.05,
                                   anchor_order=order, positive_order=order)
    assert out.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(lin.weight.grad, ref)
    # a loss weight scales the gradient only; weight 0 (an ablation) still reports the loss, not 0/0
    lin.zero_grad()
    out = cached_info_nce_backward(lambda c: lin(c["x"]), chunks_a, chunks_p, 0.05, loss_scale=0.0,
                                   anchor_order=order, positive_order=order)
    assert out.item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.count_nonzero(lin.weight.grad) == 0


def test_pcgrad_hand_computed():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1.g2 = -1 < 0: g1' = g1 - (-1/2) g2 = [0.5, 0.5]; g2' = g2 - (-1/1) g1 = [0, 1]
    torch.testing.assert_close(pcgrad_combine([g1, g2]), torch.tensor([0.5, 1.5]))
    # no conflict: plain sum
    torch.testing.assert_close(pcgrad_combine([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]),
                               torch.tensor([2.0, 1.0]))
