"""Tiny randomly initialised encoders for fast tests (real tokenizers, toy sizes).

BERT/DistilBERT reuse the packaged all-MiniLM-L6-v2 WordPiece vocabulary; the RoBERTa variant gets a small
byte-level BPE trained on the spot, so BPE alignment code is exercised without any download.
"""
from __future__ import annotations

from pathlib import Path

from mtpf.encoder import packaged_model_path

_BPE_TEXT = [
    "The quick brown fox jumps over the lazy dog in New York City.",
    "Barack Obama visited Berlin and Paris last week with Angela Merkel.",
    "Apple Inc. reported earnings of 3.5 billion dollars on Tuesday.",
    "I would like a cheap Italian restaurant near downtown open until midnight.",
    "How do I reset my card PIN? My transfer has not arrived yet!",
] * 20


def make_tiny_encoder(out_dir: str | Path, arch: str = "bert", layers: int = 2, hidden: int = 32, seed: int = 0) -> str:
    """Save a tiny random ``arch`` in {bert, distilbert, roberta} (model + fast tokenizer) to ``out_dir``."""
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, DistilBertConfig, RobertaConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if arch in ("bert", "distilbert"):
        tok = AutoTokenizer.from_pretrained(packaged_model_path())
        if arch == "bert":
            cfg = BertConfig(
                vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                intermediate_size=hidden * 2, max_position_embeddings=128,
            )
        else:
            cfg = DistilBertConfig(
                vocab_size=tok.vocab_size, dim=hidden, n_layers=layers, n_heads=2, hidden_dim=hidden * 2,
                max_position_embeddings=128,
            )
    elif arch == "roberta":
        tok = _tiny_bpe_tokenizer()
        cfg = RobertaConfig(
            vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
            intermediate_size=hidden * 2, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
        )
    else:
        raise ValueError(f"unknown tiny arch {arch!r}")
    model = AutoModel.from_config(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _tiny_bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(_BPE_TEXT, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bpe.to_str()), bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>", model_max_length=128,
    )


def make_tiny_sentence_transformer(backbone: str, out, max_seq_length: int) -> str:
    """A sentence-transformers folder (mean pooling, Normalize) over ``backbone`` with its own token limit, saved
    in the installed sentence-transformers' format."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    from mtpf.pretrain.export import st_module_classes

    Transformer, Pooling, Normalize = st_module_classes()
    t = Transformer(str(backbone), max_seq_length=max_seq_length)
    dim = AutoConfig.from_pretrained(str(backbone)).hidden_size
    SentenceTransformer(modules=[t, Pooling(dim, pooling_mode="mean"), Normalize()], device="cpu").save(str(out))
    return str(out)
