"""ONNX export of the shared backbone (and of per-app encoders with their LoRA merged), int8 quantisation,
and verification against PyTorch.

Layout written by :func:`export_encoder_dir`::

    OUT/model.onnx        fp32 graph: inputs input_ids, attention_mask[, token_type_ids] (int64 [batch, seq]);
                          output last_hidden_state (float32 [batch, seq, hidden])
    OUT/model.int8.onnx   dynamic int8 quantisation, per-channel weights (only with int8=True)
    OUT/export.json       {"format": "mtpf-onnx/1", kind, backbone_fingerprint, adapter_fingerprint, inputs,
                           files, verification}

Tolerances (stated, checked on every export): fp32 graph vs PyTorch, max |difference| of the last hidden
state over non-padding tokens <= ``FP32_ATOL``; int8 graph vs PyTorch, mean cosine of mean-pooled sentence
embeddings >= ``INT8_MIN_MEAN_COSINE``.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mtpf.stages import fsync_tree, write_text_durable

ONNX_FORMAT = "mtpf-onnx/1"
FP32_ATOL = 1e-4
INT8_MIN_MEAN_COSINE = 0.95
OPSET = 17

VERIFY_TEXTS = [
    "Barack Obama visited Berlin and Paris last week with Angela Merkel.",
    "How do I reset my card PIN? My transfer has not arrived yet!",
    "ok",
    "I would like a cheap Italian restaurant near downtown open until midnight, with parking and a terrace.",
    "Apple Inc. reported earnings of 3.5 billion dollars on Tuesday.",
    "The quick brown fox jumps over the lazy dog.",
]


class ExportVerificationError(RuntimeError):
    """The exported graph does not reproduce PyTorch within the stated tolerance."""


def encoder_input_names(model, tokenizer) -> list[str]:
    """The inputs both the tokenizer produces and the encoder's forward accepts, in a fixed order."""
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return names


def _keyword_wrapper(model, input_names: list[str]):
    """transformers 5 breaks positional inputs under export: call the encoder with keyword arguments."""
    import torch

    class KeywordEncoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(input_names, tensors))).last_hidden_state

    return KeywordEncoder(model).eval()


def export_encoder(model, tokenizer, out_path: str | Path) -> list[str]:
    """Write ``model`` (a bare encoder, no PEFT layers) as an ONNX graph with dynamic batch and sequence."""
    import torch

    model = model.eval()
    names = encoder_input_names(model, tokenizer)
    enc = tokenizer(VERIFY_TEXTS[:2], padding=True, return_tensors="pt")
    args = tuple(enc[n] for n in names)
    wrapper = _keyword_wrapper(model, names)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper, args, str(out_path), input_names=names, output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]},
                opset_version=OPSET, dynamo=False,
            )
        except Exception:  # noqa: BLE001 - the TorchScript exporter may be gone in a future torch: use the dynamo one
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            torch.onnx.export(
                wrapper, args, str(out_path), input_names=names, output_names=["last_hidden_state"],
                dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), dynamo=True, verbose=False,
            )
    model.eval()  # the exporter restores the wrapper's (train) mode on the way out
    return names


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> None:
    """Dynamic int8 quantisation with per-channel weight scales (per-tensor loses ~5 points of cosine)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger for every graph
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def session_providers(device: str = "cpu") -> list:
    """ONNX Runtime providers for a torch-style device: CUDA (with its device id) when asked for and installed."""
    import onnxruntime as ort

    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(path: str | Path, num_threads: int | None = None, device: str = "cpu"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between runs: on a phone-sized (or shared) CPU a spinning pool steals the cores that the
    # batcher, the tokenizer and other sessions need
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no per-session memory arena: the one-backbone layout runs 7 sessions, and 7 arenas of freed blocks cost
    # ~2.6 MB of RSS (8 apps on int8: 1.32x -> 1.26x one int8 model); mixed-load throughput was unchanged
    # (bench/bench_runtime.py, docs/benchmarks.md)
    opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), sess_options=opts, providers=session_providers(device))


def _mean_pool_np(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)


def verify(model, tokenizer, session, input_names: list[str], texts: list[str] | None = None) -> dict:
    """Compare an ONNX session with the PyTorch encoder on ``texts`` (padded batch and one-by-one)."""
    import torch

    texts = texts or VERIFY_TEXTS
    max_diff, cosines = 0.0, []
    for batch in (texts, [texts[0]], [texts[2]]):
        enc = tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="np")
        feeds = {n: enc[n].astype(np.int64) for n in input_names}
        onnx_out = session.run(["last_hidden_state"], feeds)[0]
        with torch.no_grad():
            ref = model(**{n: torch.from_numpy(v) for n, v in feeds.items()}).last_hidden_state.numpy()
        mask = enc["attention_mask"].astype(bool)
        max_diff = max(max_diff, float(np.abs(onnx_out - ref)[mask].max()))
        a, b = _mean_pool_np(onnx_out, enc["attention_mask"]), _mean_pool_np(ref, enc["attention_mask"])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        cosines.extend(cos.tolist())
    return {"max_abs_diff": max_diff, "mean_cosine": float(np.mean(cosines)), "min_cosine": float(np.min(cosines))}


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def export_encoder_dir(model, tokenizer, out_dir: str | Path, *, int8: bool = False, kind: str = "backbone",
                       backbone_fingerprint: str | None = None, adapter_fingerprint: str | None = None,
                       source: str | None = None, strict: bool = True) -> dict:
    """Export + (optionally) quantise + verify; writes OUT/export.json and returns it.

    With ``strict``, a graph outside the stated tolerance raises :class:`ExportVerificationError` (the files
    and export.json, with ``passed: false``, are still written so the numbers can be inspected).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # export.json vouches for the graphs beside it: it goes before the first one is replaced, so an export
    # killed half-way leaves a folder readers re-export instead of one that pairs old metadata with new graphs
    (out / "export.json").unlink(missing_ok=True)
    t0 = time.time()
    # write into a temp name first so a reader never sees a half-written graph
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_fp32 = Path(tmp) / "model.onnx"
        names = export_encoder(model, tokenizer, tmp_fp32)
        files = {"fp32": "model.onnx"}
        if int8:
            quantize_int8(tmp_fp32, Path(tmp) / "model.int8.onnx")
            files["int8"] = "model.int8.onnx"
        for f in files.values():
            os.replace(Path(tmp) / f, out / f)
    # the tokenizer and config beside the graphs, as optimum's ONNX folders have them: the folder can be fed
    # (and uploaded) on its own
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)
    report = {"fp32": verify(model, tokenizer, make_session(out / files["fp32"]), names)}
    report["fp32"].update({"tolerance": {"max_abs_diff": FP32_ATOL}})
    report["fp32"]["passed"] = report["fp32"]["max_abs_diff"] <= FP32_ATOL
    if int8:
        report["int8"] = verify(model, tokenizer, make_session(out / files["int8"]), names)
        report["int8"].update({"tolerance": {"mean_cosine": INT8_MIN_MEAN_COSINE}})
        report["int8"]["passed"] = report["int8"]["mean_cosine"] >= INT8_MIN_MEAN_COSINE
    meta = {
        "format": ONNX_FORMAT, "kind": kind, "source": source, "backbone_fingerprint": backbone_fingerprint,
        "adapter_fingerprint": adapter_fingerprint, "inputs": names, "outputs": ["last_hidden_state"],
        "opset": OPSET, "files": files, "verification": report, "seconds": round(time.time() - t0, 2),
    }
    # written last, atomically, after the files reach the disk: a folder with export.json is a finished export
    # (readers skip work on it)
    fsync_tree(out, recursive=False)  # its graphs; not the other exports below it (apps/, layered/)
    write_text_durable(out / "export.json", json.dumps(meta, indent=2))
    failed = [k for k, v in report.items() if not v["passed"]]
    if strict and failed:
        raise ExportVerificationError(f"{out}: ONNX graph(s) {failed} outside tolerance: {json.dumps(report)}")
    return meta


def verified(meta: dict | None, want: str) -> bool:
    """True when export metadata has the ``want`` graph ("fp32"/"int8") and it passed verification: what the
    runtime may reuse. A graph written by ``mtpf export --no-strict`` (or one whose export raised) is not."""
    return bool(meta) and want in meta.get("files", {}) and bool(
        meta.get("verification", {}).get(want, {}).get("passed", False))


def read_export(out_dir: str | Path) -> dict | None:
    f = Path(out_dir) / "export.json"
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError:
        return None
    return meta if meta.get("format") == ONNX_FORMAT else None


def merged_app_encoder(backbone_encoder, adapter_dir: str | Path):
    """A copy of the bare encoder with the app's LoRA merged into its weights (for LoRA-less runtimes)."""
    from peft import PeftModel

    from mtpf.runtime.app import AppError

    try:
        model = PeftModel.from_pretrained(copy.deepcopy(backbone_encoder), str(adapter_dir), is_trainable=False)
    except (TypeError, ValueError, KeyError, OSError, RuntimeError) as exc:  # a malformed adapter: one line
        raise AppError(f"{adapter_dir}: cannot load its LoRA ({' '.join(str(exc).split())[:300]})") from exc
    return model.merge_and_unload().eval()


def adapter_fingerprint(adapter_dir: str | Path) -> str | None:
    """The adapter's weights and its config (a changed alpha or rank with the same tensors is another adapter)."""
    from mtpf.runtime.core import lora_fingerprint

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        return None
    return lora_fingerprint(path) if any((path / n).is_file() for n in ("adapter_model.safetensors",
                                                                        "adapter_model.bin")) else None


# ----------------------------------------------------------------------------- layered (shared) export
# One copy of the backbone for every app: an embeddings graph plus one graph per transformer layer. Each layer
# graph takes, next to ``hidden`` and ``attention_mask``, a LoRA slot (``<module>.lora_A`` [r, in] and
# ``<module>.lora_B`` [out, r], scale folded into B, rank dynamic) for each of its linear modules, so any app's
# LoRA (or none: rank-1 zeros) is applied per run. This is ONNX Runtime's LoRA-adapter mechanism (LoRA weights
# as inputs overriding nothing in the graph) without the adapter file format: the runtime already holds each
# app's LoRA in memory from its PEFT folder. Quantised graphs keep the LoRA path in fp32 (dynamic quantisation
# only touches MatMuls with a constant weight).
LAYERED_FORMAT = "mtpf-onnx-layered/1"


def layer_slots(model) -> list[str]:
    """Module suffixes (inside one transformer layer) of every linear that can carry a LoRA slot."""
    from mtpf.lora.targets import _family

    fam = _family(model)
    return [s for part in ("query", "key", "value", "attn_out", "mlp") for s in fam[part]]


def _lora_slot(base):
    import torch

    class LoraSlot(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base
            self.a = self.b = None

        def forward(self, x):
            return self.base(x) + torch.matmul(torch.matmul(x, self.a.t()), self.b.t())

    return LoraSlot()


def _layer_wrapper(model, index: int, slots: list[str]):
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    from mtpf.lora.targets import encoder_layers

    layer = copy.deepcopy(model.get_submodule(encoder_layers(model)[index]))
    for s in slots:
        parent, _, leaf = s.rpartition(".")
        holder = layer.get_submodule(parent) if parent else layer
        setattr(holder, leaf, _lora_slot(getattr(holder, leaf)))
    config = model.config

    class LayerWithLora(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, hidden, attention_mask, *lora):
            for k, s in enumerate(slots):
                slot = self.layer.get_submodule(s)
                slot.a, slot.b = lora[2 * k], lora[2 * k + 1]
            mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)
            out = self.layer(hidden, mask)
            return out[0] if isinstance(out, tuple) else out

    return LayerWithLora().eval()


def _embeddings_wrapper(model, names: list[str]):
    import torch

    class Embeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = model.embeddings

        def forward(self, input_ids, *rest):
            kw = {"token_type_ids": rest[0]} if rest else {}
            return self.emb(input_ids=input_ids, **kw)

    return Embeddings().eval()


def zero_lora(model, slots: list[str]) -> dict[str, np.ndarray]:
    """Rank-1 zero LoRA feeds of one layer (rows with no adapter there)."""
    from mtpf.lora.targets import encoder_layers

    layer = model.get_submodule(encoder_layers(model)[0])
    feeds = {}
    for s in slots:
        lin = layer.get_submodule(s)
        lin = getattr(lin, "base_layer", lin)
        feeds[f"{s}.lora_A"] = np.zeros((1, lin.in_features), np.float32)
        feeds[f"{s}.lora_B"] = np.zeros((lin.out_features, 1), np.float32)
    return feeds


def _torch_export(wrapper, args, path: Path, input_names: list[str], dynamic_axes: dict) -> None:
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(path), input_names=input_names, output_names=["hidden"],
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


def export_layered_dir(model, tokenizer, out_dir: str | Path, *, int8: bool = False,
                       backbone_fingerprint: str | None = None, strict: bool = True) -> dict:
    """Write ``embeddings.onnx`` + ``layer_<i>.onnx`` (+ ``.int8.onnx``) and export.json; verify the chain."""
    import torch

    from mtpf.lora.targets import encoder_layers

    model = model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").unlink(missing_ok=True)  # before any graph is replaced (see export_encoder_dir)
    t0 = time.time()
    names = encoder_input_names(model, tokenizer)
    slots = layer_slots(model)
    n_layers = len(encoder_layers(model))
    enc = tokenizer(VERIFY_TEXTS[:2], padding=True, return_tensors="pt")  # padded: the mask path is traced
    ids_names = [n for n in names if n != "attention_mask"]
    files: dict[str, list[str]] = {"fp32": [], "int8": []}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp = Path(tmp)
        _torch_export(_embeddings_wrapper(model, names), tuple(enc[n] for n in ids_names), tmp / "embeddings.onnx",
                      ids_names, {n: {0: "batch", 1: "seq"} for n in ids_names + ["hidden"]})
        with torch.no_grad():
            hidden = model.embeddings(**{n: enc[n] for n in ids_names})
        zeros = {k: torch.from_numpy(v) for k, v in zero_lora(model, slots).items()}
        lora_names = [f"{s}.lora_{x}" for s in slots for x in ("A", "B")]
        axes = {"hidden_in": {0: "batch", 1: "seq"}, "hidden": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"}}
        # one rank name per slot: a zero (rank-1) slot and an app's rank-r slot meet in the same run
        axes.update({n: {0: f"rank_{n[:-7]}"} if n.endswith("A") else {1: f"rank_{n[:-7]}"} for n in lora_names})
        for i in range(n_layers):
            _torch_export(_layer_wrapper(model, i, slots), (hidden, enc["attention_mask"], *[zeros[n] for n in lora_names]),
                          tmp / f"layer_{i}.onnx", ["hidden_in", "attention_mask", *lora_names], axes)
        graphs = ["embeddings.onnx"] + [f"layer_{i}.onnx" for i in range(n_layers)]
        for g in graphs:
            files["fp32"].append(g)
            if int8:
                q = g.replace(".onnx", ".int8.onnx")
                quantize_int8(tmp / g, tmp / q)
                files["int8"].append(q)
            for f in [g] + ([q] if int8 else []):
                os.replace(tmp / f, out / f)
    if not int8:
        files.pop("int8")
    report = {}
    for kind, fs in files.items():
        chain = LayeredSessions(out, fs, names, slots)
        report[kind] = verify(model, tokenizer, chain, names)
    report["fp32"].update({"tolerance": {"max_abs_diff": FP32_ATOL}})
    report["fp32"]["passed"] = report["fp32"]["max_abs_diff"] <= FP32_ATOL
    if int8:
        report["int8"].update({"tolerance": {"mean_cosine": INT8_MIN_MEAN_COSINE}})
        report["int8"]["passed"] = report["int8"]["mean_cosine"] >= INT8_MIN_MEAN_COSINE
    meta = {"format": LAYERED_FORMAT, "kind": "layered", "backbone_fingerprint": backbone_fingerprint,
            "inputs": names, "slots": slots, "num_layers": n_layers, "opset": OPSET, "files": files,
            "verification": report, "seconds": round(time.time() - t0, 2)}
    fsync_tree(out, recursive=False)  # last and atomically, as above
    write_text_durable(out / "export.json", json.dumps(meta, indent=2))
    failed = [k for k, v in report.items() if not v["passed"]]
    if strict and failed:
        raise ExportVerificationError(f"{out}: layered ONNX graph(s) {failed} outside tolerance: {json.dumps(report)}")
    return meta


class LayeredSessions:
    """The embeddings + per-layer sessions of a layered export, run as a chain (``run`` mimics one session)."""

    def __init__(self, out_dir: str | Path, files: list[str], input_names: list[str], slots: list[str],
                 num_threads: int | None = None, device: str = "cpu", zeros: list[dict] | None = None):
        out = Path(out_dir)
        self.input_names = input_names
        self.slots = slots
        self.embeddings = make_session(out / files[0], num_threads, device)
        self.layers = [make_session(out / f, num_threads, device) for f in files[1:]]
        self.zeros = zeros

    def _zeros(self, i: int) -> dict:
        if self.zeros is None:  # read the slot shapes off the graph inputs
            z = []
            for sess in self.layers:
                d = {}
                for inp in sess.get_inputs():
                    if ".lora_" in inp.name:
                        shape = [1 if not isinstance(x, int) else x for x in inp.shape]
                        d[inp.name] = np.zeros(shape, np.float32)
                z.append(d)
            self.zeros = z
        return self.zeros[i]

    def run_range(self, feeds: dict, start: int, stop: int, hidden: np.ndarray | None = None,
                  lora: list[dict] | None = None) -> np.ndarray:
        """Layers ``[start, stop)``; ``lora[i]`` the slot feeds of layer i (None: no adapter)."""
        if start == 0:
            hidden = self.embeddings.run(None, {n: feeds[n] for n in self.input_names if n != "attention_mask"})[0]
        mask = feeds["attention_mask"]
        for i in range(start, stop):
            slot = (lora[i] if lora is not None and lora[i] is not None else None) or self._zeros(i)
            if any(v.dtype != np.float32 for v in slot.values()):  # stored in fp16 (int8 backend): widen per run
                slot = {k: v.astype(np.float32) for k, v in slot.items()}
            hidden = self.layers[i].run(None, {"hidden_in": hidden, "attention_mask": mask, **slot})[0]
        return hidden

    def run(self, _outputs, feeds: dict) -> list[np.ndarray]:
        return [self.run_range(feeds, 0, len(self.layers))]


def read_layered(out_dir: str | Path) -> dict | None:
    f = Path(out_dir) / "export.json"
    try:
        meta = json.loads(f.read_text()) if f.is_file() else None
    except json.JSONDecodeError:
        return None
    return meta if meta and meta.get("format") == LAYERED_FORMAT else None


# adapter_config.json keys the slots honour (r, alpha, rslora, targets), or that do not change what a saved LoRA
# computes at inference (where it came from, how it was initialised or placed, dropout)
SLOT_KEYS = frozenset({
    "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
    "r", "lora_alpha", "use_rslora", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
    "lora_dropout", "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
    "megatron_config", "megatron_core", "runtime_config", "ensure_weight_tying", "qalora_group_size",
})


def slot_compatible(cfg: dict) -> bool:
    """An allow-list, not a block-list: every option outside SLOT_KEYS must be off (PEFT's falsy default), so an
    option the slots do not implement (DoRA, biases, aLoRA, layer replication, one newer than this code) sends
    the app to the merged graph, which PEFT itself computes, instead of being dropped silently."""
    if cfg.get("peft_type", "LORA") != "LORA":
        return False
    return all(not value or value == "none" for key, value in cfg.items() if key not in SLOT_KEYS)


def app_lora_feeds(adapter_dir: str | Path, layer_names: list[str], slots: list[str],
                   zeros: dict[str, np.ndarray]) -> tuple[list[dict | None], int] | None:
    """An app's PEFT LoRA as per-layer slot feeds (scale folded into B), and its lowest layer.

    None when the adapter is something the slots cannot express (DoRA, bias, modules_to_save, embeddings,
    patterns, a target outside the slots): the caller then falls back to a merged per-app graph.
    """
    from peft.utils import load_peft_weights

    from mtpf.lora.targets import layer_index

    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if not slot_compatible(cfg):
        return None
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    # PEFT's own reader: adapter_model.safetensors, or the pickled adapter_model.bin of older PEFT versions
    weights = {k: v.float().numpy() for k, v in load_peft_weights(str(adapter_dir), device="cpu").items()}
    per_layer: list[dict | None] = [None] * len(layer_names)
    if any(".lora_embedding_" in key for key in weights):  # LoRA on the embeddings: no slot for it
        return None
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = weights.get(key.replace(".lora_A.", ".lora_B."))
        idx = layer_index(module + ".")
        if b is None or idx is None:
            return None
        prefix = f"{layer_names[idx]}."
        pos = module.find(prefix)
        if pos < 0:
            return None
        suffix = module[pos + len(prefix):]
        if suffix not in slots:
            return None
        if per_layer[idx] is None:
            per_layer[idx] = {}
        per_layer[idx][f"{suffix}.lora_A"] = np.ascontiguousarray(a, np.float32)
        per_layer[idx][f"{suffix}.lora_B"] = np.ascontiguousarray(b * scale, np.float32)
    used = [i for i, d in enumerate(per_layer) if d]
    if not used:
        return None
    for i in used:  # slots this app leaves alone in a layer it touches: rank-1 zeros
        per_layer[i] = {**zeros, **per_layer[i]}
    return per_layer, min(used)
