"""NER inference and scoring: a class per word, entity-level micro P/R/F1 with seqeval's default
(conlleval-compatible) mode."""
from __future__ import annotations

import torch

from mtpf.downstream.ner_data import IGNORE, EncodedNer, pad_pieces
from mtpf.downstream.ner_model import NerModel, inference_copy


@torch.inference_mode()
def predict_words(model: NerModel, enc: EncodedNer, pad_id: int, batch_size: int = 128) -> list[list[int]]:
    """Class id per word (first sub-token); words without any sub-token get class 0 (``O``). Runs on the model's
    device, length-sorted batches, bf16 autocast on CUDA."""
    from mtpf.device import autocast

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    model = inference_copy(model)
    preds = [[0] * n for n in enc.n_words]
    order = sorted(range(len(enc.ids)), key=lambda i: len(enc.ids[i]))
    for s in range(0, len(order), batch_size):
        b = order[s : s + batch_size]
        batch = pad_pieces(enc, b, pad_id, device)
        with autocast(device):
            logits = model(batch["input_ids"], batch["attention_mask"])
        best = logits.argmax(-1).cpu()
        labels = batch["labels"].cpu()
        for row, i in enumerate(b):
            pos = (labels[row] != IGNORE).nonzero().flatten().tolist()
            for p, w in zip(pos, enc.words[i]):
                preds[enc.sentence[i]][w] = int(best[row, p])
    if was_training:
        model.train()
    return preds


def seqeval_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro precision/recall/F1, seqeval default mode (conlleval-compatible)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0)),
            "f1": float(f1_score(gold, pred, zero_division=0))}


def evaluate_split(model, enc: EncodedNer, gold_tags: list[list[str]], labels: list[str], pad_id: int,
                   batch_size: int) -> dict:
    pred = predict_words(model, enc, pad_id, batch_size)
    return seqeval_scores(gold_tags, [[labels[c] for c in row] for row in pred])
