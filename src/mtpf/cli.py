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
    import os
    import warnings

    # datasets logs its own error line before raising (e.g. "Failed to load JSON ..."); mtpf names the file and
    # line itself, in one line (set before datasets is imported: it reads this when it configures its logger)
    os.environ.setdefault("DATASETS_VERBOSITY", "critical")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


INTERRUPTED = "interrupted; re-run the same command to continue"
"""What Ctrl-C prints (exit 130). Every stage records its completion last, so a re-run redoes the cut stage."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\nmtpf {args.command}: {getattr(args, 'interrupt_hint', None) or INTERRUPTED}", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"mtpf {args.command}: error: {message}", file=sys.stderr)
        return 2


def user_error(exc: BaseException) -> str | None:
    """The one-line message of a mistake in the user's input, or None for a bug (which keeps its traceback).

    One place for every command: bad data or config (DataError, ConfigError and their subclasses, e.g. an
    unknown model), a missing/unreadable path (an OSError that names its file), bytes that are not UTF-8."""
    from mtpf.config import ConfigError
    from mtpf.data.io import DataError
    from mtpf.runtime.app import AppError  # an app folder that is not one, or made for another backbone

    if isinstance(exc, (ConfigError, DataError, AppError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8"
    return None


if __name__ == "__main__":
    sys.exit(main())
