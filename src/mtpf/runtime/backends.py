"""Encoder backends of the runtime: given a padded batch and the adapter of every row, the last hidden state.

* :class:`TorchBackend`: one PEFT model holding every app's LoRA on the shared backbone.
  ``mode="mixed"`` runs one forward for the whole batch with PEFT's per-row ``adapter_names``;
  ``mode="grouped"`` runs one forward per adapter (rows grouped, padding trimmed per group, adapter switched
  by flipping the LoRA layers' active adapter). Benchmarked in bench/bench_runtime.py: on the 2-core CPU the
  two are within noise (mixed ~6% ahead, median of 3 rounds), so mixed is the default.
* :class:`OnnxBackend`: ONNX Runtime sessions; the shared backbone graph serves apps without LoRA, every
  LoRA app gets its own graph with the LoRA merged (ONNX Runtime cannot apply LoRA per row), rows grouped.

Shared trunk: ``forward(feeds, adapters, start, stop, hidden)`` runs only layers ``[start, stop)`` of the
encoder (``hidden``: the states entering layer ``start``; ``stop=None``: to the top). The runtime runs the
adapter-free lower layers once per distinct text with no adapter active and the upper layers per app.

Every method that touches the model takes ``self.lock``: adapters are added and removed while the batcher
thread runs forwards.
"""
from __future__ import annotations

import copy
import tempfile
import threading
from pathlib import Path

import numpy as np

BASE = None  # adapter key of rows that use the bare backbone
PLACEHOLDER = "__mtpf_placeholder__"


def resolve_device(device: str | None) -> str:
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N" -> a torch device string (the one
    resolver every command uses: ``mtpf.device``; its ConfigError is a ValueError)."""
    from mtpf.device import resolve_device as resolve

    return str(resolve(device))


def _replay_module():
    """Stands in for the skipped lower layers: returns the trunk states the runtime already computed.

    transformers runs ``hidden = layer(hidden, mask, ...)`` over its layer list; putting this module first
    (then the real upper layers) lets the encoder's own forward (masks, PEFT's per-row adapter hooks) run
    layers ``[start, stop)`` only. transformers has no public "start at layer k" entry point, hence this.
    """
    import torch

    class Replay(torch.nn.Module):
        value = None

        def forward(self, hidden_states, *args, **kwargs):
            return self.value

    return Replay()


class TorchBackend:
    name = "torch"
    supports_layer_ranges = True

    def __init__(self, encoder, input_names: list[str], mode: str = "mixed", switch: str = "fast",
                 device: str = "cpu"):
        import torch
        from peft import LoraConfig, get_peft_model

        from mtpf.lora import lora_target_modules
        from mtpf.lora.targets import encoder_layers

        if mode not in ("mixed", "grouped"):
            raise ValueError(f"mode must be mixed or grouped, got {mode!r}")
        if switch not in ("fast", "set_adapter"):
            raise ValueError(f"switch must be fast or set_adapter, got {switch!r}")
        self.mode = mode
        self.switch = switch
        self.input_names = input_names
        self.lock = threading.RLock()
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        # the layer stack (e.g. ``encoder.layer``): swapped for a slice of itself to run a layer range
        first = encoder_layers(encoder)[0]
        self._container = encoder.get_submodule(first.rsplit(".", 2)[0])
        self._stack_attr = first.rsplit(".", 2)[1]
        self._stack = getattr(self._container, self._stack_attr)
        self.num_layers = len(self._stack)
        self._replay = _replay_module()
        self.first_layer: dict[str, int] = {}  # adapter key -> lowest layer its LoRA touches
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
            # an embedding layer keeps its LoRA in lora_embedding_A, not lora_A
            held = key is not None and (key in layer.lora_A or key in getattr(layer, "lora_embedding_A", {}))
            layer._active_adapter = [key] if held else []

    def add_lora(self, key: str, adapter_dir: str | Path) -> None:
        from mtpf.runtime.app import AppError

        with self.lock:
            try:
                loaded = self.model.load_adapter(str(adapter_dir), adapter_name=key, is_trainable=False)
                # keys that matched no module (an adapter saved from another model class, e.g. a
                # *ForTokenClassification prefix) leave the LoRA at its init: a silent no-op app
                unexpected = [k for k in getattr(loaded, "unexpected_keys", []) or [] if "lora_" in k]
                if unexpected:
                    raise AppError(f"{adapter_dir}: {len(unexpected)} LoRA weights match no module of the backbone "
                                   f"(e.g. {unexpected[0]}); was the adapter trained on another model class?")
            except Exception:
                if key in getattr(self.model, "peft_config", {}):  # no half-registered adapter left behind
                    self.model.delete_adapter(key)
                raise
            self.model.eval()
            self.adapters.add(key)
            self._refresh_layers()
            self.first_layer[key] = self._lowest_layer(key)

    def _lowest_layer(self, key: str) -> int:
        """The lowest transformer layer holding ``key``'s LoRA, read off the loaded model (0 when unsure)."""
        from mtpf.lora.targets import layer_index

        found = []
        for name, module in self.model.named_modules():
            if key in getattr(module, "lora_A", {}) or key in getattr(module, "lora_embedding_A", {}):
                idx = layer_index(name)
                if idx is None:  # a LoRA outside the layer stack (embeddings, ...): nothing is shareable
                    return 0
                found.append(idx)
        return min(found) if found else self.num_layers

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
                self.first_layer.pop(key, None)
                self._refresh_layers()

    def forward(self, feeds: dict[str, np.ndarray], adapters: list[str | None], start: int = 0,
                stop: int | None = None, hidden: np.ndarray | None = None) -> np.ndarray:
        """Last hidden state (or the states after layer ``stop``) of a padded batch, ``adapters[i]`` on row i.

        ``start > 0``: ``hidden`` [batch, seq, H] holds the states entering layer ``start`` (padding rows may
        hold anything: padded keys are masked out).
        """
        torch = self._torch
        stop = self.num_layers if stop is None else stop
        with self.lock, torch.inference_mode(), self._autocast():
            inputs = {k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()}
            h0 = torch.from_numpy(hidden).to(self.device) if start > 0 else None
            if start == 0 and stop == self.num_layers:
                return self._forward(inputs, adapters, h0)
            layers = list(self._stack)[start:stop]
            if start > 0:
                layers = [self._replay] + layers
            setattr(self._container, self._stack_attr, torch.nn.ModuleList(layers))
            try:
                return self._forward(inputs, adapters, h0)
            finally:
                setattr(self._container, self._stack_attr, self._stack)
                self._replay.value = None

    def _autocast(self):
        if self.device.type == "cuda":
            return self._torch.autocast("cuda", dtype=self._torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def _forward(self, inputs, adapters, h0):
        one = len(set(adapters)) == 1  # one adapter in the whole forward: no per-row adapter bookkeeping
        if self.mode == "mixed" or one:
            self._replay.value = h0
            if one:
                self._activate(adapters[0])
                out = self.model(**inputs).last_hidden_state
            else:
                if self.switch == "set_adapter":  # a "no adapter" switch disables every LoRA layer, rows included
                    self.model.base_model.enable_adapter_layers()
                names = [a if a is not None else "__base__" for a in adapters]
                out = self.model(**inputs, adapter_names=names).last_hidden_state
            return out.float().cpu().numpy()
        return self._grouped(inputs, adapters, h0)

    def _grouped(self, inputs, adapters, h0):
        torch = self._torch
        b, s = inputs["input_ids"].shape
        out = None
        for key in dict.fromkeys(adapters):
            idx = [i for i, a in enumerate(adapters) if a == key]
            sub_mask = inputs["attention_mask"][idx]
            length = int(sub_mask.sum(1).max())
            sub = {k: v[idx, :length] for k, v in inputs.items()}
            self._replay.value = h0[idx, :length] if h0 is not None else None
            self._activate(key)
            h = self.model(**sub).last_hidden_state.float()
            if out is None:
                out = torch.zeros((b, s, h.shape[-1]), dtype=h.dtype, device=h.device)
            out[idx, :length] = h
        return out.cpu().numpy()

    def close(self) -> None:
        pass


class OnnxBackend:
    """ONNX Runtime sessions over ONE copy of the backbone (``merged=False``, the default): an embeddings graph
    and one graph per layer, each taking LoRA slot inputs, so an app is just its LoRA matrices fed per run and
    the runtime can run any layer range (shared trunk). Apps whose adapter the slots cannot express (DoRA,
    bias, modules_to_save, ...) get a merged full graph. ``merged=True`` is the former layout (a full graph per
    LoRA app, the backbone graph for the rest), kept for comparison in bench/bench_runtime.py.
    """
    name = "onnx"

    def __init__(self, encoder, tokenizer, input_names: list[str], backbone_fingerprint: str, *, int8: bool = False,
                 onnx_dir: str | Path | None = None, num_threads: int | None = None, device: str = "cpu",
                 merged: bool = False, backbone_path: str | None = None):
        from mtpf.runtime.onnx_export import (
            LayeredSessions,
            export_encoder_dir,
            export_layered_dir,
            make_session,
            read_export,
            read_layered,
            verified,
        )

        self.lock = threading.RLock()
        self.device = device
        self.num_layers = int(encoder.config.num_hidden_layers)
        self.first_layer: dict[str, int] = {}
        self.encoder = encoder.eval()  # kept on CPU to read/merge app LoRAs
        # its own copy: exporting a merged app graph pads with it while the batcher tokenises with the runtime's
        # (a fast tokenizer's padding/truncation settings belong to the object: shared, each reset the other's)
        self.tokenizer = copy.deepcopy(tokenizer)
        self.input_names = input_names
        self.fingerprint = backbone_fingerprint
        self.int8 = int8
        self.num_threads = num_threads
        self.merged = merged
        self.backbone_path = backbone_path
        self.supports_layer_ranges = not merged
        self.loras: dict[str, list] = {}
        self._tmp = None
        if onnx_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mtpf-onnx-")
            onnx_dir = self._tmp.name
        self.onnx_dir = Path(onnx_dir)
        want = "int8" if int8 else "fp32"
        self.sessions = {}
        self.chain = None
        if not merged:
            layered = self.onnx_dir / "layered"
            meta = read_layered(layered)
            if not (verified(meta, want) and meta.get("backbone_fingerprint") == backbone_fingerprint):
                meta = export_layered_dir(self.encoder, tokenizer, layered, int8=int8,
                                          backbone_fingerprint=backbone_fingerprint)
            if list(meta["inputs"]) != list(input_names):
                raise ValueError(f"{layered}: graph inputs {meta['inputs']} differ from {input_names}")
            from mtpf.lora.targets import encoder_layers
            from mtpf.runtime.onnx_export import zero_lora

            self.slots = meta["slots"]
            self.chain = LayeredSessions(layered, meta["files"][want], input_names, self.slots, num_threads, device)
            self._layer_names = encoder_layers(self.encoder)
            self._zeros = zero_lora(self.encoder, self.slots)
            self._config = self.encoder.config
            self.encoder = None  # one copy of the weights: ONNX Runtime's (reloaded only to merge an odd adapter)
            return
        meta = read_export(self.onnx_dir)
        if not (verified(meta, want) and meta.get("backbone_fingerprint") == backbone_fingerprint
                and meta.get("kind") == "backbone"):
            meta = export_encoder_dir(self.encoder, tokenizer, self.onnx_dir, int8=int8, kind="backbone",
                                      backbone_fingerprint=backbone_fingerprint)
        if list(meta["inputs"]) != list(input_names):
            raise ValueError(f"{self.onnx_dir}: graph inputs {meta['inputs']} differ from {input_names}")
        self.sessions = {BASE: make_session(self.onnx_dir / meta["files"][want], num_threads, device)}

    def add_lora(self, key: str, adapter_dir: str | Path) -> None:
        if not self.merged:
            from mtpf.runtime.onnx_export import app_lora_feeds

            got = app_lora_feeds(adapter_dir, self._layer_names, self.slots, self._zeros)
            if got is not None:
                if self.int8:  # next to an int8 backbone, fp16 LoRA storage costs nothing measurable; halves it
                    got = ([{k: v.astype(np.float16) for k, v in d.items()} if d else d for d in got[0]], got[1])
                with self.lock:
                    self.loras[key], self.first_layer[key] = got
                return
        self._add_merged(key, adapter_dir)

    def _add_merged(self, key: str, adapter_dir: str | Path) -> None:
        """Use APP/onnx (from ``mtpf export APP --onnx``) when it matches; else merge and export now."""
        from mtpf.runtime.onnx_export import (
            adapter_fingerprint,
            export_encoder_dir,
            make_session,
            merged_app_encoder,
            read_export,
            verified,
        )

        want = "int8" if self.int8 else "fp32"
        afp = adapter_fingerprint(adapter_dir)

        def usable(folder):
            meta = read_export(folder)
            ok = (verified(meta, want) and meta.get("backbone_fingerprint") == self.fingerprint
                  and meta.get("adapter_fingerprint") == afp)
            return meta if ok else None

        # the app's own export, else this runtime's graph of the same adapter content (a re-registration reuses
        # it instead of adding another full backbone copy to onnx_dir)
        app_onnx = Path(adapter_dir) / "onnx"
        meta = usable(app_onnx)
        if meta is None:
            app_onnx = self.onnx_dir / "apps" / afp.split(":")[-1][:24]
            meta = usable(app_onnx)
        if meta is None:
            encoder = self.encoder
            if encoder is None:  # the shared layout dropped the torch weights; reload them for this merge
                from mtpf.encoder import load_encoder

                encoder = load_encoder(self.backbone_path).eval()
            merged = merged_app_encoder(encoder, adapter_dir)
            meta = export_encoder_dir(merged, self.tokenizer, app_onnx, int8=self.int8, kind="app",
                                      backbone_fingerprint=self.fingerprint, adapter_fingerprint=afp,
                                      source=str(adapter_dir))
        session = make_session(app_onnx / meta["files"][want], self.num_threads, self.device)
        with self.lock:
            self.sessions[key] = session
            self.first_layer[key] = 0

    def remove_lora(self, key: str) -> None:
        with self.lock:
            self.sessions.pop(key, None)
            self.loras.pop(key, None)
            self.first_layer.pop(key, None)

    def forward(self, feeds: dict[str, np.ndarray], adapters: list[str | None], start: int = 0,
                stop: int | None = None, hidden: np.ndarray | None = None) -> np.ndarray:
        """Rows grouped per adapter (ONNX Runtime takes one set of LoRA inputs per run)."""
        stop = self.num_layers if stop is None else stop
        b, s = feeds["input_ids"].shape
        out = None
        for key in dict.fromkeys(adapters):
            with self.lock:
                session = self.sessions.get(key)
                lora = self.loras.get(key)
            idx = [i for i, a in enumerate(adapters) if a == key]
            length = int(feeds["attention_mask"][idx].sum(1).max())
            sub = {k: np.ascontiguousarray(v[idx, :length]) for k, v in feeds.items()}
            if session is not None:  # a merged full graph (or the merged layout's backbone graph)
                if start != 0 or stop != self.num_layers:
                    raise ValueError(f"adapter {key!r} has a merged graph: it only runs all layers")
                h = session.run(["last_hidden_state"], sub)[0]
            else:
                h_in = np.ascontiguousarray(hidden[idx, :length], dtype=np.float32) if start > 0 else None
                h = self.chain.run_range(sub, start, stop, h_in, lora)
            if out is None:
                out = np.zeros((b, s, h.shape[-1]), dtype=np.float32)
            out[idx, :length] = h
        return out

    def close(self) -> None:
        self.sessions.clear()
        self.loras.clear()
        self.chain = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
