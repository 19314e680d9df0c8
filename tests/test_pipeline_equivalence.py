"""Gradient equality: pre-tokenised, worker-fed batches (token cache -> DataLoader worker -> pad to the longest
row on the CPU, a multiple of 8 on CUDA) give the loss and gradients of the previous path (tokenise inside the step, pad to the longest) on
the same examples, for tc, ner and mtpf-tpl."""
import pytest
import torch
from conftest import tiny_run_overrides

from mtpf.config import load_config
from mtpf.data.samplers import pad_batch
from mtpf.losses import cached_info_nce_backward, token_cross_entropy
from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe


def _grads(model):
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _reference_tc(recipe, texts_a, texts_p):
    """The step as it was: tokenise the texts in the step, sort by length, pad each chunk to its longest."""
    cfg, tok = recipe.cfg, recipe.tokenizer

    def chunks(texts):
        ids = tok(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        size = cfg.tc_mini_batch_size or len(ids)
        return [pad_batch([ids[i] for i in order[s : s + size]], tok.pad_token_id)
                for s in range(0, len(order), size)], torch.tensor(order)

    (a, ao), (p, po) = chunks(texts_a), chunks(texts_p)
    if not cfg.tc_mini_batch_size:  # uncached: the whole batch, padded to its longest, in one graph
        from mtpf.losses import info_nce
        from mtpf.losses.cached_info_nce import _unsort

        ea = _unsort(torch.cat([recipe.model("tc", **c).float() for c in a]), ao)
        ep = _unsort(torch.cat([recipe.model("tc", **c).float() for c in p]), po)
        loss = info_nce(ea, ep, cfg.temperature, cfg.symmetric, cfg.gather_negatives)
        loss.backward()
        return loss.detach()
    return cached_info_nce_backward(lambda c: recipe.model("tc", **c).float(), a, p, cfg.temperature,
                                    cfg.symmetric, cfg.gather_negatives, anchor_order=ao, positive_order=po)


def _reference_ner(recipe, sentences, labels):
    from mtpf.data.ner_pseudo import LabelledSentences, tokenize_labelled

    ids, labs = tokenize_labelled(recipe.tokenizer, LabelledSentences(sentences, labels, 7, []),
                                  recipe.cfg.max_length)
    batch = pad_batch(ids, recipe.tokenizer.pad_token_id, labs)
    loss = token_cross_entropy(recipe.model("ner", **batch).float(), batch["labels"])
    loss.backward()
    return loss.detach()


def _assert_cpu_padding(batch):
    """On the CPU a batch is padded to its longest row (no multiple-of-8 columns of pure padding)."""
    assert batch["attention_mask"][:, -1].any()


def test_budget_chunks_sorts_and_cuts_by_padded_tokens():
    from mtpf.data.pipeline import budget_chunks

    ids = [[1] * n for n in (5, 2, 9, 2, 3, 30)]
    chunks, order = budget_chunks(ids, 10, 0)
    assert order.tolist() == [1, 3, 4, 0, 2, 5]  # by length, stable
    assert [tuple(c["input_ids"].shape) for c in chunks] == [(3, 3), (1, 5), (1, 9), (1, 30)]
    assert [tuple(c["input_ids"].shape) for c in budget_chunks(ids, 100, 0)[0]] == [(5, 9), (1, 30)]
    assert [tuple(c["input_ids"].shape) for c in budget_chunks(ids, 100, 0, multiple_of=8)[0]] == [(5, 16), (1, 32)]


def test_pad_granule_follows_the_device():
    from mtpf.data.pipeline import NerBatches, pad_multiple

    assert pad_multiple("cpu") == 1 and pad_multiple(torch.device("cuda", 1)) == 8

    class Rows:
        def batch(self, k):
            return [0, 1]

    data = {"input_ids": [[5, 6, 7], [1]], "labels": [[1, 2, 3], [4]]}
    view = type("View", (), {"__getitem__": lambda self, rows: {k: [v[r] for r in rows] for k, v in data.items()}})()
    assert NerBatches(view, Rows(), 0, multiple_of=1)(0)["batch"]["input_ids"].shape == (2, 3)
    assert NerBatches(view, Rows(), 0, multiple_of=8)(0)["batch"]["input_ids"].shape == (2, 8)


@pytest.mark.parametrize("strategy,extra", [
    ("tc", {}),
    ("tc", {"tc_mini_batch_size": "null", "tc_pad_chunk": 48}),  # uncached: shared length-sorted chunks
    ("tc", {"tc_mini_batch_size": "null", "tc_pad_chunk": 0}),  # uncached: one chunk per side (CUDA default)
    ("ner", {}),  # padding-free rows on the CPU (mtpf.pretrain.cpu_speed)
    ("ner", {"cpu_speedups": "false"}),  # padded rows
    ("mtpf-tpl", {}),
])
def test_worker_fed_batches_give_the_previous_loss_and_gradients(tiny_bert_nodropout, toy_data, tmp_path,
                                                                  strategy, extra, one_torch_thread):
    from mtpf.data.ner_pseudo import load_pseudo_labels

    cfg = load_config(PretrainConfig, None, tiny_run_overrides(
        tiny_bert_nodropout, toy_data, tmp_path / "run", strategy=strategy, num_workers=1, **extra))
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    recipe.model.train()
    sentences = load_pseudo_labels([toy_data["labels"]])  # the rows, as the list reader saw them
    for task in recipe.tasks:
        for _ in range(2):
            data = recipe._next_batch(task)
            if task == "tc":
                _assert_cpu_padding((data.get("chunks") or data.get("a_chunks"))[0])
                if "chunks" in data:
                    assert len(data["chunks"]) > 1 and all(c["input_ids"].numel() <= 48 or len(c["input_ids"]) == 1
                                                           for c in data["chunks"])
                got_loss, _ = recipe._tc_micro_step(data, 1.0, True)
                got = _grads(recipe.model)
                pairs = recipe.pair_sources[data["source"]].data[data["rows"]]
                want_loss = _reference_tc(recipe, pairs["anchor"], pairs["positive"])
            else:
                if extra.get("cpu_speedups") == "false":
                    _assert_cpu_padding(data["batch"])
                else:
                    assert data["batch"]["input_ids"].shape[0] == 1 and "mtpf_pack" in data["batch"]
                got_loss, _ = recipe._ner_micro_step(data, 1.0, True)
                got = _grads(recipe.model)
                want_loss = _reference_ner(recipe, [sentences.tokens[i] for i in data["rows"]],
                                           [sentences.labels[i] for i in data["rows"]])
            want = _grads(recipe.model)
            torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
            assert set(got) == set(want) and got
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
