"""``max_positions``: the longest input each encoder type's position table really takes, checked against the
model itself (a tiny random one per type): that many tokens run, one more does not."""
import pytest
import torch

from mtpf.encoder import PADDING_OFFSET_TYPES, max_positions

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=24)
EXTRA = {"longformer": dict(attention_window=[4]), "xmod": dict(languages=["en_XX"], default_language="en_XX"),
         "luke": dict(entity_vocab_size=8, entity_emb_size=16), "distilbert": dict(dim=16, n_heads=2, n_layers=1,
                                                                                 hidden_dim=32)}


def _tiny(model_type, pad_token_id):
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(model_type, **TINY, pad_token_id=pad_token_id, **EXTRA.get(model_type, {}))
    return AutoModel.from_config(cfg).eval()


@pytest.mark.parametrize("pad_token_id", [1, 3])  # RoBERTa's 1, and one that moves the offset (not MPNet's)
@pytest.mark.parametrize("model_type", sorted(PADDING_OFFSET_TYPES | {"bert", "distilbert", "electra"}))
def test_max_positions_is_what_the_model_takes(model_type, pad_token_id):
    model = _tiny(model_type, pad_token_id)
    n = max_positions(model.config)
    offset = 0 if model_type not in PADDING_OFFSET_TYPES else 2 if model_type == "mpnet" else pad_token_id + 1
    assert n == 24 - offset
    ids = torch.full((1, n + 1), 5)  # no padding token: every one gets a position
    with torch.no_grad():
        model(input_ids=ids[:, :n], attention_mask=torch.ones(1, n, dtype=torch.long))
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=ids, attention_mask=torch.ones(1, n + 1, dtype=torch.long))


def test_no_position_table_gives_none():
    from types import SimpleNamespace

    assert max_positions(SimpleNamespace(model_type="rotary")) is None
