"""mtpf.data.mapped_pages: the pages a batch faulted in from a memory-mapped Arrow cache leave the process's
RSS after ``release``; the data stays readable and nothing else is touched."""
import sys

import numpy as np
import pytest

from mtpf.data import mapped_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux page-table advice")


def _mapped_rss_kb(path: str) -> int:
    """Resident kB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
                inside = len(head) == 6 and head[5] == path
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def test_release_drops_the_mapped_pages_and_keeps_the_data(tmp_path):
    from datasets import Dataset

    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 30_000, rng.integers(5, 40)).tolist() for _ in range(60_000)]
    Dataset.from_dict({"ids": rows}).save_to_disk(str(tmp_path / "ds"))
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "ds"))  # memory-mapped
    (path,) = mapped_pages.dataset_files(ds)
    anon = np.arange(1_000_000)  # anonymous memory that must survive the advice
    picks = rng.integers(0, len(rows), 200).tolist()
    got = ds[picks]["ids"]
    assert _mapped_rss_kb(path) > 0
    assert mapped_pages.release(ds) > 0
    assert _mapped_rss_kb(path) == 0
    assert ds[picks]["ids"] == got == [rows[i] for i in picks]  # re-faulted from the page cache
    assert anon.sum() == 999_999 * 1_000_000 // 2
    assert mapped_pages.release(Dataset.from_dict({"ids": [[1]]})) == 0  # in memory: nothing mapped
