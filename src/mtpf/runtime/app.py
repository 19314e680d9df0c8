"""App adapters (the ``mtpf-app/1`` folder of docs/formats.md): loading, validation and post-processing.

Post-processing lives here so that every backend (PyTorch mixed batch, grouped, ONNX Runtime) turns hidden
states into the same answers:

* NER: the text is split into words by :data:`WORD_RE`, words are tokenised with ``is_split_into_words``,
  the tag of a word is read at its first sub-token, and BIO tags are decoded into spans with character
  offsets into the original text.
* TC: pooled (mean or CLS) embedding, optional L2 normalisation, linear head, softmax.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import regex

APP_META = "mtpf_app.json"
APP_FORMAT = "mtpf-app/1"

# ``regex``, not ``re``: ``re``'s \w has no combining marks (\p{M}), so "José" written decomposed (NFD) or a
# Devanagari word ("मोदी") fell apart into pieces, and entity spans cut inside words. Word characters are
# re's \w (letters, numbers, underscore) plus marks, soft hyphen and zero-width (non-)joiners, which sit
# inside words; other invisible format and control characters (a byte-order mark, zero-width space) are no words.
WORD_CHARS = r"\p{L}\p{N}_\p{M}\u00ad\u200c\u200d"
WORD_RE = regex.compile(rf"[{WORD_CHARS}]+(?:[-'’][{WORD_CHARS}]+)*|[^{WORD_CHARS}\s\p{{Cc}}\p{{Cf}}]")
"""How NER text is split into words: runs of letters/digits/underscore and combining marks, which may contain
inner hyphens or apostrophes (``state-of-the-art``, ``O'Neil``, ``don't``), or any single other visible
non-space character (punctuation, symbols). Character offsets of the words index the original string."""


class AppError(ValueError):
    """An app adapter folder is missing, malformed or does not fit the runtime's backbone."""


class FingerprintMismatchError(AppError):
    """The adapter was trained on another backbone than the one the runtime holds."""


@dataclass
class AppSpec:
    name: str
    path: Path
    task: str  # "ner" | "tc"
    labels: list[str]
    backbone_fingerprint: str
    has_lora: bool
    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 256
    metrics: dict = field(default_factory=dict)
    head_weight: np.ndarray | None = None  # [C, H] float32
    head_bias: np.ndarray | None = None  # [C]

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def read_app(adapter_dir: str | Path, name: str | None = None) -> AppSpec:
    """Read and validate ``adapter_dir`` (does not touch any model)."""
    path = Path(adapter_dir)
    meta_file = path / APP_META
    if not meta_file.is_file():
        raise AppError(f"{path}: not an mtpf app adapter (no {APP_META}); create one with `mtpf adapt`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AppError(f"{meta_file}: invalid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise AppError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != APP_FORMAT:
        raise AppError(f"{meta_file}: format is {meta.get('format')!r}, expected {APP_FORMAT!r}")
    task = meta.get("task")
    if task not in ("ner", "tc"):
        raise AppError(f"{meta_file}: task must be 'ner' or 'tc', got {task!r}")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise AppError(f"{meta_file}: 'labels' must be a non-empty list of strings")
    fp = meta.get("backbone_fingerprint")
    if not isinstance(fp, str) or not fp:
        raise AppError(f"{meta_file}: 'backbone_fingerprint' is missing; cannot check the adapter fits the backbone")
    has_lora = bool(meta.get("has_lora", False))
    if has_lora and not (path / "adapter_config.json").is_file():
        raise AppError(f"{path}: has_lora is true but adapter_config.json is missing")
    if has_lora:
        _check_lora_only(path)
    pooling = meta.get("pooling", "mean")
    if task == "tc" and pooling not in ("mean", "cls"):
        raise AppError(f"{meta_file}: pooling {pooling!r} is not supported (mean, cls)")
    head_file = path / "head.safetensors"
    if not head_file.is_file():
        raise AppError(f"{path}: head.safetensors is missing")
    from safetensors.numpy import load_file

    try:
        head = load_file(str(head_file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a broken file
        raise AppError(f"{head_file}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    if "weight" not in head or "bias" not in head:
        raise AppError(f"{head_file}: needs tensors 'weight' [C, H] and 'bias' [C], found {sorted(head)}")
    w = np.ascontiguousarray(head["weight"], dtype=np.float32)
    b = np.ascontiguousarray(head["bias"], dtype=np.float32)
    if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[0] != len(labels):
        raise AppError(f"{head_file}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not match "
                       f"{len(labels)} labels")
    if task == "ner":
        for tag in labels:
            if tag != "O" and not re.match(r"^[BI]-.+", tag):
                raise AppError(f"{meta_file}: NER label {tag!r} is not a BIO tag (O, B-X, I-X)")
    try:
        max_length = int(meta.get("max_length", 256))
    except (TypeError, ValueError):
        raise AppError(f"{meta_file}: 'max_length' must be an integer, got {meta.get('max_length')!r}") from None
    return AppSpec(
        name=name or path.name, path=path, task=task, labels=list(labels), backbone_fingerprint=fp,
        has_lora=has_lora, pooling=pooling, normalize=bool(meta.get("normalize", False)),
        max_length=max_length, metrics=meta.get("metrics") or {}, head_weight=w, head_bias=b,
    )


def split_words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for every word of ``text`` by :data:`WORD_RE`."""
    return [(m.group(0), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def decode_bio(text: str, words: list[tuple[str, int, int]], tags: list[str], scores: list[float]) -> list[dict]:
    """BIO tags per word -> entity spans ``{type, start, end, text, score}``.

    An ``I-X`` that does not continue an entity of type X starts a new one (lenient IOB2, like seqeval's
    default mode). ``score`` is the mean, over the span's words, of the probability of the predicted tag.
    """
    spans: list[dict] = []
    cur = None  # [type, start, end, [scores]]

    def close():
        if cur is not None:
            spans.append({"type": cur[0], "start": cur[1], "end": cur[2], "text": text[cur[1]:cur[2]],
                          "score": float(np.mean(cur[3]))})

    for (_, start, end), tag, score in zip(words, tags, scores):
        if tag == "O":
            close()
            cur = None
            continue
        prefix, etype = tag[0], tag[2:]
        if prefix == "I" and cur is not None and cur[0] == etype:
            cur[2] = end
            cur[3].append(score)
        else:
            close()
            cur = [etype, start, end, [score]]
    close()
    return spans


# PEFT weights the runtime serves: LoRA matrices (linear layers, embeddings) and DoRA magnitudes. Other PEFT
# features that can ride in a LoRA adapter (trainable_token_indices' token deltas, ...) have no place in its
# adapter switching or ONNX slots: the torch backend failed for every app, ONNX dropped them silently.
_LORA_WEIGHT = regex.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")


def _check_lora_only(path: Path) -> None:
    from peft.utils import load_peft_weights

    try:
        keys = list(load_peft_weights(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001 - missing or unreadable weights: one line
        raise AppError(f"{path}: cannot read its LoRA weights ({str(exc).splitlines()[0][:160]})") from None
    other = [k for k in keys if not _LORA_WEIGHT.search(k)]
    if other:
        raise AppError(f"{path}: its adapter holds {len(other)} weights that are not LoRA matrices (e.g. {other[0]}): "
                       "the runtime serves LoRA adapters only; train the app without trainable tokens / "
                       "modules_to_save")
