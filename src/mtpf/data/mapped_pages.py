"""Keep the resident pages of memory-mapped Arrow caches bounded by the batch, not by the run's length.

``datasets`` memory-maps its Arrow files. Every row a batch reads faults its pages into this process, and the
kernel maps a whole page-cache folio (tens of KB to MBs around the row, whatever ``MADV_RANDOM`` says) on each
fault. Those pages stay in the process's RSS: random batches over a 2M-pair token cache grew RSS by ~20 MB a
step here until the whole file was resident. They are clean file pages the kernel could drop, but RSS is what
users, schedulers and our scale benchmark see.

After a batch is gathered (its ids copied into Python lists/tensors), ``release(dataset)`` calls
``madvise(MADV_DONTNEED)`` on the dataset's mapped files: the page-table entries go, the data stays in the page
cache, and the next access faults it back in (~0.2 ms per call). Neither pyarrow nor datasets expose this, hence
ctypes. Linux only (``/proc/self/maps`` names each mapping's file, so only ranges that map those files are
touched; an anonymous mapping is never passed to madvise); elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys

_LIBC = None


def _madvise():
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        _LIBC = libc
    return _LIBC.madvise


def dataset_files(ds) -> tuple[str, ...]:
    """The Arrow files a ``datasets.Dataset`` is memory-mapped from (none for an in-memory one)."""
    return tuple(sorted(os.path.realpath(c["filename"]) for c in getattr(ds, "cache_files", []) or []))


def mapped_ranges(files: tuple[str, ...]) -> list[tuple[int, int]]:
    """This process's current mappings of ``files``, read from ``/proc/self/maps`` on every call (~1 ms): a
    cached address could by now belong to another mapping, and MADV_DONTNEED would zero anonymous memory."""
    wanted, ranges = set(files), []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].rstrip("\n") in wanted:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end))
    return ranges


def release(*datasets) -> int:
    """Unmap the resident pages of these datasets' Arrow files from this process; returns bytes advised.
    Safe at any time: the mappings stay valid and re-fault on the next read."""
    return release_files(tuple(sorted({f for ds in datasets for f in dataset_files(ds)})))


def release_files(files: tuple[str, ...]) -> int:
    """``release`` by file path: whatever Dataset object of this process maps them (e.g. the shard a
    ``Dataset.map`` worker process re-opened)."""
    if not sys.platform.startswith("linux"):
        return 0
    if not files:
        return 0
    files = tuple(os.path.realpath(f) for f in files)  # /proc/self/maps names resolved absolute paths
    advise, total = _madvise(), 0
    for start, end in mapped_ranges(files):
        if advise(start, end - start, mmap.MADV_DONTNEED) == 0:
            total += end - start
    return total
