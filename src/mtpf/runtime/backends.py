"""Encoder backends of the runtime: given a padded batch and the adapter of every row, the last hidden state.

* :class:`TorchBackend`: one PEFT model holding every app's LoRA on the shared backbone.
  ``mode="mixed"`` runs one forward for the whole batch with PEFT's per-row ``adapter_names``;
  ``mode="grouped"`` runs one forward per adapter (rows grouped, padding trimmed per group, adapter switched
  by flipping the LoRA layers' active adapter). Benchmarked in bench/bench_runtime.py: on the 2-core CPU the
  two are within noise (mixed ~6% ahead, median of 3 rounds), so mixed is the default.
* :class:`OnnxBackend`: ONNX Runtime sessions; the shared backbone graph serves apps without LoRA, every
  LoRA app gets its own graph with the LoRA merged (ONNX Runtime cannot apply LoRA per row), rows grouped.

Every method that touches the model takes ``self.lock``: adapters are added and removed while the batcher
thread runs forwards.
"""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np

BASE = None  # adapter key of rows that use the bare backbone
PLACEHOLDER = "__mtpf_placeholder__"


class TorchBackend:
    name = "torch"

    def __init__(self, encoder, input_names: list[str], mode: str = "mixed", switch: str = "fast"):
        import torch
        from peft import LoraConfig, get_peft_model

        from mtpf.lora import lora_target_modules

        if mode not in ("mixed", "grouped"):
            raise ValueError(f"mode must be mixed or grouped, got {mode!r}")
        if switch not in ("fast", "set_adapter"):
            raise ValueError(f"switch must be fast or set_adapter, got {switch!r}")
        self.mode = mode
        self.switch = switch
        self.input_names = input_names
        self.lock = threading.RLock()
        self.encoder = encoder.eval()
        # PEFT cannot delete its last adapter, so a never-used rank-1 zero LoRA on one module keeps the
        # PeftModel alive while apps come and go. Rows never select it.
        target = lora_target_modules(encoder, 1, ["query"])[:1]
        self.model = get_peft_model(encoder, LoraConfig(r=1, lora_alpha=1, target_modules=target,
                                                        init_lora_weights=True), adapter_name=PLACEHOLDER)
        self.model.eval()
        self.model.requires_grad_(False)
        self._torch = torch
        self.adapters: set[str] = set()
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]

    def _activate(self, key: str | None) -> None:
        """Make ``key`` (None: no adapter) the only adapter that runs.

        ``switch="fast"`` only flips each LoRA layer's active-adapter list (cached layer list, no module walk,
        ``requires_grad`` untouched: this is inference); ``switch="set_adapter"`` is PEFT's public
        ``set_adapter``/``disable_adapter`` path, which walks every module and resets ``requires_grad``
        (~10 ms per switch on MiniLM) and is kept as the benchmark's per-request baseline.
        """
        if self.switch == "set_adapter":
            if key is None:
                self.model.base_model.disable_adapter_layers()
            else:
                self.model.base_model.enable_adapter_layers()
                self.model.set_adapter(key)
            return
        for layer in self._layers:
            layer._disable_adapters = False
            layer._active_adapter = [key] if key is not None and key in layer.lora_A else []

    def add_lora(self, key: str, adapter_dir: str | Path) -> None:
        with self.lock:
            self.model.load_adapter(str(adapter_dir), adapter_name=key, is_trainable=False)
            self.model.eval()
            self.adapters.add(key)
            self._refresh_layers()

    def remove_lora(self, key: str) -> None:
        with self.lock:
            if key in self.adapters:
                if self.model.active_adapter == key:
                    self.model.set_adapter(PLACEHOLDER)
                for layer in self._layers:  # never leave a deleted adapter listed as active
                    if key in layer.active_adapters:
                        layer._active_adapter = []
                self.model.delete_adapter(key)
                self.adapters.discard(key)
                self._refresh_layers()

    def forward(self, feeds: dict[str, np.ndarray], adapters: list[str | None]) -> np.ndarray:
        torch = self._torch
        with self.lock, torch.inference_mode():
            inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
            if self.mode == "mixed":
                names = [a if a is not None else "__base__" for a in adapters]
                if all(n == "__base__" for n in names):
                    self._activate(None)
                    return self.model(**inputs).last_hidden_state.numpy()
                return self.model(**inputs, adapter_names=names).last_hidden_state.numpy()
            return self._grouped(inputs, adapters)

    def _grouped(self, inputs, adapters):
        torch = self._torch
        b, s = inputs["input_ids"].shape
        out = None
        for key in dict.fromkeys(adapters):
            idx = [i for i, a in enumerate(adapters) if a == key]
            sub_mask = inputs["attention_mask"][idx]
            length = int(sub_mask.sum(1).max())
            sub = {k: v[idx, :length] for k, v in inputs.items()}
            self._activate(key)
            h = self.model(**sub).last_hidden_state
            if out is None:
                out = torch.zeros((b, s, h.shape[-1]), dtype=h.dtype)
            out[idx, :length] = h
        return out.numpy()

    def close(self) -> None:
        pass


class OnnxBackend:
    name = "onnx"

    def __init__(self, encoder, tokenizer, input_names: list[str], backbone_fingerprint: str, *, int8: bool = False,
                 onnx_dir: str | Path | None = None, num_threads: int | None = None):
        from mtpf.runtime.onnx_export import export_encoder_dir, make_session, read_export

        self.lock = threading.RLock()
        self.encoder = encoder.eval()  # kept on CPU to merge app LoRAs before their export
        self.tokenizer = tokenizer
        self.input_names = input_names
        self.fingerprint = backbone_fingerprint
        self.int8 = int8
        self.num_threads = num_threads
        self._tmp = None
        if onnx_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mtpf-onnx-")
            onnx_dir = self._tmp.name
        self.onnx_dir = Path(onnx_dir)
        meta = read_export(self.onnx_dir)
        want = "int8" if int8 else "fp32"
        if not (meta and meta.get("backbone_fingerprint") == backbone_fingerprint and meta.get("kind") == "backbone"
                and want in meta.get("files", {})):
            meta = export_encoder_dir(self.encoder, tokenizer, self.onnx_dir, int8=int8, kind="backbone",
                                      backbone_fingerprint=backbone_fingerprint)
        if list(meta["inputs"]) != list(input_names):
            raise ValueError(f"{self.onnx_dir}: graph inputs {meta['inputs']} differ from {input_names}")
        self.sessions = {BASE: make_session(self.onnx_dir / meta["files"][want], num_threads)}

    def add_lora(self, key: str, adapter_dir: str | Path) -> None:
        """Use APP/onnx (from ``mtpf export APP --onnx``) when it matches; else merge and export now."""
        from mtpf.runtime.onnx_export import (
            adapter_fingerprint,
            export_encoder_dir,
            make_session,
            merged_app_encoder,
            read_export,
        )

        want = "int8" if self.int8 else "fp32"
        app_onnx = Path(adapter_dir) / "onnx"
        afp = adapter_fingerprint(adapter_dir)
        meta = read_export(app_onnx)
        if not (meta and meta.get("backbone_fingerprint") == self.fingerprint and meta.get("adapter_fingerprint") == afp
                and want in meta.get("files", {})):
            app_onnx = self.onnx_dir / "apps" / key.replace("/", "_").replace("#", "_")
            merged = merged_app_encoder(self.encoder, adapter_dir)
            meta = export_encoder_dir(merged, self.tokenizer, app_onnx, int8=self.int8, kind="app",
                                      backbone_fingerprint=self.fingerprint, adapter_fingerprint=afp,
                                      source=str(adapter_dir))
        session = make_session(app_onnx / meta["files"][want], self.num_threads)
        with self.lock:
            self.sessions[key] = session

    def remove_lora(self, key: str) -> None:
        with self.lock:
            self.sessions.pop(key, None)

    def forward(self, feeds: dict[str, np.ndarray], adapters: list[str | None]) -> np.ndarray:
        b, s = feeds["input_ids"].shape
        out = None
        for key in dict.fromkeys(adapters):
            with self.lock:
                session = self.sessions[key]
            idx = [i for i, a in enumerate(adapters) if a == key]
            length = int(feeds["attention_mask"][idx].sum(1).max())
            sub = {k: np.ascontiguousarray(v[idx, :length]) for k, v in feeds.items()}
            h = session.run(["last_hidden_state"], sub)[0]
            if out is None:
                out = np.zeros((b, s, h.shape[-1]), dtype=np.float32)
            out[idx, :length] = h
        return out

    def close(self) -> None:
        self.sessions.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
