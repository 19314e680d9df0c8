"""``mtpf serve`` (HTTP system API over one backbone + app adapters) and ``mtpf export`` (ONNX graphs)."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve app adapters on one shared backbone over HTTP (127.0.0.1 by default)",
        description="Load one backbone, register app adapters (mtpf adapt output) and serve entity extraction, "
                    "classification and embeddings over JSON/HTTP, micro-batching requests across apps.")
    p.add_argument("--backbone", required=True, help="mtpf run folder, backbone folder, or 'packaged'")
    p.add_argument("--app", action="append", default=[], metavar="NAME=ADAPTER_DIR",
                   help="register an app adapter folder under NAME (repeatable)")
    p.add_argument("--keys", default="mtpf-keys.json",
                   help="keys file (salted hashes only); new apps get a key printed once (default: %(default)s)")
    p.add_argument("--api-key", action="append", default=[], metavar="NAME=KEY",
                   help="use this key for app NAME instead of a generated one (repeatable)")
    p.add_argument("--admin", action="store_true",
                   help="enable POST/DELETE /v1/admin/apps (hot register/unregister) behind an admin key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--int8", action="store_true", help="ONNX backend: use the int8 (dynamic, per-channel) graphs")
    p.add_argument("--onnx-dir", help="ONNX backend: folder of the backbone export (mtpf export); default: temp")
    p.add_argument("--mode", choices=["mixed", "grouped"], default="mixed",
                   help="torch backend: forwards that mix apps' rows via PEFT per-row adapter_names (mixed) or "
                        "one forward per app's rows (grouped)")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="texts collected into one micro-batch (across apps)")
    p.add_argument("--forward-rows", type=int, default=8,
                   help="rows per forward pass: a micro-batch runs as forwards of this many length-sorted rows")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a request waits for batch company")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (413 above)")
    p.add_argument("--max-text-chars", type=int, default=5000, help="characters per text (413 above)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size (413 above)")
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads")
    p.set_defaults(func=run_serve)

    e = subparsers.add_parser(
        "export", help="export a run's backbone (and adapters, LoRA merged) or an app adapter to ONNX",
        description="Export to ONNX and verify against PyTorch: fp32 max |diff| of the last hidden state <= 1e-4; "
                    "int8 (dynamic, per-channel) mean cosine of sentence embeddings >= 0.95.")
    e.add_argument("path", metavar="RUN_OR_ADAPTER_DIR",
                   help="mtpf run folder, app adapter folder (mtpf_app.json), or a backbone folder / 'packaged'")
    e.add_argument("--onnx", action="store_true", help="export ONNX graphs (the only format for now)")
    e.add_argument("--int8", action="store_true", help="also write dynamic int8 graphs (per-channel weights)")
    e.add_argument("--out", help="output folder (default: RUN/onnx, APP/onnx; required for a bare backbone)")
    e.add_argument("--backbone", help="app adapter: the backbone it was trained on (default: from adapter_config)")
    e.add_argument("--no-strict", action="store_true", help="keep going when a graph misses the tolerance")
    e.add_argument("--overwrite", action="store_true", help="write into an output folder that is not empty")
    e.set_defaults(func=run_export)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from mtpf.config import ConfigError

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{what} must look like NAME=VALUE, got {item!r}")
        if name in out:  # a silently dropped app would only show up as 404s later
            raise ConfigError(f"{what}: {name!r} is given twice ({out[name]!r} and {value!r}); name each once")
        out[name] = value
    return out


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mtpf.runtime import AppError, Runtime
    from mtpf.runtime.keys import ADMIN, KeyStore
    from mtpf.runtime.server import Limits, create_app

    apps = _pairs(args.app, "--app")
    given = _pairs(args.api_key, "--api-key")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mtpf serve: warning: listening on {args.host}, not loopback; anyone who can reach it can try keys",
              file=sys.stderr)
    runtime = Runtime(args.backbone, backend=args.backend, int8=args.int8, onnx_dir=args.onnx_dir, mode=args.mode,
                      max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, num_threads=args.threads,
                      forward_rows=args.forward_rows)
    keys = KeyStore(args.keys)
    for name, adapter_dir in apps.items():
        try:
            runtime.register_app(name, adapter_dir)
        except AppError as exc:
            print(f"mtpf serve: error: {exc}", file=sys.stderr)
            runtime.close()
            return 2
        if name in given:
            keys.issue(name, given[name])
        elif not keys.has(name):
            print(f"API key for app {name}: {keys.issue(name)}  (shown once; stored hashed in {args.keys})")
    if args.admin:
        if ADMIN in given:
            keys.issue(ADMIN, given[ADMIN])
        elif not keys.has(ADMIN):
            print(f"admin key: {keys.issue(ADMIN)}  (shown once; stored hashed in {args.keys})")
    app = create_app(runtime, keys, Limits(args.max_texts, args.max_text_chars, args.max_body_bytes),
                     admin=args.admin)
    print(f"mtpf serve: {len(apps)} app(s) on {runtime.backbone_path} [{args.backend}"
          f"{' int8' if args.int8 else ''}] at http://{args.host}:{args.port} (OpenAPI: /docs)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")
    finally:
        runtime.close()
    return 0


def run_export(args: argparse.Namespace) -> int:
    if not args.onnx:
        print("mtpf export: error: choose an export format: --onnx", file=sys.stderr)
        return 2
    from pathlib import Path

    from mtpf.runtime.export_cli import export_path
    from mtpf.runtime.onnx_export import ExportVerificationError
    from mtpf.stages import begin, mark_done, refuse_nonempty

    target = Path(args.out) if args.out else Path(args.path) / "onnx"
    refuse_nonempty(target, args.overwrite, "--out")

    try:
        p = Path(args.path)
        ours = any((p / f).is_file() for f in ("run.json", "mtpf_app.json", "backbone/config.json"))
        if ours or (args.out and (p.exists() or args.path == "packaged")):  # else export_path names the mistake
            begin(target)  # a cut export is ours to finish: re-running continues without --overwrite
        reports = export_path(args.path, out=args.out, int8=args.int8, backbone=args.backbone,
                              strict=not args.no_strict)
    except ExportVerificationError as exc:
        print(f"mtpf export: verification failed: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"mtpf export: error: {exc}", file=sys.stderr)
        return 2
    mark_done(target)
    for out_dir, meta in reports.items():
        ver = meta["verification"]
        line = f"{out_dir}: fp32 max|diff| {ver['fp32']['max_abs_diff']:.2e} (<= {ver['fp32']['tolerance']['max_abs_diff']})"
        if "int8" in ver:
            line += f"; int8 mean cosine {ver['int8']['mean_cosine']:.4f} (>= {ver['int8']['tolerance']['mean_cosine']})"
        print(line + ("" if all(v["passed"] for v in ver.values()) else "  OUTSIDE TOLERANCE"))
    print(json.dumps({str(k): v["files"] for k, v in reports.items()}))
    return 0
