"""What a user may pass as "a model" to ``mtpf adapt`` / ``mtpf evaluate``, resolved to one description.

* ``packaged``: the packaged all-MiniLM-L6-v2 (a sentence-transformers folder);
* an mtpf run folder (``RUN/run.json``): backbone ``RUN/backbone``, task-primary adapters ``RUN/adapters/{ner,tc}``;
* a sentence-transformers folder (``modules.json``): its Transformer module's folder, its max_seq_length, and
  whether its pipeline ends with ``Normalize``;
* a plain Hugging Face folder (``config.json``) or a hub name.

``normalize`` follows what ``SentenceTransformer(path)`` (and so mteb) would do with the same folder: run folders
and sentence-transformers folders with a ``Normalize`` module give L2-normalised embeddings, plain HF models do
not. Pooling is always mean pooling (the paper's protocol).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mtpf.config import ConfigError
from mtpf.encoder import PACKAGED, packaged_model_path, resolve_model

TASKS = ("ner", "tc")


@dataclass
class ModelRef:
    label: str
    ref: str
    kind: str  # "run" | "sentence-transformers" | "hf"
    backbone: str  # what load_encoder / load_tokenizer get
    adapters: dict[str, str] = field(default_factory=dict)  # task -> PEFT folder
    normalize: bool = False
    st_max_length: int | None = None
    _fingerprints: dict = field(default_factory=dict, repr=False)

    def backbone_fingerprint(self) -> str:
        if "backbone" not in self._fingerprints:
            from mtpf.encoder import fingerprint_model, load_encoder

            self._fingerprints["backbone"] = fingerprint_model(load_encoder(self.backbone))
        return self._fingerprints["backbone"]

    def fingerprint(self, task: str | None = None) -> str:
        """Backbone fingerprint + the bytes of the adapter used for ``task`` (None: backbone alone)."""
        h = hashlib.sha256(self.backbone_fingerprint().encode())
        if task and task in self.adapters:
            h.update(task.encode())
            h.update(_adapter_hash(self.adapters[task]).encode())
        return "sha256:" + h.hexdigest()

    def describe(self) -> dict:
        return {"label": self.label, "ref": self.ref, "kind": self.kind, "backbone": self.backbone,
                "adapters": dict(self.adapters), "normalize": self.normalize,
                "backbone_fingerprint": self.backbone_fingerprint()}


def _adapter_hash(folder: str) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        f = Path(folder) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def parse_model_arg(arg: str) -> tuple[str, str]:
    """``"LABEL=PATH"`` -> (label, path); a bare ``PATH`` is labelled by its folder name."""
    if "=" in arg:
        label, ref = arg.split("=", 1)
        if not label.strip() or not ref.strip():
            raise ConfigError(f"--model {arg!r}: expected LABEL=PATH")
        return label.strip(), ref.strip()
    ref = arg.strip()
    label = "Base model" if ref == PACKAGED else (Path(ref).name or ref)
    return label, ref


def resolve(ref: str, label: str | None = None, normalize: str | bool = "auto") -> ModelRef:
    label = label or parse_model_arg(ref)[0]
    if ref == PACKAGED:
        m = _sentence_transformer(label, ref, Path(packaged_model_path()))
    else:
        path = Path(ref)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"model {ref!r}: expected a folder (HF model, sentence-transformers model or "
                              "mtpf run) or a hub name, got a file")
        if (path / "run.json").is_file():
            m = _run(label, ref, path)
        elif (path / "modules.json").is_file():
            m = _sentence_transformer(label, ref, path)
        elif (path / "config.json").is_file():
            m = ModelRef(label, ref, "hf", str(path))
        elif (path / "backbone" / "config.json").is_file():
            resolve_model(ref)  # raises: an unfinished run (no run.json), named as such
        elif path.exists():
            raise ConfigError(f"model {ref!r}: folder holds neither run.json (mtpf run), modules.json "
                              "(sentence-transformers) nor config.json (Hugging Face model)")
        else:  # hub name (online users); one clear error when it is neither reachable nor cached
            local = resolve_model(ref)
            st = hub_st_files(ref, local)
            if st is not None and Path(local).is_dir():  # offline: the cached snapshot holds weights and ST files
                m = _sentence_transformer(label, ref, Path(local))
            elif st is not None:  # online: its pooling, normalisation and token limit; the weights load by name
                m = ModelRef(label, ref, "hf", local, normalize=_st_has_normalize(st), st_max_length=st_max_length(st))
            else:
                m = ModelRef(label, ref, "hf", local)
    if normalize != "auto":
        m.normalize = normalize if isinstance(normalize, bool) else str(normalize).lower() in ("true", "1", "yes")
    return m


def _run(label: str, ref: str, path: Path) -> ModelRef:
    try:
        run = json.loads((path / "run.json").read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path / 'run.json'}: not valid JSON ({exc})") from None
    backbone = path / "backbone"
    if not (backbone / "config.json").is_file():
        raise ConfigError(f"mtpf run {path}: no backbone/ folder with config.json")
    adapters = {}
    for task in TASKS:
        folder = path / "adapters" / task
        if (folder / "adapter_config.json").is_file():
            adapters[task] = str(folder)
    normalize, limit = True, None
    st = path / "sentence_transformer"
    if (st / "modules.json").is_file():
        normalize, limit = _st_has_normalize(st), st_max_length(st)
    m = ModelRef(label, ref, "run", str(backbone), adapters, normalize, limit)
    if run.get("backbone_fingerprint"):
        m._fingerprints["backbone_recorded"] = run["backbone_fingerprint"]
    return m


def _st_modules(folder: Path) -> list[dict]:
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{folder / 'modules.json'}: not valid JSON ({exc})") from None
    return modules if isinstance(modules, list) else []


def _st_has_normalize(folder: Path) -> bool:
    return any(str(m.get("type", "")).endswith("Normalize") for m in _st_modules(folder))


def _st_max_length(folder: Path) -> int | None:
    cfg = folder / "sentence_bert_config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("max_seq_length")
        except json.JSONDecodeError:
            return None
    return None


def st_max_length(folder: str | Path) -> int | None:
    """The token limit sentence-transformers applies to a saved model: ``max_seq_length`` of its
    sentence_bert_config.json (sentence-transformers < 5, in the Transformer module's folder or the root), else
    its Transformer module's tokenizer ``model_max_length`` (where later versions keep ``max_seq_length``)."""
    folder = Path(folder)
    modules = _st_modules(folder) if (folder / "modules.json").is_file() else []
    transformer = next((m for m in modules if str(m.get("type", "")).endswith("Transformer")), None)
    tdir = folder / transformer.get("path", "") if transformer else folder
    limit = _st_max_length(tdir) or _st_max_length(folder)
    if limit:
        return int(limit)
    tok = tdir / "tokenizer_config.json"
    try:
        limit = json.loads(tok.read_text()).get("model_max_length") if tok.is_file() else None
    except json.JSONDecodeError:
        return None
    return int(limit) if isinstance(limit, (int, float)) and 0 < limit < 1_000_000 else None


def _sentence_transformer(label: str, ref: str, folder: Path) -> ModelRef:
    modules = _st_modules(folder)
    transformer = next((m for m in modules if str(m.get("type", "")).endswith("Transformer")), None)
    if transformer is None:
        raise ConfigError(f"{folder / 'modules.json'}: no sentence_transformers Transformer module")
    tdir = folder / transformer.get("path", "")
    pool = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if pool is not None:
        pcfg = folder / pool.get("path", "") / "config.json"
        pconf = json.loads(pcfg.read_text()) if pcfg.is_file() else {}
        mode = pconf.get("pooling_mode")  # sentence-transformers >= 5: "mean"; earlier: pooling_mode_mean_tokens
        if pconf and not (mode == "mean" or (isinstance(mode, list) and mode == ["mean"])
                          or pconf.get("pooling_mode_mean_tokens", False)):
            warnings.warn(f"{folder}: its sentence-transformers pooling is not mean pooling; mtpf evaluates with "
                          "mean pooling (the paper's protocol)", stacklevel=2)
    return ModelRef(label, ref, "sentence-transformers", str(tdir), {}, _st_has_normalize(folder),
                    st_max_length(folder))


ST_FILES = ["modules.json", "sentence_bert_config.json", "*/sentence_bert_config.json", "tokenizer_config.json",
            "*/tokenizer_config.json", "*/config.json"]  # what says a hub model's pooling, normalisation and limit


def hub_st_files(name: str, local: str) -> Path | None:
    """The sentence-transformers files of hub model ``name`` (``local``: what resolve_model gave): its cached
    snapshot when that holds modules.json, else those small files fetched from a reachable hub; None for a model
    that is not a sentence-transformers model, or when they cannot be had (offline and not cached)."""
    if Path(local).is_dir():
        return Path(local) if (Path(local) / "modules.json").is_file() else None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, allow_patterns=ST_FILES))
    except Exception:  # not reachable after all, gated, not found: a plain model it is
        return None
    return folder if (folder / "modules.json").is_file() else None


def st_folder_of(ref: str) -> Path | None:
    """The sentence-transformers folder behind a model reference: the packaged model, a local sentence-transformers
    folder, an mtpf run's ``sentence_transformer/``, or a hub model's (cached or fetched) files; else None."""
    if ref == PACKAGED:
        return Path(packaged_model_path())
    path = Path(ref)
    if path.is_dir():
        for folder in (path, path / "sentence_transformer", path.parent / "sentence_transformer"):
            if (folder / "modules.json").is_file():  # (the last: a run's backbone/ given as the model)
                return folder
        return None
    try:
        return hub_st_files(ref, resolve_model(ref))
    except Exception:  # not a hub model mtpf can reach
        return None


def max_length_for(model_ref: ModelRef, tokenizer, encoder_config, requested: int | None = None) -> int:
    """Longest input the model takes: min of the request, sentence-transformers' max_seq_length (else the
    tokenizer's limit) and the position embeddings."""
    from mtpf.encoder import max_positions

    limits = []
    pos = max_positions(encoder_config)
    if pos:
        limits.append(pos)
    if model_ref.st_max_length:
        limits.append(int(model_ref.st_max_length))
    elif getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 100_000:
        limits.append(int(tokenizer.model_max_length))
    if requested:
        limits.append(int(requested))
    return min(limits) if limits else 512


def load_tc_encoder(model_ref: ModelRef, use_adapter: bool = True):
    """Bare encoder in eval mode, with the ``tc`` task-primary adapter merged in when there is one."""
    from mtpf.encoder import load_encoder

    enc = load_encoder(model_ref.backbone)
    if use_adapter and "tc" in model_ref.adapters:
        from peft import PeftModel

        enc = PeftModel.from_pretrained(enc, model_ref.adapters["tc"]).merge_and_unload()
    return enc.eval()


# ------------------------------------------------------------------------------------- app folders' base model
def base_model_reference(backbone: str, folder: str | Path) -> str:
    """What an adapter saved in ``folder`` records as PEFT's ``base_model_name_or_path``: the hub id for the
    packaged model (a verbatim copy of it) and hub models, else the backbone's path relative to ``folder`` (never
    an absolute path of this machine). :func:`resolve_base_model` reads it back."""
    from mtpf.cards import PACKAGED_HUB_ID

    path = Path(backbone)
    if str(backbone) == PACKAGED or (path.exists() and path.resolve() == Path(packaged_model_path()).resolve()):
        return PACKAGED_HUB_ID
    if not path.exists():
        return str(backbone)  # a hub name
    import os

    return os.path.relpath(path.resolve(), Path(folder).resolve())


def resolve_base_model(adapter_dir: str | Path) -> str | None:
    """The backbone an adapter folder records, as mtpf loads it: a path relative to the folder, ``packaged`` for
    the packaged model's hub id (same weights; the fingerprint check still applies), a hub name, or None."""
    from mtpf.cards import PACKAGED_HUB_ID

    cfg = Path(adapter_dir) / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        from mtpf.data.io import DataError

        raise DataError(cfg, None, f"cannot read it as JSON ({exc})") from None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not base:
        return None
    if base == PACKAGED_HUB_ID:
        return PACKAGED
    local = Path(adapter_dir) / base
    return str(local.resolve()) if not Path(base).is_absolute() and local.exists() else base


def finish_app(app_dir: str | Path, model_ref: ModelRef, final_dir: str | Path | None = None) -> None:
    """Make a written app folder portable and self-describing: the LoRA's base model relative to the app's
    final location (or a hub id), and a model card (README.md) from its mtpf_app.json."""
    from mtpf.cards import app_card

    app_dir = Path(app_dir)
    cfg = app_dir / "adapter_config.json"
    ref = base_model_reference(model_ref.backbone, final_dir or app_dir)
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        data["base_model_name_or_path"] = ref
        cfg.write_text(json.dumps(data, indent=2, sort_keys=True))
    from mtpf.cards import exact_hub_model

    app_card(app_dir, base_model=exact_hub_model(model_ref.ref) or exact_hub_model(model_ref.backbone),
             name=Path(final_dir or app_dir).name)
