"""The on-device system API: one shared backbone, many apps' adapters (paper, Figure 1 and Section 6).

    rt = Runtime("RUN")                       # an mtpf run folder, a backbone folder or "packaged"
    rt.register_app("mail-ner", "APP_DIR")    # refused if the adapter was trained on another backbone
    rt.extract_entities("mail-ner", ["Meet Anna in Paris on Monday"])
    rt.classify("intent", ["block my card"]); rt.embed("intent", ["block my card"])
    rt.unregister_app("mail-ner")             # waits for that app's queued requests, loses none

Requests from any number of threads go into one queue. A batcher thread takes the first waiting request,
collects more for at most ``max_wait_ms`` after it arrived (or until ``max_batch_size`` texts; no wait at all
when the system is idle, i.e. the previous batch was a lone request and nothing else is queued), and serves the
whole micro-batch, whatever the apps, in forward passes of ``forward_rows`` rows (grouped: rows of one app
together, sorted by length to cut padding; mixed: sorted by length, apps mixed within a forward). Heads and post-processing run per row in NumPy.

Adapters are deduplicated by content (:func:`lora_fingerprint`): apps whose LoRA is identical (e.g. TC apps
that all carry the run's frozen ``tc`` task-primary adapter, each with its own head) share one loaded adapter,
reference-counted, and their rows run the adapter's layers once per distinct text; only the heads fan out.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtpf.runtime.app import AppError, AppSpec, FingerprintMismatchError, read_app
from mtpf.runtime.batch import BatchRunner, Part, TrunkCache, post_process, tokenize_parts

OPS = {"entities": "ner", "tags": "ner", "classify": "tc", "embed": "tc"}


class UnknownAppError(LookupError):
    """No app of that name is registered (or it is being removed)."""


class TaskMismatchError(ValueError):
    """The call does not fit the app's task (e.g. ``classify`` on an NER app)."""


class RuntimeClosedError(RuntimeError):
    pass


class RuntimeOverloadedError(RuntimeError):
    """The request queue is full; try again later (HTTP 503)."""


# adapter_config.json fields that do not change what the LoRA computes: where the base model was found (an
# `mtpf adapt` app records it relative to its own folder, so copies of one adapter differ there), PEFT's version
IGNORED_LORA_CONFIG = ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping")


def lora_fingerprint(adapter_dir: str | Path) -> str:
    """sha256 over an app's LoRA content: every tensor (name, dtype, shape, bytes) and its adapter config
    (rank, alpha, target modules, layers, ...; bookkeeping fields of :data:`IGNORED_LORA_CONFIG` left out,
    target-module lists sorted). Two app folders with the same fingerprint compute the same adapter."""
    path = Path(adapter_dir)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg = {k: sorted(v) if k == "target_modules" and isinstance(v, list) else v
           for k, v in cfg.items() if k not in IGNORED_LORA_CONFIG}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    st = path / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.numpy import load_file

        for name, arr in sorted(load_file(str(st)).items()):
            h.update(f"\0{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    else:  # a pickled adapter_model.bin: its bytes (an identical copy still matches)
        h.update((path / "adapter_model.bin").read_bytes())
    return "sha256:" + h.hexdigest()


@dataclass
class _Adapter:
    key: str  # the backend's adapter key
    refs: int = 0  # registered apps (draining ones included) that use it


@dataclass
class _App:
    spec: AppSpec
    key: str | None  # adapter key in the backend (None: the bare backbone); shared by apps with the same LoRA
    registered_at: float
    adapter_id: str | None = None  # content fingerprint of its LoRA (the runtime's adapter table key)
    inflight: int = 0
    closing: bool = False
    served: int = 0
    release_when_idle: bool = False  # unregistered while busy: the last answered call releases its adapter
    registration: int = 0  # serial of this registration: a name unregistered and registered again gets a new one


@dataclass
class _Request:
    apps: list[_App]  # one app; several for "analyze"
    op: str  # entities | tags | classify | embed | analyze
    texts: list
    future: Future
    t_enqueue: float = field(default_factory=time.perf_counter)
    released: set = field(default_factory=set)  # names of apps whose in-flight count was given back

    @property
    def rows(self) -> int:
        return len(self.texts) * len(self.apps)


ANALYZE_OP = {"ner": "entities", "tc": "classify"}


class Runtime:
    """One shared backbone serving many apps' adapters, with micro-batching across apps.

    ``backend``: "torch" (PEFT, LoRA applied per row) or "onnx" (ONNX Runtime; ``int8`` for the quantised
    graph). ``mode`` (torch only): "mixed" (default: each forward mixes apps' rows via PEFT's per-row
    ``adapter_names``; measured ~6% faster in bench/bench_runtime.py) or "grouped" (one forward per app's
    rows); ``switch`` how grouped mode changes adapter ("fast": flip the LoRA layers' active adapter;
    "set_adapter": PEFT's public call, the benchmark's per-request baseline).
    ``max_batch_size`` bounds the texts collected into one micro-batch; ``max_wait_ms`` how long the first
    request of a micro-batch waits for company; ``forward_rows`` the rows of one forward pass (the micro-batch
    is cut into such chunks: on CPU, per-row cost is lowest around 4-8 rows and rises again for larger
    batches, see docs/benchmarks.md). ``batching=False`` serves every call synchronously in the
    caller's thread (still thread-safe), which is what the per-request baselines of the benchmark use.
    ``adaptive_wait=False`` always waits ``max_wait_ms`` for company, even when idle.
    ``device``: "cpu" (default), "auto" (CUDA when present), "cuda" or "cuda:N"; PyTorch runs there (bf16 autocast on
    CUDA), ONNX Runtime uses its CUDAExecutionProvider when installed, else the CPU.
    ``shared_trunk=False`` runs every LoRA app's rows through all layers (the benchmark's naive baselines).
    ``trunk_cache_mb`` > 0 keeps that many MB of trunk states keyed by text, so apps asking about the same
    text in separate calls share the lower layers too (``trunk_cache_hits`` / ``trunk_cache_misses``).
    ``dedup`` (default True): apps with identical LoRA weights and config share one loaded adapter and the rows
    of one (adapter, token sequence) in a micro-batch run once; False loads every app's LoRA separately and runs
    every row (the benchmark's per-app baseline).
    """

    def __init__(self, backbone: str | Path | None = "packaged", *, backend: str = "torch", mode: str = "mixed",
                 int8: bool = False, max_batch_size: int = 32, max_wait_ms: float = 2.0, batching: bool = True,
                 onnx_dir: str | Path | None = None, num_threads: int | None = None, max_queue: int = 10000,
                 adaptive_wait: bool = True, switch: str = "fast", forward_rows: int = 8, device: str = "cpu",
                 trunk_cache_mb: float = 0.0, onnx_merged: bool = False, shared_trunk: bool = True,
                 dedup: bool = True):
        import torch

        from mtpf.encoder import fingerprint_model, load_encoder, load_tokenizer, max_positions, resolve_model
        from mtpf.runtime.backends import resolve_device
        from mtpf.runtime.onnx_export import encoder_input_names

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = resolve_device(device)
        self.backbone_path = resolve_model(backbone)
        self.tokenizer = load_tokenizer(self.backbone_path)
        encoder = load_encoder(self.backbone_path).eval()
        self.fingerprint = fingerprint_model(encoder)
        self.hidden_size = int(encoder.config.hidden_size)
        self.model_max_length = max_positions(encoder.config) or 512  # RoBERTa-style: less the padding offset
        self.input_names = encoder_input_names(encoder, self.tokenizer)
        if backend == "torch":
            from mtpf.runtime.backends import TorchBackend

            self.backend = TorchBackend(encoder, self.input_names, mode=mode, switch=switch, device=self.device)
        elif backend == "onnx":
            from mtpf.runtime.backends import OnnxBackend

            self.backend = OnnxBackend(encoder, self.tokenizer, self.input_names, self.fingerprint, int8=int8,
                                       onnx_dir=onnx_dir, num_threads=num_threads, device=self.device,
                                       merged=onnx_merged, backbone_path=self.backbone_path)
        else:
            raise ValueError(f"backend must be torch or onnx, got {backend!r}")
        del encoder  # the backends keep what they need (the ONNX shared layout: nothing of the torch weights)
        self.max_batch_size = int(max_batch_size)
        self.forward_rows = max(1, int(forward_rows))
        self.max_wait = float(max_wait_ms) / 1000.0
        self.batching = batching
        self.adaptive_wait = adaptive_wait
        self._apps: dict[str, _App] = {}
        self._registrations = 0  # serial of the last registration (_App.registration)
        self._apps_lock = threading.Condition()
        self._keys = itertools.count()
        self.dedup = bool(dedup)
        self._adapters: dict[str, _Adapter] = {}  # LoRA fingerprint -> the one loaded copy
        self._adapters_lock = threading.Lock()  # held while loading/removing, so two registrations load once
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._enqueue_lock = threading.Lock()  # "not closed" and "queued" are one step: none lands behind close()
        self._sync_lock = threading.Lock()
        self.batch_log: deque[tuple[int, int, int]] = deque(maxlen=10000)  # (requests, rows, apps) per batch
        self.batches = 0
        self._last_batch_requests = 0
        self.trunk_cache = TrunkCache(int(trunk_cache_mb * 2**20)) if trunk_cache_mb and trunk_cache_mb > 0 else None
        self._runner = BatchRunner(self.backend, self.input_names, self.tokenizer.pad_token_id or 0,
                                   self.forward_rows, self.trunk_cache, shared_trunk, self.dedup)
        self._worker = None
        if batching:
            self._worker = threading.Thread(target=self._loop, name="mtpf-runtime-batcher", daemon=True)
            self._worker.start()

    # ---------------------------------------------------------------- apps
    def register_app(self, name: str, adapter_dir: str | Path) -> dict:
        """Load an app adapter folder (docs/formats.md "App adapter") under ``name``; returns its info.

        Raises :class:`FingerprintMismatchError` when the adapter was trained on another backbone, and
        :class:`AppError` for any other problem with the folder. Safe while requests are being served.
        """
        if not name or not isinstance(name, str):
            raise AppError("app name must be a non-empty string")
        spec = read_app(adapter_dir, name)
        if spec.backbone_fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"app {name!r} ({adapter_dir}) was trained on backbone {spec.backbone_fingerprint[:23]}..., but this "
                f"runtime holds backbone {self.fingerprint[:23]}... ({self.backbone_path}); its LoRA and head would "
                "give wrong outputs here. Re-run `mtpf adapt` on this backbone.")
        if spec.head_weight.shape[1] != self.hidden_size:
            raise AppError(f"app {name!r}: head expects hidden size {spec.head_weight.shape[1]}, "
                           f"backbone has {self.hidden_size}")
        with self._apps_lock:
            if name in self._apps:
                raise AppError(f"an app named {name!r} is already registered; unregister it first")
        key, adapter_id = self._acquire_adapter(name, spec) if spec.has_lora else (None, None)
        with self._apps_lock:
            lost = name in self._apps  # lost a race with a concurrent register of the same name
            if not lost:
                self._registrations += 1
                self._apps[name] = _App(spec=spec, key=key, registered_at=time.time(), adapter_id=adapter_id,
                                        registration=self._registrations)
        if lost:
            if adapter_id is not None:
                self._release_adapter(adapter_id)
            raise AppError(f"an app named {name!r} is already registered; unregister it first")
        return self.app_info(name)

    def unregister_app(self, name: str, timeout: float | None = 60.0) -> None:
        """Remove ``name``: new calls are refused at once; calls already accepted are still answered."""
        with self._apps_lock:
            app = self._apps.pop(name, None)
            if app is None:
                raise UnknownAppError(f"no app named {name!r}")
            app.closing = True
            if not self._apps_lock.wait_for(lambda: app.inflight == 0, timeout=timeout):
                # still unregistered (the name is free again): the last of these calls releases the adapter
                app.release_when_idle = True
                raise TimeoutError(f"app {name!r} is unregistered, but {app.inflight} requests were still in flight "
                                   f"after {timeout}s; its adapter is released when they are answered")
        if app.adapter_id is not None:
            self._release_adapter(app.adapter_id)

    def _acquire_adapter(self, name: str, spec: AppSpec) -> tuple[str, str]:
        """The backend key of ``spec``'s LoRA, loading it unless an identical one is loaded (refcount + 1)."""
        try:
            adapter_id = lora_fingerprint(spec.path) if self.dedup else f"app:{name}#{next(self._keys)}"
        except Exception as exc:  # unreadable adapter files: one clear registration error
            raise AppError(f"app {name!r}: cannot read its LoRA from {spec.path}: {exc}") from exc
        with self._adapters_lock:
            entry = self._adapters.get(adapter_id)
            if entry is None:
                # unique, so a re-registered name never meets its draining self
                key = f"{name.replace('.', '_')}#{next(self._keys)}"  # PEFT adapter names cannot hold "."
                try:
                    self.backend.add_lora(key, spec.path)
                except Exception as exc:
                    raise AppError(f"app {name!r}: cannot load its LoRA from {spec.path}: {exc}") from exc
                entry = self._adapters[adapter_id] = _Adapter(key)
            entry.refs += 1
            return entry.key, adapter_id

    def _release_adapter(self, adapter_id: str) -> None:
        """Refcount - 1; the adapter leaves the backend when no registered (or draining) app uses it."""
        with self._adapters_lock:
            entry = self._adapters[adapter_id]
            entry.refs -= 1
            if entry.refs == 0:
                del self._adapters[adapter_id]
                self.backend.remove_lora(entry.key)

    def adapters(self) -> dict[str, dict]:
        """The loaded LoRA adapters: ``{adapter_id: {"key": backend key, "refs": n, "apps": [registered names]}}``
        (an operator's view: which apps share which copy; draining apps count in ``refs`` only)."""
        with self._apps_lock, self._adapters_lock:
            return {aid: {"key": e.key, "refs": e.refs,
                          "apps": [n for n, a in self._apps.items() if a.adapter_id == aid]}
                    for aid, e in self._adapters.items()}

    @property
    def adapters_loaded(self) -> int:
        """Distinct LoRA adapters held by the backend (apps sharing one count once)."""
        with self._adapters_lock:
            return len(self._adapters)

    def has_app(self, name: str) -> bool:
        with self._apps_lock:
            return name in self._apps

    def apps(self) -> dict[str, dict]:
        """Every registered app's :meth:`app_info` (one removed meanwhile is left out, not raised)."""
        with self._apps_lock:
            names = list(self._apps)
        out = {}
        for n in names:
            try:
                out[n] = self.app_info(n)
            except UnknownAppError:  # unregistered between the copy and here
                pass
        return out

    def app_info(self, name: str) -> dict:
        app = self._get(name)
        s = app.spec
        info = {"name": name, "task": s.task, "labels": s.labels, "has_lora": s.has_lora, "adapter_dir": str(s.path),
                "max_length": s.max_length, "backbone_fingerprint": s.backbone_fingerprint, "served": app.served,
                "shared_layers": self._runner.level(app),
                # content fingerprint of its LoRA (apps with the same one share a single loaded copy); no other
                # app's name here: the server hands this dict to the app's own key holder
                "adapter_id": app.adapter_id if self.dedup else None,
                # which registration of this name: a caller that checked the app can insist on the same one
                "registration": app.registration}
        if s.task == "tc":
            info.update({"pooling": s.pooling, "normalize": s.normalize, "embedding_dim": self.hidden_size})
        return info

    def _get(self, name: str) -> _App:
        with self._apps_lock:
            app = self._apps.get(name)
        if app is None:
            raise UnknownAppError(f"no app named {name!r}")
        return app

    # ---------------------------------------------------------------- calls
    def extract_entities(self, app: str, texts: list[str] | str) -> list[list[dict]]:
        """Entity spans per text: ``{"type", "start", "end", "text", "score"}`` with character offsets."""
        return self.submit(app, "entities", texts).result()

    def tag_words(self, app: str, sentences: list[list[str]]) -> list[list[str]]:
        """BIO tag per word for already split sentences (e.g. CoNLL tokens): the words are kept as given
        instead of being split by :data:`mtpf.runtime.app.WORD_RE`. Sentences past the app's length limit are
        tagged in windows of whole words, as the evaluation suite does."""
        return self.submit(app, "tags", sentences).result()

    def classify(self, app: str, texts: list[str] | str) -> list[dict]:
        """Per text ``{"label", "score", "probabilities": {label: p}}``."""
        return self.submit(app, "classify", texts).result()

    def embed(self, app: str, texts: list[str] | str) -> np.ndarray:
        """The app's TC embedding (its LoRA active, pooled, normalised if the app says so): [n, hidden]."""
        return self.submit(app, "embed", texts).result()

    def analyze(self, texts: list[str] | str, apps: list[str] | None = None) -> list[dict]:
        """Every app's result for every text from one call (docs/runtime.md "Many apps, one text").

        One dict per text, ``{app: result}``; NER results ``{"task": "ner", "entities", "truncated",
        "windowed"}``, TC results ``{"task": "tc", "label", "score", "probabilities", "truncated"}``; an app
        unregistered while the call was queued gets ``{"error", "error_type"}`` instead.
        """
        return self.submit_analyze(texts, apps).result()

    def submit_analyze(self, texts: list[str] | str, apps: list[str] | None = None) -> Future:
        """:meth:`analyze` as a ``concurrent.futures.Future``; unknown app names raise at once."""
        texts = self._check_texts(texts)
        with self._apps_lock:
            names = list(self._apps) if apps is None else list(dict.fromkeys(apps))
            missing = [n for n in names if n not in self._apps]
            if missing:
                raise UnknownAppError(f"no app named {missing[0]!r}")
            chosen = [self._apps[n] for n in names]
            for a in chosen:
                a.inflight += 1
        return self._enqueue(_Request(chosen, "analyze", texts, Future()))

    def submit(self, app: str, op: str, texts: list[str] | str, registration: int | None = None) -> Future:
        """Queue a call and return a ``concurrent.futures.Future`` (wrap with ``asyncio.wrap_future``).
        ``registration`` (from :meth:`app_info`): raise UnknownAppError unless ``app`` is still that registration,
        e.g. for a request accepted before the name was unregistered and registered again (another adapter)."""
        if op not in OPS:
            raise ValueError(f"unknown operation {op!r}; one of {sorted(OPS)}")
        if op == "tags":
            texts = [list(words) for words in texts]
            if not all(isinstance(w, str) for words in texts for w in words):
                raise TypeError("sentences must be lists of word strings")
        else:
            texts = self._check_texts(texts)
        with self._apps_lock:
            a = self._apps.get(app)
            if a is None or (registration is not None and a.registration != registration):
                raise UnknownAppError(f"no app named {app!r}" if a is None else
                                      f"app {app!r} was unregistered (and registered again) since the request came")
            if a.spec.task != OPS[op]:
                raise TaskMismatchError(f"app {app!r} is a {a.spec.task.upper()} app; "
                                        f"{op!r} needs a {OPS[op].upper()} app")
            a.inflight += 1
        req = _Request([a], op, texts, Future())
        if not texts:
            self._enqueue(req, empty=np.zeros((0, self.hidden_size), np.float32) if op == "embed" else [])
            return req.future
        return self._enqueue(req)

    def _check_texts(self, texts) -> list[str]:
        if self._closed:
            raise RuntimeClosedError("runtime is closed")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate: no tokenizer takes it
                raise ValueError(f"texts[{i}] is not valid Unicode ({exc.reason} at position {exc.start})") from None
        return texts

    def _enqueue(self, req: _Request, empty=None) -> Future:
        req.future.add_done_callback(lambda _f, r=req: self._release(r, [a.spec.name for a in r.apps]))
        with self._enqueue_lock:  # close() takes it too: nothing is queued behind its sentinel
            if self._closed:
                req.future.set_exception(RuntimeClosedError("runtime is closed"))
                raise RuntimeClosedError("runtime is closed")
            if not req.texts:
                req.future.set_result(empty if empty is not None else [])
                return req.future
            if self.batching:
                try:
                    self._queue.put_nowait(req)
                except queue.Full:
                    exc = RuntimeOverloadedError(f"request queue full ({self._queue.maxsize} requests waiting)")
                    req.future.set_exception(exc)
                    raise exc from None
                return req.future
        with self._sync_lock:
            self._serve([req])
        return req.future

    def _release(self, req: _Request, names: list[str]) -> None:
        """Give back the in-flight count of ``req``'s apps ``names`` (once each)."""
        idle = []
        with self._apps_lock:
            for a in req.apps:
                if a.spec.name in names and a.spec.name not in req.released:
                    req.released.add(a.spec.name)
                    a.inflight -= 1
                    a.served += 1
                    if a.release_when_idle and a.inflight == 0:
                        a.release_when_idle = False
                        idle.append(a)
            self._apps_lock.notify_all()
        for a in idle:  # an unregister that timed out: its adapter leaves with its last call
            if a.adapter_id is not None:
                self._release_adapter(a.adapter_id)

    # ---------------------------------------------------------------- batcher
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, rows = [first], first.rows
            # Idle system (last batch was a lone request and nothing else is waiting): serve at once rather
            # than wait for company that is not coming. Under load batches hold several requests, so the wait
            # is on again.
            idle = self.adaptive_wait and self._last_batch_requests <= 1 and self._queue.empty()
            deadline = first.t_enqueue + (0.0 if idle else self.max_wait)
            stop = False
            while rows < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                rows += item.rows
            self._last_batch_requests = len(batch)
            self._serve(batch)
            if stop:
                return

    def _serve(self, batch: list[_Request]) -> None:
        # A caller may cancel a queued future (``fut.cancel()``, ``asyncio.wait_for`` timing out): drop those
        # requests; the rest can no longer be cancelled, so setting their result cannot fail in this thread.
        batch = [req for req in batch if req.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            results = self._run_batch(batch)
        except Exception as exc:  # noqa: BLE001 - a failing batch fails its requests, never the batcher
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # one request's input must not fail the other apps' requests it was batched with: each alone
            for req in batch:
                try:
                    req.future.set_result(self._run_batch([req])[0])
                except Exception as one:  # noqa: BLE001
                    req.future.set_exception(one)
            return
        for req, res in zip(batch, results):
            req.future.set_result(res)

    def _run_batch(self, batch: list[_Request]) -> list:
        parts: list[list[Part | dict]] = []  # per request: its parts (analyze: text-major, app-minor)
        for req in batch:
            if req.op != "analyze":
                parts.append([Part(req.apps[0], req.op, t) for t in req.texts])
                continue
            gone = [a for a in req.apps if a.closing]  # unregistered while queued: that app's part fails
            if gone:
                self._release(req, [a.spec.name for a in gone])
            errors = {a.spec.name: {"error": f"app {a.spec.name!r} was unregistered before this request was "
                                             "served", "error_type": "UnknownAppError"} for a in gone}
            parts.append([errors[a.spec.name] if a.spec.name in errors else
                          Part(a, ANALYZE_OP[a.spec.task], t) for t in req.texts for a in req.apps])
        todo = [p for ps in parts for p in ps if isinstance(p, Part)]
        tokenize_parts(todo, self.tokenizer, self.input_names, self.model_max_length)
        self.batches += 1
        self.batch_log.append((len(batch), sum(len(p.tok.pieces) for p in todo),
                               len({p.app.spec.name for p in todo})))
        self._runner.run(todo)
        results = []
        for req, ps in zip(batch, parts):
            if req.op == "analyze":
                results.append(self._analyze_result(req, ps))
                continue
            res = [post_process(p) for p in ps]
            results.append(np.stack(res).astype(np.float32) if req.op == "embed" else res)
        return results

    @staticmethod
    def _analyze_result(req: _Request, ps: list) -> list[dict]:
        out = []
        n = len(req.apps)
        for t_i in range(len(req.texts)):
            row = {}
            for a, p in zip(req.apps, ps[t_i * n:(t_i + 1) * n]):
                if isinstance(p, dict):
                    row[a.spec.name] = p
                elif a.spec.task == "ner":
                    row[a.spec.name] = {"task": "ner", "entities": post_process(p), "truncated": False,
                                        "windowed": p.tok.windowed}
                else:
                    row[a.spec.name] = {"task": "tc", **post_process(p)}
            out.append(row)
        return out

    @property
    def trunk_cache_hits(self) -> int:
        return self.trunk_cache.hits if self.trunk_cache is not None else 0

    @property
    def trunk_cache_misses(self) -> int:
        return self.trunk_cache.misses if self.trunk_cache is not None else 0

    @property
    def trunk_cache_bytes(self) -> int:
        return self.trunk_cache.bytes if self.trunk_cache is not None else 0

    @property
    def trunk_cache_max_bytes(self) -> int:
        return self.trunk_cache.max_bytes if self.trunk_cache is not None else 0

    # ---------------------------------------------------------------- lifecycle
    def stats(self) -> dict:
        log = list(self.batch_log)
        rows = [r for _, r, _ in log]
        return {
            "backend": self.backend.name, "mode": getattr(self.backend, "mode", "grouped"),
            "batches": self.batches, "queued": self._queue.qsize(),
            "batch_rows_mean": float(np.mean(rows)) if rows else 0.0,
            "batch_rows_max": int(max(rows)) if rows else 0,
            "batch_requests_mean": float(np.mean([q for q, _, _ in log])) if log else 0.0,
            "batch_apps_mean": float(np.mean([a for _, _, a in log])) if log else 0.0,
            "trunk_cache_hits": self.trunk_cache_hits, "trunk_cache_misses": self.trunk_cache_misses,
            "trunk_cache_bytes": self.trunk_cache_bytes, "trunk_cache_max_bytes": self.trunk_cache_max_bytes,
            "adapters_loaded": self.adapters_loaded, "apps": len(self._apps),
            # rows run through the adapter-free trunk / with an adapter, and rows answered (dedup saves the gap)
            "trunk_rows": self._runner.trunk_rows, "adapter_rows": self._runner.adapter_rows,
            "rows_served": self._runner.rows_served,
        }

    def close(self) -> None:
        if self._closed:
            return
        with self._enqueue_lock:
            self._closed = True
            if self._worker is not None:
                self._queue.put(None)  # behind every accepted request: those are still answered
        if self._worker is not None:
            self._worker.join(timeout=30)
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
