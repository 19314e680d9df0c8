"""HTTP service over a :class:`~mtpf.runtime.Runtime` (FastAPI; served by uvicorn on 127.0.0.1 by default).

Endpoints (JSON; OpenAPI schema at ``/openapi.json``, docs at ``/docs``):

    POST /v1/apps/{app}/entities   {"texts": [...]} -> {"results": [[{type, start, end, text, score}]]}
    POST /v1/apps/{app}/classify   {"texts": [...]} -> {"results": [{label, score, probabilities}]}
    POST /v1/apps/{app}/embed      {"texts": [...]} -> {"embeddings": [[...]], "dim": H}
    GET  /v1/apps/{app}            the app's description (labels, task, ...)
    GET  /health                   liveness + registered apps (no key)
    GET  /metrics                  requests, status codes, latency percentiles, micro-batch sizes (no key)
    POST /v1/admin/apps            {"name", "adapter_dir"[, "api_key"]} -> {"name", "api_key"}  (admin key)
    DELETE /v1/admin/apps/{name}   unregister (admin key)

Auth: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; a key opens only its own app. Status codes:
400 malformed JSON / wrong task for the app, 401 missing or invalid key, 403 another app's key, 404 unknown app,
413 too many texts, a text too long or a body too large, 422 a body of the wrong shape, 503 overloaded.
"""
# no `from __future__ import annotations`: FastAPI must see the request models defined inside create_app

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from mtpf.runtime.keys import ADMIN, KeyStore


@dataclass
class Limits:
    max_texts: int = 64
    max_text_chars: int = 5000
    max_body_bytes: int = 1 << 20


class Metrics:
    """Counters and rolling latency windows (last 10k requests per endpoint)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=10000))
        self.texts = 0

    def record(self, endpoint: str, app: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, app, status)] += 1
            self.latency[endpoint].append(seconds)
            self.latency["all"].append(seconds)

    def count_texts(self, n: int) -> None:
        with self.lock:
            self.texts += n

    def snapshot(self, runtime) -> dict:
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
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": {"total": total, "by_status": dict(by_status), "by_endpoint": dict(by_endpoint),
                         "by_app": dict(by_app), "texts": texts},
            "latency": lat,
            "batches": {**runtime.stats(), "rows_histogram": hist},
        }


_APP_PATH = re.compile(r"^/v1/apps/([^/]+)(?:/(\w+))?$")


class _Guard:
    """Pure ASGI middleware: caps the body size (413 before the app reads it) and records metrics."""

    def __init__(self, app, limits: Limits, metrics: Metrics):
        self.app, self.limits, self.metrics = app, limits, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope.get("path", "")
        m = _APP_PATH.match(path)
        endpoint = (m.group(2) or "info") if m else path
        app_name = m.group(1) if m else ""
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_big = await self._read_body(scope, receive)
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


def create_app(runtime, keys: KeyStore, limits: Limits | None = None, admin: bool = False):
    """The FastAPI application. ``admin=True`` adds the app (un)registration endpoints (admin key)."""
    from typing import Annotated

    from fastapi import FastAPI, Header, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints

    from mtpf import __version__
    from mtpf.runtime.app import AppError, FingerprintMismatchError
    from mtpf.runtime.core import (
        RuntimeClosedError,
        RuntimeOverloadedError,
        TaskMismatchError,
        UnknownAppError,
    )

    limits = limits or Limits()
    metrics = Metrics()
    Text = Annotated[str, StringConstraints(max_length=limits.max_text_chars)]

    class TextsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = Field(min_length=1, max_length=limits.max_texts,
                                  description=f"1 to {limits.max_texts} texts of at most {limits.max_text_chars} "
                                              "characters", examples=[["Meet Anna in Paris on Monday."]])

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
                              "Authenticate with `Authorization: Bearer <key>` or `X-API-Key`.")
    api.state.runtime, api.state.keys, api.state.metrics, api.state.limits = runtime, keys, metrics, limits

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        kinds = {e.get("type") for e in errors}
        if "json_invalid" in kinds:
            return JSONResponse({"detail": "malformed JSON body: " + "; ".join(
                str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errors if e.get("type") == "json_invalid")},
                status_code=400)
        if kinds & {"too_long", "string_too_long"}:
            return JSONResponse({"detail": f"request too large: at most {limits.max_texts} texts of at most "
                                           f"{limits.max_text_chars} characters each",
                                 "errors": _plain(errors)}, status_code=413)
        return JSONResponse({"detail": "invalid request body: expected {\"texts\": [\"...\", ...]}",
                             "errors": _plain(errors)}, status_code=422)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug, but say what it was
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    def _key(authorization: str | None, x_api_key: str | None) -> str | None:
        if x_api_key:
            return x_api_key.strip()
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        return None

    def authorize(app: str, authorization: str | None, x_api_key: str | None) -> None:
        key = _key(authorization, x_api_key)
        if key is None:
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not runtime.has_app(app):
            raise HTTPException(404, f"unknown app {app!r}")
        if keys.verify(app, key):
            return
        if keys.owner(key) is not None:
            raise HTTPException(403, f"this API key belongs to another app; it may not call {app!r}")
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})

    async def call(app: str, op: str, texts: list[str]):
        metrics.count_texts(len(texts))
        try:
            fut = runtime.submit(app, op, texts)
            return await asyncio.wrap_future(fut)
        except UnknownAppError as exc:
            raise HTTPException(404, str(exc)) from None
        except TaskMismatchError as exc:
            raise HTTPException(400, str(exc)) from None
        except (RuntimeOverloadedError, RuntimeClosedError) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None

    Auth = Annotated[str | None, Header(description="Bearer <key>")]
    XKey = Annotated[str | None, Header(alias="X-API-Key")]
    errors_doc = {c: {"description": d} for c, d in {
        400: "malformed JSON, or the app's task does not offer this call", 401: "missing or invalid key",
        403: "another app's key", 404: "unknown app", 413: "too many texts / text too long / body too large",
        422: "wrong body shape", 503: "overloaded"}.items()}

    @api.post("/v1/apps/{app}/entities", response_model=EntitiesResponse, responses=errors_doc, tags=["apps"],
              summary="Named entities (NER apps)")
    async def entities(app: str, body: TextsRequest, authorization: Auth = None, x_api_key: XKey = None):
        authorize(app, authorization, x_api_key)
        return {"app": app, "results": await call(app, "entities", body.texts)}

    @api.post("/v1/apps/{app}/classify", response_model=ClassifyResponse, responses=errors_doc, tags=["apps"],
              summary="Label and probabilities (TC apps)")
    async def classify(app: str, body: TextsRequest, authorization: Auth = None, x_api_key: XKey = None):
        authorize(app, authorization, x_api_key)
        return {"app": app, "results": await call(app, "classify", body.texts)}

    @api.post("/v1/apps/{app}/embed", response_model=EmbedResponse, responses=errors_doc, tags=["apps"],
              summary="TC embedding (TC apps)")
    async def embed(app: str, body: TextsRequest, authorization: Auth = None, x_api_key: XKey = None):
        authorize(app, authorization, x_api_key)
        emb = await call(app, "embed", body.texts)
        return {"app": app, "dim": int(emb.shape[1]), "embeddings": emb.tolist()}

    @api.get("/v1/apps/{app}", responses=errors_doc, tags=["apps"], summary="The app's adapter description")
    async def app_info(app: str, authorization: Auth = None, x_api_key: XKey = None):
        authorize(app, authorization, x_api_key)
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
        return metrics.snapshot(runtime)

    if admin:
        def admin_auth(authorization, x_api_key):
            key = _key(authorization, x_api_key)
            if key is None or not keys.verify(ADMIN, key):
                raise HTTPException(401 if key is None or keys.owner(key) is None else 403, "admin key required")

        @api.post("/v1/admin/apps", response_model=RegisterResponse, tags=["admin"], responses=errors_doc,
                  summary="Register an app adapter folder while serving")
        async def register(body: RegisterRequest, authorization: Auth = None, x_api_key: XKey = None):
            admin_auth(authorization, x_api_key)
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
            try:
                await asyncio.to_thread(runtime.unregister_app, name)
            except UnknownAppError as exc:
                raise HTTPException(404, str(exc)) from None
            keys.revoke(name)
            return {"name": name, "removed": True}

    return _wrap(api, limits, metrics)


def _wrap(api, limits, metrics):
    """Wrap with the guard but keep the FastAPI object reachable (``.api``) and OpenAPI intact."""
    guard = _Guard(api, limits, metrics)
    guard.api = api
    guard.openapi = api.openapi
    return guard


def _plain(errors) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]


@contextlib.contextmanager
def serve_in_thread(asgi_app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Run uvicorn in a background thread (tests, benchmarks); yields the base URL."""
    import uvicorn

    config = uvicorn.Config(asgi_app, host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="mtpf-uvicorn", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0]
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
