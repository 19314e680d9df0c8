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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)


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
    (out / "export.json").write_text(json.dumps(meta, indent=2))
    failed = [k for k, v in report.items() if not v["passed"]]
    if strict and failed:
        raise ExportVerificationError(f"{out}: ONNX graph(s) {failed} outside tolerance: {json.dumps(report)}")
    return meta


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

    model = PeftModel.from_pretrained(copy.deepcopy(backbone_encoder), str(adapter_dir), is_trainable=False)
    return model.merge_and_unload().eval()


def adapter_fingerprint(adapter_dir: str | Path) -> str | None:
    f = Path(adapter_dir) / "adapter_model.safetensors"
    return file_hash(f) if f.is_file() else None
