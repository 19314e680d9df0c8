"""HTTP service over a :class:`~mtpf.runtime.Runtime` (FastAPI; served by uvicorn on 127.0.0.1 by default).

Endpoints (JSON; OpenAPI schema at ``/openapi.json``, docs at ``/docs``):

    POST /v1/apps/{app}/entities   {"texts": [...]} -> {"results": [[{type, start, end, text, score}]]}
    POST /v1/apps/{app}/classify   {"texts": [...]} -> {"results": [{label, score, probabilities}]}
    POST /v1/apps/{app}/embed      {"texts": [...]} -> {"embeddings": [[...]], "dim": H}
    POST /v1/analyze               {"texts": [...], "apps": [...]} -> {"results": [{app: result or {"error"}}]}
    GET  /v1/apps/{app}            the app's description (labels, task, ...)
    GET  /health                   liveness + registered apps (no key)
    GET  /metrics                  requests, status codes, latency percentiles, micro-batch sizes, queues (no key)
    POST /v1/admin/apps            {"name", "adapter_dir"[, "api_key"]} -> {"name", "api_key"}  (admin key)
    DELETE /v1/admin/apps/{name}   unregister (admin key)

Auth: ``Authorization: Bearer <key>`` and/or ``X-API-Key: <key>[,<key>...]``; a key opens only its own app, the
admin key every app. Status codes: 400 malformed JSON / wrong task for the app, 401 missing or invalid key, 403
another app's key, 404 unknown app, 413 too many texts, a text too long or a body too large, 422 a body of the
wrong shape, 503 the app's queue is full or the runtime overloaded, 504 the request deadline passed.

Every app call goes through a :class:`~mtpf.runtime.scheduler.FairScheduler` (per-app queues served round-robin,
large requests cut into chunks), so one app's large requests cannot hold another app's small one.
"""
# no `from __future__ import annotations`: FastAPI must see the request models defined inside create_app

import asyncio
import contextlib
import inspect
import json
import re
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mtpf.runtime.keys import ADMIN, KeyStore, KeysFileError
from mtpf.runtime.scheduler import DeadlineExceededError, FairScheduler, QueueFullError, join_lists


@dataclass
class Limits:
    max_texts: int = 64
    max_text_chars: int = 5000
    max_body_bytes: int = 1 << 20
    max_apps: int = 32  # apps per /v1/analyze request
    body_timeout_s: float = 30.0  # a body not received whole by then: 408 (a stalled client holds no connection)


UNKNOWN = "_unknown"  # metrics label of every path / app name the service does not know


class Metrics:
    """Counters and rolling latency windows (last 10k requests per endpoint).

    Labels are bounded: endpoints are the service's own routes (anything else is ``other``) and app labels are
    registered apps (any other name is counted under ``_unknown``), so random paths and app names cannot grow it.
    """

    def __init__(self, known_app=lambda name: True):
        self.known_app = known_app
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=10000))
        self.texts = 0

    def record(self, endpoint: str, app: str, status: int, seconds: float) -> None:
        if app and not self.known_app(app):
            app = UNKNOWN
        with self.lock:
            self.requests[(endpoint, app, status)] += 1
            self.latency[endpoint].append(seconds)
            self.latency["all"].append(seconds)

    def count_texts(self, n: int) -> None:
        with self.lock:
            self.texts += n

    def snapshot(self, runtime, scheduler: FairScheduler | None = None) -> dict:
        with self.lock:
            by_status: dict[str, int] = defaultdict(int)
            by_app: dict[str, int] = defaultdict(int)
            by_endpoint: dict[str, int] = defaultdict(int)
            for (ep, app, status), n in self.requests.items():
                by_status[str(status)] += n
                by_endpoint[ep] += n
                if app:
                    by_app[app] += n
            lat = {}
            for ep, window in self.latency.items():
                arr = np.asarray(window) * 1000.0
                if len(arr):
                    lat[ep] = {"count": len(arr), "p50_ms": float(np.percentile(arr, 50)),
                               "p90_ms": float(np.percentile(arr, 90)), "p95_ms": float(np.percentile(arr, 95)),
                               "p99_ms": float(np.percentile(arr, 99)), "max_ms": float(arr.max())}
            total = sum(self.requests.values())
            texts = self.texts
        log = list(runtime.batch_log)
        rows = np.asarray([r for _, r, _ in log]) if log else np.zeros(0)
        hist = {}
        for lo, hi in ((1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 10 ** 9)):
            n = int(((rows >= lo) & (rows <= hi)).sum())
            if n:
                hist[f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi < 10 ** 9 else f">={lo}")] = n
        out = {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": {"total": total, "by_status": dict(by_status), "by_endpoint": dict(by_endpoint),
                         "by_app": dict(by_app), "texts": texts},
            "latency": lat,
            "batches": {**runtime.stats(), "rows_histogram": hist},
        }
        if scheduler is not None:
            out["scheduler"] = scheduler.stats()
        cache = _cache_stats(runtime)
        if cache is not None:
            out["trunk_cache"] = cache
        return out


def _cache_stats(runtime) -> dict | None:
    """The runtime's trunk-state cache counters, where the runtime has such a cache (read defensively: the
    runtime may expose ``cache_stats()`` or a ``trunk_cache``/``cache`` object with ``hits``/``misses``)."""
    fn = getattr(runtime, "cache_stats", None)
    if callable(fn):
        return fn()
    cache = getattr(runtime, "trunk_cache", None) or getattr(runtime, "cache", None)
    if cache is None or not hasattr(cache, "hits"):
        return None
    hits, misses = int(getattr(cache, "hits", 0)), int(getattr(cache, "misses", 0))
    out = {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else 0.0}
    for name in ("bytes", "max_bytes", "entries", "size"):
        if hasattr(cache, name) and not callable(getattr(cache, name)):
            out[name] = getattr(cache, name)
    return out


_APP_PATH = re.compile(r"^/v1/apps/([^/]+)(?:/([^/]+))?$")
_ROUTES = {"/health": "health", "/metrics": "metrics", "/openapi.json": "openapi", "/docs": "docs",
           "/docs/oauth2-redirect": "docs", "/redoc": "docs", "/v1/analyze": "analyze"}
_APP_OPS = ("entities", "classify", "embed")


def _labels(path: str) -> tuple[str, str]:
    """(endpoint label, app name or "") of a request path; unknown paths are all ``other``."""
    if path in _ROUTES:
        return _ROUTES[path], ""
    m = _APP_PATH.match(path)
    if m:
        op = m.group(2)
        if op is None:
            return "info", m.group(1)
        return (op, m.group(1)) if op in _APP_OPS else ("other", "")
    if path == "/v1/admin/apps" or path.startswith("/v1/admin/apps/"):
        return "admin", ""
    return "other", ""


class _Guard:
    """Pure ASGI middleware: caps the body size (413 before the app reads it) and records metrics."""

    def __init__(self, app, limits: Limits, metrics: Metrics):
        self.app, self.limits, self.metrics = app, limits, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        endpoint, app_name = _labels(scope.get("path", ""))
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                try:
                    body, too_big = await asyncio.wait_for(self._read_body(scope, receive),
                                                           timeout=self.limits.body_timeout_s)
                except (TimeoutError, asyncio.TimeoutError):
                    await self._reject(send_wrapper, 408, f"request body not received within "
                                                          f"{self.limits.body_timeout_s:g} s")
                    return
                if too_big:
                    await self._reject(send_wrapper, 413, f"request body larger than {self.limits.max_body_bytes} "
                                                          "bytes")
                    return
                sent = False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.record(endpoint, app_name, status["code"], time.perf_counter() - t0)

    async def _read_body(self, scope, receive):
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.limits.max_body_bytes:
                        return b"", True
                except ValueError:
                    return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False

    @staticmethod
    async def _reject(send, code: int, detail: str):
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(runtime, keys: KeyStore, limits: Limits | None = None, admin: bool = False,
               scheduler: FairScheduler | None = None):
    """The FastAPI application. ``admin=True`` adds the app (un)registration endpoints (admin key).

    ``scheduler``: the fair scheduler every app call goes through (default: ``FairScheduler()``).
    """
    from typing import Annotated, Any

    from fastapi import FastAPI, Header, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints

    from mtpf import __version__
    from mtpf.runtime.app import AppError, FingerprintMismatchError
    from mtpf.runtime.core import (
        OPS,
        RuntimeClosedError,
        RuntimeOverloadedError,
        TaskMismatchError,
        UnknownAppError,
    )

    limits = limits or Limits()
    sched = scheduler or FairScheduler()
    metrics = Metrics(known_app=runtime.has_app)
    Text = Annotated[str, StringConstraints(max_length=limits.max_text_chars)]
    AppName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
    texts_field = Field(min_length=1, max_length=limits.max_texts,
                        description=f"1 to {limits.max_texts} texts of at most {limits.max_text_chars} characters",
                        examples=[["Meet Anna in Paris on Monday."]])

    class TextsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = texts_field

    class AnalyzeRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = texts_field
        apps: list[AppName] = Field(min_length=1, max_length=limits.max_apps,
                                    description="the apps whose results you want; every one must be opened by a "
                                                "key you send (or send the admin key)", examples=[["ner", "intent"]])

    class Entity(BaseModel):
        type: str
        start: int = Field(description="character offset of the span's first character")
        end: int = Field(description="character offset just after the span")
        text: str
        score: float = Field(description="mean probability of the span's word tags")

    class EntitiesResponse(BaseModel):
        app: str
        results: list[list[Entity]]

    class Classification(BaseModel):
        label: str
        score: float
        probabilities: dict[str, float]

    class ClassifyResponse(BaseModel):
        app: str
        results: list[Classification]

    class EmbedResponse(BaseModel):
        app: str
        dim: int
        embeddings: list[list[float]]

    class AnalyzeResponse(BaseModel):
        apps: list[str]
        results: list[dict[str, Any]] = Field(description="per text: {app: that app's result, or {\"error\": "
                                                          "message} when that app failed (e.g. removed meanwhile)}")

    class RegisterRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
        adapter_dir: str
        api_key: str | None = None

    class RegisterResponse(BaseModel):
        name: str
        api_key: str = Field(description="shown once; only its hash is kept")
        app: dict

    api = FastAPI(title="mtpf runtime", version=__version__,
                  description="One shared pre-finetuned encoder, many apps' adapters (LoRA + heads). "
                              "Authenticate with `Authorization: Bearer <key>` or `X-API-Key` (several keys: "
                              "comma-separated).")
    api.state.runtime, api.state.keys, api.state.metrics, api.state.limits = runtime, keys, metrics, limits
    api.state.scheduler = sched
    executor: list[ThreadPoolExecutor] = []  # for Runtime.analyze (a blocking call); created on first use

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        kinds = {e.get("type") for e in errors}
        if "json_invalid" in kinds:
            return JSONResponse({"detail": "malformed JSON body: " + "; ".join(
                str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errors if e.get("type") == "json_invalid")},
                status_code=400)
        if request.url.path.startswith("/v1/admin/"):  # a register body: name / adapter_dir / api_key
            return JSONResponse({"detail": "invalid register body: expected {\"name\": \"...\" (1-64 "
                                           "characters of letters, digits, . _ -), \"adapter_dir\": \"...\"} and "
                                           "optionally \"api_key\"", "errors": _plain(errors)}, status_code=422)
        names = [e for e in errors if "apps" in [str(x) for x in e.get("loc", ())]
                 and e.get("type") in ("too_long", "string_too_long")]
        if names and len(names) == len(errors) and any(len(e.get("loc", ())) > 2 for e in names):
            return JSONResponse({"detail": "app names are 1-64 characters", "errors": _plain(errors)},
                                status_code=422)
        if kinds & {"too_long", "string_too_long"}:
            return JSONResponse({"detail": f"request too large: at most {limits.max_texts} texts of at most "
                                           f"{limits.max_text_chars} characters each (and {limits.max_apps} apps "
                                           "per analyze request)",
                                 "errors": _plain(errors)}, status_code=413)
        return JSONResponse({"detail": "invalid request body: expected {\"texts\": [\"...\", ...]} (and "
                                       "\"apps\": [...] for /v1/analyze)",
                             "errors": _plain(errors)}, status_code=422)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug, but say what it was
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    def sent_keys(authorization: str | None, x_api_key: list[str] | None) -> list[str]:
        out = []
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                out.append(token.strip())
        for value in x_api_key or []:
            out.extend(k.strip() for k in value.split(",") if k.strip())
        return list(dict.fromkeys(out))

    def authorize(apps: list[str], authorization: str | None, x_api_key: list[str] | None) -> None:
        """401 no key / a key nobody owns; 404 an unknown app; 403 an app none of the keys opens."""
        sent = sent_keys(authorization, x_api_key)
        if not sent:
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if len(sent) > limits.max_apps:  # each key is hashed once per registered app, on the event loop
            raise HTTPException(400, f"{len(sent)} API keys sent; send at most {limits.max_apps} (one per app "
                                     "called)")
        unknown = [a for a in apps if not runtime.has_app(a)]
        if unknown:
            raise HTTPException(404, f"unknown app {unknown[0]!r}" if len(unknown) == 1 else
                                f"unknown apps {', '.join(map(repr, unknown))}")
        if len(apps) == 1 and len(sent) == 1 and keys.verify(apps[0], sent[0]):
            return  # the common case: one app, its own key
        owners = [keys.owner(k) for k in sent]
        if None in owners:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if ADMIN in owners and admin:  # the admin key opens every app only on a server started with --admin
            return
        if ADMIN in owners:
            raise HTTPException(403, "the admin key works only on a server started with --admin")
        closed = [a for a in apps if a not in owners]
        if closed:
            raise HTTPException(403, f"the API key(s) sent belong to {', '.join(map(repr, sorted(set(owners))))}; "
                                     f"they may not call {', '.join(map(repr, closed))}")

    async def answer(fut: Future):
        """Wait for a scheduled request, at most its deadline; cancelling it drops its queued chunks."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout=sched.deadline_s)
        except UnknownAppError as exc:
            raise HTTPException(404, f"{exc} (removed while the request waited)") from None
        except TaskMismatchError as exc:
            raise HTTPException(400, str(exc)) from None
        except (RuntimeOverloadedError, RuntimeClosedError) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        except (TimeoutError, asyncio.TimeoutError) as exc:  # DeadlineExceededError, or the wait timed out
            # (asyncio.TimeoutError is the builtin only from Python 3.11)
            msg = str(exc) if isinstance(exc, DeadlineExceededError) else (
                f"request deadline ({sched.deadline_s:g} s) passed before it was answered; retry later or send "
                "fewer texts")
            raise HTTPException(504, msg) from None

    def schedule(key: str, texts: list[str], run, join=join_lists, charge=None, weight: int = 1) -> Future:
        metrics.count_texts(len(texts))
        try:
            return sched.submit(key, texts, run, join=join, charge=charge, weight=weight)
        except QueueFullError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None

    # a runtime stand-in (tests, another Runtime) may not take it
    takes_registration = "registration" in inspect.signature(runtime.submit).parameters

    async def call(app: str, op: str, texts: list[str]):
        try:
            info = runtime.app_info(app)
        except UnknownAppError as exc:
            raise HTTPException(404, str(exc)) from None
        task = info["task"]
        if task != OPS[op]:
            raise HTTPException(400, f"app {app!r} is a {task.upper()} app; {op!r} needs a {OPS[op].upper()} app")
        join = (lambda parts: np.concatenate(parts, axis=0)) if op == "embed" else join_lists
        # the app as accepted: its chunks run later, and the name may meanwhile be another registration (adapter)
        reg = {"registration": info["registration"]} if "registration" in info and takes_registration else {}
        return await answer(schedule(app, texts, lambda chunk: runtime.submit(app, op, chunk, **reg), join=join))

    def analyze_chunk(texts: list[str], apps: list[str], accepted: dict | None = None) -> Future:
        """Every app's result for each text. Uses ``Runtime.analyze`` (one trunk pass shared by the apps) when
        the runtime has it, else each app's own call; an app that fails (e.g. removed) gets ``{"error": ...}``."""
        if hasattr(runtime, "analyze"):
            if not executor:
                executor.append(ThreadPoolExecutor(max_workers=4, thread_name_prefix="mtpf-analyze"))
            return executor[0].submit(_analyze_native, runtime, texts, apps, UnknownAppError, accepted)
        return _analyze_per_app(runtime, texts, apps)

    Auth = Annotated[str | None, Header(description="Bearer <key>")]
    XKey = Annotated[list[str] | None, Header(alias="X-API-Key", description="<key>[,<key>...]")]
    errors_doc = {c: {"description": d} for c, d in {
        400: "malformed JSON, or the app's task does not offer this call", 401: "missing or invalid key",
        403: "another app's key", 404: "unknown app", 413: "too many texts / text too long / body too large",
        422: "wrong body shape", 503: "the app's queue is full, or the runtime is overloaded",
        504: "the request deadline passed"}.items()}

    @api.post("/v1/apps/{app}/entities", response_model=EntitiesResponse, responses=errors_doc, tags=["apps"],
              summary="Named entities (NER apps)")
    async def entities(app: str, body: TextsRequest, authorization: Auth = None, x_api_key: XKey = None):
        authorize([app], authorization, x_api_key)
        return {"app": app, "results": await call(app, "entities", body.texts)}

    @api.post("/v1/apps/{app}/classify", response_model=ClassifyResponse, responses=errors_doc, tags=["apps"],
              summary="Label and probabilities (TC apps)")
    async def classify(app: str, body: TextsRequest, authorization: Auth = None, x_api_key: XKey = None):
        authorize([app], authorization, x_api_key)
        return {"app": app, "results": await call(app, "classify", body.texts)}

    @api.post("/v1/apps/{app}/embed", response_model=EmbedResponse, responses=errors_doc, tags=["apps"],
              summary="TC embedding (TC apps)")
    async def embed(app: str, body: TextsRequest, authorization: Auth = None, x_api_key: XKey = None):
        authorize([app], authorization, x_api_key)
        emb = await call(app, "embed", body.texts)
        return {"app": app, "dim": int(emb.shape[1]), "embeddings": emb.tolist()}

    @api.post("/v1/analyze", response_model=AnalyzeResponse, responses=errors_doc, tags=["apps"],
              summary="Every requested app's result for each text (NER: entities, TC: classification)")
    async def analyze(body: AnalyzeRequest, authorization: Auth = None, x_api_key: XKey = None):
        apps = list(dict.fromkeys(body.apps))
        authorize(apps, authorization, x_api_key)
        accepted = {}  # the registration each app had when the request was accepted (authorize checked them)
        for a in apps:
            with contextlib.suppress(UnknownAppError):
                accepted[a] = runtime.app_info(a).get("registration")
        results = await answer(schedule("+".join(sorted(apps)), body.texts,
                                        lambda chunk: analyze_chunk(chunk, apps, accepted), charge=apps,
                                        weight=len(apps)))
        return {"apps": apps, "results": [_jsonable({a: per_text.get(a, {"error": f"no result for app {a!r}"})
                                                     for a in apps}) for per_text in results]}

    @api.get("/v1/apps/{app}", responses=errors_doc, tags=["apps"], summary="The app's adapter description")
    async def app_info(app: str, authorization: Auth = None, x_api_key: XKey = None):
        authorize([app], authorization, x_api_key)
        try:
            info = runtime.app_info(app)
        except UnknownAppError as exc:
            raise HTTPException(404, str(exc)) from None
        info.pop("adapter_dir", None)
        return info

    @api.get("/health", tags=["service"])
    async def health():
        return {"status": "ok", "backend": runtime.backend.name, "backbone": str(runtime.backbone_path),
                "backbone_fingerprint": runtime.fingerprint,
                "apps": {n: i["task"] for n, i in runtime.apps().items()}}

    @api.get("/metrics", tags=["service"])
    async def get_metrics():
        return metrics.snapshot(runtime, sched)

    if admin:
        def admin_auth(authorization, x_api_key):
            sent = sent_keys(authorization, x_api_key)
            if not any(keys.verify(ADMIN, k) for k in sent):
                known = sent and all(keys.owner(k) is not None for k in sent)
                raise HTTPException(403 if known else 401, "admin key required")

        @api.post("/v1/admin/apps", response_model=RegisterResponse, tags=["admin"], responses=errors_doc,
                  summary="Register an app adapter folder while serving")
        async def register(body: RegisterRequest, authorization: Auth = None, x_api_key: XKey = None):
            admin_auth(authorization, x_api_key)
            if body.name == ADMIN:  # its key would be (or replace) the admin key
                raise HTTPException(400, f"the app name {ADMIN!r} is reserved for the admin key; pick another name")
            try:
                info = await asyncio.to_thread(runtime.register_app, body.name, body.adapter_dir)
            except FingerprintMismatchError as exc:
                raise HTTPException(409, str(exc)) from None
            except AppError as exc:
                raise HTTPException(400, str(exc)) from None
            try:
                key = keys.issue(body.name, body.api_key)
            except ValueError as exc:
                await asyncio.to_thread(runtime.unregister_app, body.name)
                raise HTTPException(400, str(exc)) from None
            info.pop("adapter_dir", None)
            return {"name": body.name, "api_key": key, "app": info}

        @api.delete("/v1/admin/apps/{name}", tags=["admin"], responses=errors_doc, summary="Unregister an app")
        async def unregister(name: str, authorization: Auth = None, x_api_key: XKey = None):
            admin_auth(authorization, x_api_key)
            if not runtime.has_app(name):
                raise HTTPException(404, f"no app named {name!r}")
            try:
                # the key goes now, not after the drain: a new registration of the name during the drain (a
                # register is accepted once the name is free) gets its own key, which a late revoke removed
                keys.revoke(name)
            except KeysFileError as exc:  # nothing changed yet: the app is still served
                raise HTTPException(503, f"cannot update the keys file, app {name!r} left registered: {exc}") from None
            try:
                await asyncio.to_thread(runtime.unregister_app, name)
            except UnknownAppError as exc:
                raise HTTPException(404, str(exc)) from None
            except TimeoutError:  # unregistered all the same: calls already accepted are still being answered
                return {"name": name, "removed": True, "draining": True}
            return {"name": name, "removed": True, "draining": False}

    return _wrap(api, limits, metrics)


def _analyze_native(runtime, texts, apps, unknown_error, accepted: dict | None = None):
    """``Runtime.analyze`` over the apps still registered (as the registration ``accepted`` saw, when given);
    removed (or replaced) ones get an error part."""

    def same(a):
        if not runtime.has_app(a):
            return False
        if accepted is None or accepted.get(a) is None:
            return True
        try:
            return runtime.app_info(a).get("registration") == accepted[a]
        except unknown_error:
            return False

    for _ in range(2):  # an app removed between the check and the call: check again once
        live = [a for a in apps if same(a)]
        try:
            out = runtime.analyze(texts, apps=live) if live else [{} for _ in texts]
            break
        except unknown_error:
            continue
    else:
        raise unknown_error(f"apps {apps} were removed while the request waited")
    gone = {a: {"error": f"app {a!r} was removed while the request waited"} for a in apps if a not in live}
    return [{**dict(per_text), **gone} for per_text in out]


def _analyze_per_app(runtime, texts, apps) -> Future:
    """Fallback for a runtime without ``analyze``: each app's own call (NER: entities, TC: classify), combined
    into one future of per-text dicts."""
    combined: Future = Future()
    parts: dict[str, object] = {}
    lock = threading.Lock()

    def settle(app, value):
        with lock:
            parts[app] = value
            done = len(parts) == len(apps)
        if done:
            combined.set_result([{a: (parts[a][i] if isinstance(parts[a], list) else parts[a]) for a in apps}
                                 for i in range(len(texts))])

    for app in apps:
        try:
            op = "entities" if runtime.app_info(app)["task"] == "ner" else "classify"
            fut = runtime.submit(app, op, texts)
        except Exception as exc:  # noqa: BLE001 - e.g. removed while the request waited: that app's part fails
            settle(app, {"error": f"{exc} (app removed while the request waited)"
                         if isinstance(exc, LookupError) else str(exc)})
            continue
        fut.add_done_callback(lambda f, a=app: settle(a, f.result() if f.exception() is None
                                                       else {"error": str(f.exception())}))
    return combined


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _wrap(api, limits, metrics):
    """Wrap with the guard but keep the FastAPI object (``.api``) and its scheduler (``.scheduler``) reachable
    and OpenAPI intact."""
    guard = _Guard(api, limits, metrics)
    guard.api = api
    guard.scheduler = api.state.scheduler
    guard.openapi = api.openapi
    return guard


def _plain(errors) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]


@contextlib.contextmanager
def serve_in_thread(asgi_app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Run uvicorn in a background thread (tests, benchmarks); yields the base URL."""
    import uvicorn

    import socket

    config = uvicorn.Config(asgi_app, host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="off")
    server = uvicorn.Server(config)
    # our own listening socket (Server.run's public ``sockets``): its port is known without uvicorn's internals
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mtpf-uvicorn", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
