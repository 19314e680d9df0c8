"""Stage completion markers and output-folder guards shared by the commands.

A stage that writes a folder is done only when its marker exists. The marker is written last, atomically,
after the stage's outputs were checked; a folder without it is a half-done stage (interrupted, killed) and
is redone, never skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

MARKER = ".mtpf-done"
PARTIAL = ".mtpf-partial"
"""Written first by a command that writes into a user-named folder: that folder holds its own unfinished output,
which a re-run may replace without --overwrite."""


def stage_done(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def begin(folder: str | os.PathLike) -> None:
    """Start writing a stage into ``folder``: create it and mark it as unfinished output of ours."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    (folder / PARTIAL).write_text("")


def fsync_file(path: str | os.PathLike) -> None:
    """``path``'s bytes reach the disk (before a rename or a marker makes the file count as finished)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if os.name != "nt":  # Windows cannot flush a read-only handle: best effort there
            raise
    finally:
        os.close(fd)


def write_text_durable(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably: readers see the old file or the whole new one, and
    after an OS crash it is not torn (written to a temporary name, flushed to disk, renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    fsync_file(tmp)
    os.replace(tmp, path)


def fsync_tree(folder: str | os.PathLike, recursive: bool = True) -> None:
    """Every file under ``folder`` (``recursive=False``: in it), and the folders' entries, reach the disk: after
    an OS crash a folder that a marker or a rename declared finished must not hold torn or missing files."""
    for root, dirs, files in os.walk(folder):
        if not recursive:
            dirs.clear()
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def fsync_dir(folder: str | os.PathLike) -> None:
    """``folder``'s entries (a rename into it, a file created or deleted) reach the disk, on Linux and macOS;
    Windows cannot open a folder, and needs no such flush."""
    try:
        fsync_file(folder)
    except OSError:
        pass


def mark_done(folder: str | os.PathLike, required: tuple[str, ...] = (), **info) -> None:
    """Record that the stage writing ``folder`` finished. ``required``: files/folders (relative to ``folder``)
    that must exist first; a missing one raises instead of marking a broken stage as done. The stage's files
    are on disk before the marker is."""
    folder = Path(folder)
    missing = [r for r in required if not (folder / r).exists()]
    if missing:
        raise RuntimeError(f"{folder}: stage finished without {', '.join(missing)}; not marking it done")
    fsync_tree(folder)
    write_text_durable(folder / MARKER, json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info},
                                                   default=str))
    (folder / PARTIAL).unlink(missing_ok=True)


def clear_partial(folder: str | os.PathLike) -> bool:
    """Delete ``folder`` when it holds a half-done stage (no marker); True when something was deleted."""
    folder = Path(folder)
    if folder.exists() and not stage_done(folder):
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
        return True
    return False


def refuse_nonempty(folder: str | os.PathLike, overwrite: bool, flag: str = "--output", inputs=()) -> None:
    """Refuse to write into a non-empty folder unless ``--overwrite`` was given (existing outputs are never
    silently replaced), or the folder holds our own unfinished output (:func:`begin` without
    :func:`mark_done`: an interrupted run, which re-running the same command continues). ``inputs``: paths the
    command reads; an output that is one of them or holds one is refused even with ``--overwrite`` (replacing
    the folder would delete the command's own input). Raises ConfigError."""
    from mtpf.config import ConfigError

    folder = Path(folder)
    here = folder.resolve()
    for p in inputs:
        if p and Path(p).exists() and (Path(p).resolve() == here or here in Path(p).resolve().parents):
            raise ConfigError(f"{flag} {folder}: holds the input {p}, which writing there would delete; choose "
                              "another folder (nothing was changed)")
    if overwrite or not folder.exists() or (folder / PARTIAL).is_file():
        return
    if folder.is_file():
        raise ConfigError(f"{flag} {folder}: is a file, expected a folder")
    if any(folder.iterdir()):
        raise ConfigError(f"{flag} {folder}: folder exists and is not empty; pass --overwrite to replace it, "
                          "or choose another folder (nothing was changed)")


def refuse_unwritable(folder: str | os.PathLike, flag: str = "--output") -> None:
    """Fail now, not after the training, when ``folder`` cannot be written: its parent (where the output is
    assembled and renamed into place) is created and a file is written there and removed. Raises ConfigError."""
    import tempfile

    from mtpf.config import ConfigError

    parent = Path(folder).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".mtpf-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {folder}: cannot write in {parent} ({exc.strerror or exc}); choose another "
                          "folder (nothing was changed)") from None
