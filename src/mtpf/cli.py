"""The ``mtpf`` command line: one sub-command per pipeline stage.

Each stage module exposes ``add_parser(subparsers)``; its parser sets ``func`` to the handler. Modules are
imported only when listed here, and heavy imports (torch, transformers) happen inside the handlers so
``mtpf --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# data -> teacher labels -> pre-finetune -> downstream evaluate -> export -> runtime
STAGES = [
    "mtpf.teacher.cli",  # mtpf label, mtpf label inspect
    "mtpf.recipes.pretrain",  # mtpf pretrain
    "mtpf.downstream.cli",  # mtpf adapt, mtpf evaluate
    "mtpf.runtime.cli",  # mtpf serve, mtpf export
    "mtpf.push",  # mtpf push
    "mtpf.analysis.cli",  # mtpf analyze
    "mtpf.demo",  # mtpf demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtpf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mtpf {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
                continue  # stage not built yet
            raise
        module.add_parser(sub)
    return parser


def _version() -> str:
    from mtpf import __version__

    return __version__


def quiet_libraries() -> None:
    """Keep the terminal for mtpf's own progress: no per-load reports or library deprecation chatter."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from mtpf.config import ConfigError
    from mtpf.data.io import DataError

    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as exc:
        print(f"mtpf {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
