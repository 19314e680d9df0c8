"""Gradient equality: pre-tokenised, worker-fed batches (token cache -> DataLoader worker -> pad to a multiple
of 8) give the loss and gradients of the previous path (tokenise inside the step, pad to the longest) on
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


@pytest.mark.parametrize("strategy,extra", [
    ("tc", {}),
    ("tc", {"tc_mini_batch_size": "null", "tc_pad_chunk": 4}),  # uncached: length-sorted chunks in one graph
    ("ner", {}),
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
                assert data["a_chunks"][0]["input_ids"].shape[1] % 8 == 0
                got_loss, _ = recipe._tc_micro_step(data, 1.0, True)
                got = _grads(recipe.model)
                pairs = recipe.pair_sources[data["source"]].data[data["rows"]]
                want_loss = _reference_tc(recipe, pairs["anchor"], pairs["positive"])
            else:
                assert data["batch"]["input_ids"].shape[1] % 8 == 0
                got_loss, _ = recipe._ner_micro_step(data, 1.0, True)
                got = _grads(recipe.model)
                want_loss = _reference_ner(recipe, [sentences.tokens[i] for i in data["rows"]],
                                           [sentences.labels[i] for i in data["rows"]])
            want = _grads(recipe.model)
            torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
            assert set(got) == set(want) and got
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
