"""``mtpf serve`` (HTTP system API over one backbone + app adapters) and ``mtpf export`` (ONNX graphs)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtpf.config import bounded_int, positive_int


def add_parser(subparsers) -> None:
    from mtpf.device import add_device_argument

    p = subparsers.add_parser(
        "serve", help="serve app adapters on one shared backbone over HTTP (127.0.0.1 by default)",
        description="Load one backbone, register app adapters (mtpf adapt output) and serve entity extraction, "
                    "classification and embeddings over JSON/HTTP, micro-batching requests across apps and "
                    "serving apps' queues round-robin. `mtpf serve keys rotate APP` gives an app a new key.")
    p.add_argument("--backbone", help="mtpf run folder, backbone folder, or 'packaged' (required to serve)")
    p.add_argument("--app", action="append", default=[], metavar="NAME=ADAPTER_DIR",
                   help="register an app adapter folder under NAME (repeatable)")
    p.add_argument("--keys", default="mtpf-keys.json",
                   help="keys file (salted hashes only); new apps get a key printed once (default: %(default)s)")
    p.add_argument("--api-key", action="append", default=[], metavar="NAME=KEY",
                   help="use this key for app NAME instead of a generated one (repeatable)")
    p.add_argument("--admin", action="store_true",
                   help="enable POST/DELETE /v1/admin/apps (hot register/unregister) behind an admin key; the "
                        "admin key may also call every app")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=bounded_int(0, 65535), default=8000, help="TCP port, 0-65535 (0: any free port)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    add_device_argument(p, "the backbone (PyTorch; ONNX Runtime's CUDA provider when installed)")
    p.add_argument("--int8", action="store_true", help="ONNX backend: use the int8 (dynamic, per-channel) graphs")
    p.add_argument("--onnx-dir", help="ONNX backend: cache folder of its per-layer graphs (written to "
                                      "ONNX_DIR/layered/, reused while the backbone fingerprint matches, else "
                                      "re-exported); default: a temporary folder")
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
    p.add_argument("--chunk-chars", type=int, default=4096,
                   help="work one app gets per round-robin turn, in characters (each text counts 512 more; a turn "
                        "takes at least one text): large requests are cut into chunks of this size")
    p.add_argument("--inflight-chars", type=int, default=4096,
                   help="work handed to the runtime at once; an app's small request waits for about this much "
                        "(raise it on a GPU for larger batches)")
    p.add_argument("--max-queued-texts", type=int, default=256,
                   help="texts one app may have waiting (503 above; at least --max-texts)")
    p.add_argument("--deadline-s", type=float, default=30.0,
                   help="a request not answered within this many seconds gets 504 (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch / ONNX Runtime intra-op threads")
    p.set_defaults(func=run_serve)

    ksub = p.add_subparsers(dest="serve_command", metavar="{keys}")
    k = ksub.add_parser("keys", help="manage the API keys file",
                        description="Manage the API keys file of `mtpf serve` (a running server sees changes at once).")
    kk = k.add_subparsers(dest="keys_command", metavar="{rotate}", required=True)
    r = kk.add_parser("rotate", help="give an app (or __admin__) a new key; the old key stops working",
                      description="Issue a new key for an app that has one in the keys file and print it once; the "
                                  "old key stops working, also in a server that is running on this keys file.")
    r.add_argument("app", help="app name, or __admin__ for the admin key")
    r.add_argument("--keys", default=argparse.SUPPRESS, help="keys file (default: mtpf-keys.json)")
    r.set_defaults(func=run_keys_rotate)

    e = subparsers.add_parser(
        "export", help="export a run's backbone (and adapters, LoRA merged) or an app adapter to ONNX; "
                  "an app adapter to a plain transformers / sentence-transformers folder (--hf)",
        description="Export to ONNX and verify against PyTorch: fp32 max |diff| of the last hidden state <= 1e-4; "
                    "int8 (dynamic, per-channel) mean cosine of sentence embeddings >= 0.95.")
    e.add_argument("path", metavar="RUN_OR_ADAPTER_DIR",
                   help="mtpf run folder, app adapter folder (mtpf_app.json), or a backbone folder / 'packaged'")
    e.add_argument("--onnx", action="store_true", help="export ONNX graphs")
    e.add_argument("--hf", action="store_true",
                   help="app adapter only: a plain transformers AutoModelForTokenClassification folder (NER) or "
                        "sentence-transformers folder + classifier head (TC), LoRA merged, no mtpf needed to load")
    e.add_argument("--int8", action="store_true", help="also write dynamic int8 graphs (per-channel weights)")
    e.add_argument("--out", help="output folder (default: RUN/onnx, APP/onnx, APP/hf; required for a bare backbone)")
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
            raise ConfigError(f"{what} {name}= given twice ({out[name]!r} and {value!r}); name each once")
        out[name] = value
    return out


def run_keys_rotate(args: argparse.Namespace) -> int:
    from mtpf.runtime.keys import KeysFileError, KeyStore

    path = Path(getattr(args, "keys", "mtpf-keys.json"))
    if not path.is_file():
        print(f"mtpf serve keys rotate: error: no keys file at {path}; pass --keys FILE", file=sys.stderr)
        return 2
    try:
        store = KeyStore(path)
        key = store.rotate(args.app)
    except KeysFileError as exc:
        print(f"mtpf serve keys rotate: error: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"mtpf serve keys rotate: error: {path} has no key for app {args.app!r}; apps with keys: "
              f"{', '.join(store.apps()) or 'none'}", file=sys.stderr)
        return 2
    print(f"new API key for app {args.app}: {key}  (shown once; the old key no longer works; stored hashed in "
          f"{path})")
    return 0


def _bind(host: str, port: int):
    """A listening socket on host:port, made before any key is created (so a taken port changes nothing)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart right after a stop
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _serve_socket(app, sock) -> None:
    """uvicorn on an already bound socket (tests replace this)."""
    import uvicorn

    # a client that never finishes its request cannot hold a shutdown forever
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])


def _sigterm_as_interrupt(*_):
    raise KeyboardInterrupt


def _runtime_kwargs(runtime_cls, args: argparse.Namespace) -> dict:
    """``device`` is passed only to a Runtime that takes it; asking for a GPU from one that does not is an error."""
    import inspect

    kwargs = {"backend": args.backend, "int8": args.int8, "onnx_dir": args.onnx_dir, "mode": args.mode,
              "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "num_threads": args.threads,
              "forward_rows": args.forward_rows}
    if "device" in inspect.signature(runtime_cls).parameters:
        kwargs["device"] = args.device
    elif args.device not in ("auto", "cpu"):
        raise ValueError(f"--device {args.device}: this runtime runs on the CPU only")
    return kwargs


def run_serve(args: argparse.Namespace) -> int:
    from mtpf.runtime.keys import ADMIN, KeysFileError, KeyStore
    from mtpf.runtime.scheduler import FairScheduler
    from mtpf.runtime.server import Limits, create_app

    def fail(msg: str) -> int:
        print(f"mtpf serve: error: {msg}", file=sys.stderr)
        return 2

    if not args.backbone:
        return fail("--backbone is required (an mtpf run folder, a backbone folder or 'packaged')")
    try:
        apps = _pairs(args.app, "--app")
        given = _pairs(args.api_key, "--api-key")
    except ValueError as exc:
        return fail(str(exc))
    if ADMIN in apps:
        return fail(f"--app {ADMIN}=...: that name is reserved for the admin key; pick another app name")
    for flag in ("max_batch_size", "forward_rows", "max_texts", "max_text_chars", "max_body_bytes", "chunk_chars",
                 "inflight_chars", "max_queued_texts", "deadline_s"):  # 0 would refuse or time out every request
        if getattr(args, flag) <= 0:
            return fail(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.max_wait_ms < 0:
        return fail(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if args.max_queued_texts < args.max_texts:
        return fail(f"--max-queued-texts ({args.max_queued_texts}) must be at least --max-texts ({args.max_texts})")
    try:
        keys = KeyStore(args.keys)  # read only: nothing is written before the server can listen
    except KeysFileError as exc:
        return fail(str(exc))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mtpf serve: warning: listening on {args.host}, not loopback; anyone who can reach it can try keys",
              file=sys.stderr)
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; is another server running? "
                    "Pick another --port (no key was created or changed)")
    try:
        from mtpf.runtime import AppError, Runtime

        try:
            runtime = Runtime(args.backbone, **_runtime_kwargs(Runtime, args))
        except (ValueError, OSError) as exc:
            return fail(str(exc))
        try:
            for name, adapter_dir in apps.items():  # all apps first: a bad one exits before any key is issued
                try:
                    runtime.register_app(name, adapter_dir)
                except AppError as exc:
                    return fail(str(exc))
            try:
                for name in apps:
                    if name in given:
                        keys.issue(name, given[name])
                    elif not keys.has(name):
                        print(f"API key for app {name}: {keys.issue(name)}  (shown once; stored hashed in "
                              f"{args.keys}; `mtpf serve keys rotate {name}` makes a new one)")
                if args.admin:
                    if ADMIN in given:
                        keys.issue(ADMIN, given[ADMIN])
                    elif not keys.has(ADMIN):
                        print(f"admin key: {keys.issue(ADMIN)}  (shown once; stored hashed in {args.keys})")
            except (ValueError, OSError) as exc:
                return fail(f"{args.keys}: {exc}")
            scheduler = FairScheduler(chunk_chars=args.chunk_chars, inflight_chars=args.inflight_chars,
                                      max_queued_texts=args.max_queued_texts, deadline_s=args.deadline_s)
            app = create_app(runtime, keys, Limits(args.max_texts, args.max_text_chars, args.max_body_bytes),
                             admin=args.admin, scheduler=scheduler)
            port = sock.getsockname()[1]
            import signal

            # SIGTERM (`docker stop`, systemd) as Ctrl-C: uvicorn shuts down gracefully on it, then re-raises it
            # with this handler, so runtime.close() below runs (ONNX temp folders, threads) instead of the
            # default handler killing the process
            previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
            try:
                print(f"mtpf serve: {len(apps)} app(s) on {runtime.backbone_path} [{args.backend}"
                      f"{' int8' if args.int8 else ''}] at http://{args.host}:{port} (OpenAPI: /docs)", flush=True)
                _serve_socket(app, sock)
            except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the signal
                print("mtpf serve: stopped", file=sys.stderr)
                return 130
            finally:
                signal.signal(signal.SIGTERM, previous)
        finally:
            runtime.close()
    finally:
        sock.close()
    return 0


def run_export(args: argparse.Namespace) -> int:
    if args.hf:
        from mtpf.runtime.export_cli import export_app_hf_path
        from mtpf.stages import refuse_nonempty

        if args.onnx and args.out:
            print("mtpf export: error: --out names one folder: run --hf and --onnx as two commands, or leave out "
                  "--out (APP/hf and APP/onnx)", file=sys.stderr)
            return 2
        try:
            # an existing folder is never replaced silently (export_app_hf swaps the whole folder); both formats'
            # folders are checked before either is written (ConfigError is a ValueError)
            inputs = [args.path, args.backbone]
            refuse_nonempty(Path(args.out) if args.out else Path(args.path) / "hf", args.overwrite, "--out", inputs)
            if args.onnx:
                refuse_nonempty(Path(args.path) / "onnx", args.overwrite, "--out", inputs)
            print(f"mtpf export: {export_app_hf_path(args.path, out=args.out, backbone=args.backbone)}")
        except (ValueError, FileNotFoundError) as exc:
            print(f"mtpf export: error: {exc}", file=sys.stderr)
            return 2
        if not args.onnx:
            return 0
    if not args.onnx:
        print("mtpf export: error: choose an export format: --onnx or --hf", file=sys.stderr)
        return 2
    from mtpf.runtime.export_cli import export_path
    from mtpf.runtime.onnx_export import ExportVerificationError
    from mtpf.stages import begin, mark_done, refuse_nonempty

    target = Path(args.out) if args.out else Path(args.path) / "onnx"
    refuse_nonempty(target, args.overwrite, "--out", [args.path, args.backbone])

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
