"""Line-oriented readers that name the file and line of every problem."""
from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path


class DataError(ValueError):
    """Bad input data; ``str(err)`` is ``FILE:LINE: problem``."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # raised inside datasets' map workers: must survive pickling
        return (DataError, (self.path, self.line, self.problem))


def open_text(path: str | os.PathLike):
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file (``.gz`` too); bytes that are not UTF-8 raise DataError
    naming the exact line. Lines are decoded one by one (not by a text-mode reader, which fails somewhere in
    a block of lines) so the error points at the right line."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(str(path), "rb") as fh:
        for lineno, raw in enumerate(_gzip_checked(fh, path), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, lineno, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                f"{exc.start + 1}); re-save the file as UTF-8") from None
            if lineno == 1 and line.startswith("\ufeff"):  # a byte-order mark (Windows editors): not content
                line = line[1:]
            yield lineno, line


def _gzip_checked(lines, path) -> Iterator[bytes]:
    """``lines``, with a ``.gz`` file that is not gzip or is cut short reported as one DataError line."""
    lineno = 0
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(path, lineno + 1, f"not a valid gzip file ({exc}); re-compress it, or drop the .gz "
                            "suffix if it is plain text") from None
        lineno += 1
        yield raw


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)``; blank lines are skipped, broken JSON or non-UTF-8 bytes raise DataError."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def expand_paths(paths: Iterable[str | os.PathLike], suffixes: tuple[str, ...]) -> list[Path]:
    """Files as given, and for folders every file inside with one of ``suffixes``, sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
            if not found:
                raise DataError(p, None, f"folder holds no {'/'.join(suffixes)} files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(p, None, "no such file or folder")
    return out


def require_str_list(path, lineno, obj, key) -> list[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise DataError(path, lineno, f"'{key}' must be a list of strings")
    return value
