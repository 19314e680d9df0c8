"""Input pipeline of pre-finetuning: batch k of each task built from the token caches in DataLoader workers.

Each task's batches come from a ``torch.utils.data.DataLoader`` over ``BatchStream``, an IterableDataset
whose worker w yields batches k = start + w, start + w + W, ... (the DataLoader hands them out in order).
Batch k is a pure function of (seed, k) (see ``mtpf.data.samplers``), so the batches prefetched by workers
never enter the checkpoint: a resumed run starts its loaders at k = steps done x micro-batches per step.
Workers gather int ids from memory-mapped Arrow, pad (to a multiple of 8 on CUDA, for tensor cores; to the
longest row on the CPU, where every padded position costs as much as a real one: 10-token texts padded to 16
cost 1.6x) and, for the contrastive task, sort by length and cut chunks; the main process only copies pinned
tensors to the device. A streaming source (``StreamWindows``) is the exception: it can only be read forward, so
its batches are read and tokenised once per process by a ``StreamFeeder`` thread, and the workers hand over a
placeholder for them.
"""
from __future__ import annotations

import copy
import queue
import threading

import torch

from mtpf.data import mapped_pages
from mtpf.data.io import DataError
from mtpf.data.samplers import pad_batch


def pad_multiple(device) -> int:
    """Padding granule of a batch for ``device``: 8 on CUDA (tensor-core shapes, fewer distinct shapes to
    warm), 1 elsewhere."""
    return 8 if str(device).startswith("cuda") else 1


def rank_slice(items: list, rank: int, world: int) -> list:
    per = len(items) // world
    return items[rank * per : (rank + 1) * per]


def length_chunks(ids: list[list[int]], size: int | None, pad_id: int, multiple_of: int = 8):
    """Sort by length (less padding per chunk), cut into GradCache chunks, pad each; returns (chunks,
    order, tokens): row k of the concatenated chunks is example ``order[k]``."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    size = size or len(ids)
    chunks = [pad_batch([ids[i] for i in order[s : s + size]], pad_id, multiple_of=multiple_of)
              for s in range(0, len(order), size)]
    return chunks, torch.tensor(order), sum(len(x) for x in ids)


def budget_chunks(ids: list[list[int]], budget: int, pad_id: int, multiple_of: int = 1):
    """Sort by length and cut into chunks of at most ``budget`` padded tokens (at least one text each): short
    texts share big chunks, long ones get small chunks, so padding stays low without many tiny matmuls.
    Returns (chunks, order): row k of the concatenated chunks is example ``order[k]``."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= budget:
            end += 1
        chunks.append(pad_batch([ids[i] for i in order[start:end]], pad_id, multiple_of=multiple_of))
        start = end
    return chunks, torch.tensor(order)


class StreamWindows:
    """Rows of a streaming source (``IterableDataset``, never downloaded whole): its j-th batch reads window
    ``[j*S, (j+1)*S)`` of the buffer-shuffled stream (``S`` = batch + slack for in-batch duplicates), tokenised
    by the reader. Windows are a pure function of j; reaching window j reads past the earlier ones (a resumed
    run skips them: a sequential read, not memory), so one reader per process reads them in order
    (``StreamFeeder``). At the end of the stream the next epoch starts with another shuffle seed."""

    def __init__(self, name, data, batch: int, seed: int, tokenizer, max_length: int, buffer_size: int = 10_000):
        self.name, self.data, self.batch, self.seed = name, data, batch, seed
        self.tokenizer, self.max_length, self.buffer_size = tokenizer, max_length, buffer_size
        self.size = batch + max(8, batch // 4)
        self._it, self._pos, self._epoch = None, 0, 0
        self.rows_read = 0  # every row this reader took from the stream, skipped ones included

    def _restart(self, epoch: int) -> None:
        shuffled = self.data.shuffle(seed=self.seed + epoch, buffer_size=self.buffer_size)
        # ``.iter(batch_size)``, not ``iter()``: inside a DataLoader worker, datasets' ``__iter__`` reads only that
        # worker's share of the source's files (and shifts the shuffle by the worker id), so window j would
        # depend on num_workers, and a one-file source would fail with several workers.
        self._it = (dict(zip(rows, values)) for rows in shuffled.iter(batch_size=256)
                    for values in zip(*rows.values()))
        self._epoch = epoch

    def _next_row(self) -> dict:
        for _ in range(2):
            row = next(self._it, None)
            if row is not None:
                self._pos += 1
                self.rows_read += 1
                return row
            self._restart(self._epoch + 1)
        raise DataError(self.name, None, "streaming pair source is empty")

    def window(self, j: int) -> list[tuple[list[int], list[int]]]:
        start = j * self.size
        if self._it is None or self._pos > start:
            self._restart(0)
            self._pos = 0
        while self._pos < start:
            self._next_row()
        rows = [self._next_row() for _ in range(self.size)]
        texts = [(r["anchor"], r["positive"]) for r in rows
                 if isinstance(r["anchor"], str) and isinstance(r["positive"], str)
                 and r["anchor"].strip() and r["positive"].strip()]
        if not texts:
            return []
        kw = {"truncation": True, "max_length": self.max_length}
        a = self.tokenizer([t[0] for t in texts], **kw)["input_ids"]
        p = self.tokenizer([t[1] for t in texts], **kw)["input_ids"]
        return list(zip(a, p))


class PairBatches:
    """Contrastive batch k: sampler rows -> this process's slice -> chunks to embed.

    ``chunk_tokens`` (no GradCache): anchors and positives sorted together and cut by ``budget_chunks``
    (``chunks``, ``order``, ``n_anchor``); otherwise each side is sorted and cut into ``mini_batch`` texts per
    chunk, or one chunk (``a_chunks``/``p_chunks``, ``a_order``/``p_order``)."""

    def __init__(self, tokens: dict, sampler, mini_batch: int | None, pad_id: int, rank: int = 0, world: int = 1,
                 streams: dict | None = None, multiple_of: int = 8, chunk_tokens: int | None = None):
        self.tokens, self.sampler = tokens, sampler  # tokens: source name -> Dataset {a_ids, p_ids}
        self.mini_batch, self.pad_id, self.rank, self.world = mini_batch, pad_id, rank, world
        self.streams = streams or {}  # source name -> StreamWindows
        self.multiple_of, self.chunk_tokens = multiple_of, chunk_tokens
        self.deferred = False  # True: a streamed batch k is a placeholder, built by a StreamFeeder

    def stream_batch(self, k: int, name: str, j: int, streams: dict | None = None) -> dict:
        """Batch k, the j-th of streamed source ``name``: window j with in-batch duplicates dropped."""
        chosen, got, seen = [], {}, set()
        for pos, (a, p) in enumerate((streams or self.streams)[name].window(j)):
            ka, kp = tuple(a), tuple(p)
            if ka in seen or kp in seen or ka == kp:
                continue
            seen.update((ka, kp))
            got[pos] = (a, p)
            chosen.append(pos)
            if len(chosen) == self.sampler.batch_size:
                return self._assemble(k, name, chosen, got)
        raise DataError(f"pair source {name}", None, f"cannot fill a batch of {self.sampler.batch_size} pairs "
                        "without repeating a text; lower tc_batch_size or drop the source")

    def __call__(self, k: int) -> dict:
        si, j = self.sampler.plan(k)
        name = self.sampler.names[si]
        if name in self.streams:
            return {"k": k, "stream": name, "j": j} if self.deferred else self.stream_batch(k, name, j)
        got: dict[int, tuple] = {}

        def keys(source: str, rows):
            found = self.tokens[source][rows.tolist()]
            pairs = list(zip(found["a_ids"], found["p_ids"]))
            got.update(zip(rows.tolist(), pairs))
            # Deduplicate on token ids: equal texts give equal ids, and equal ids are the same model input.
            return [(tuple(a), tuple(p)) for a, p in pairs]

        name, rows = self.sampler.batch(k, keys)
        return self._assemble(k, name, rows, got)

    def _assemble(self, k: int, name: str, rows: list[int], got: dict) -> dict:
        """This process's slice of the batch's rows, sorted by length and cut into padded chunks."""
        mine = rank_slice(rows, self.rank, self.world)
        a, p = [got[r][0] for r in mine], [got[r][1] for r in mine]
        if name in self.tokens:
            mapped_pages.release(self.tokens[name])  # RSS bounded by the batch (see mtpf.data.mapped_pages)
        if self.chunk_tokens:
            chunks, order = budget_chunks(a + p, self.chunk_tokens, self.pad_id, self.multiple_of)
            return {"k": k, "source": name, "rows": mine, "chunks": chunks, "order": order, "n_anchor": len(a),
                    "tokens": sum(len(x) for x in a + p)}
        a_chunks, a_order, a_tok = length_chunks(a, self.mini_batch, self.pad_id, self.multiple_of)
        p_chunks, p_order, p_tok = length_chunks(p, self.mini_batch, self.pad_id, self.multiple_of)
        return {"k": k, "source": name, "rows": mine, "a_chunks": a_chunks, "a_order": a_order,
                "p_chunks": p_chunks, "p_order": p_order, "tokens": a_tok + p_tok}


class StreamFeeder:
    """The streamed sources' batches, read and tokenised once per process, in order, in one background thread.

    A stream can only be read forward: when DataLoader workers built these batches, each worker read past the
    windows of all the others (W workers, W reads of the stream; at the paper's scale, 4 workers on each of 8
    GPUs would download ~375 GB for ~12 GB used). Here the workers hand over a placeholder for a streamed batch
    k (``PairBatches.deferred``); this thread follows the same sampler plan from ``start``, reads each window
    once into a queue of ``depth`` ready batches (pinned for CUDA), and ``get(k)`` returns batch k. The batches
    are those ``PairBatches`` builds itself (``tests/test_pair_sources_and_cache.py``). The thread has its own
    copies of the sampler and the tokenizer: a fast tokenizer must not be used by two threads at once.
    """

    def __init__(self, batches: PairBatches, start: int, depth: int = 4, pin: bool = False):
        self.batches, self.sampler, self.pin = batches, copy.deepcopy(batches.sampler), pin
        tokenizer = None
        self.streams = {}
        for name, s in batches.streams.items():
            if self.sampler.probs[self.sampler.names.index(name)] <= 0:
                continue  # never drawn (explicit weight 0): nothing to read, and nothing to wait for
            tokenizer = tokenizer or copy.deepcopy(s.tokenizer)
            self.streams[name] = StreamWindows(name, s.data, s.batch, s.seed, tokenizer, s.max_length,
                                               s.buffer_size)
        self.queue: queue.Queue = queue.Queue(depth)
        self.built = 0  # batches this feeder made (read ahead of the training loop by at most depth + 1)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(start,), name="mtpf-stream-feeder", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, k: int) -> None:
        try:
            while self.streams and not self._stop.is_set():
                si, j = self.sampler.plan(k)
                name = self.sampler.names[si]
                if name in self.streams:
                    batch = self.batches.stream_batch(k, name, j, self.streams)
                    self.built += 1
                    if self.pin:
                        batch = map_tensors(batch, torch.Tensor.pin_memory)
                    if not self._put((k, batch)):
                        return
                k += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the training loop, which raises it
            self._put((None, exc))

    def get(self, k: int) -> dict:
        got, batch = self.queue.get()
        if got is None:
            raise batch
        if got != k:
            raise RuntimeError(f"stream feeder out of step: batch {got} arrived for batch {k}")
        return batch

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


class NerBatches:
    """Token-CE batch k: length-bucketed rows -> this process's slice -> padded ids and labels."""

    def __init__(self, data, sampler, pad_id: int, rank: int = 0, world: int = 1, multiple_of: int = 8):
        self.data, self.sampler, self.pad_id, self.rank, self.world = data, sampler, pad_id, rank, world
        self.multiple_of = multiple_of
        self.pack = False  # padding-free rows (mtpf.pretrain.cpu_speed), set when the model supports them

    def __call__(self, k: int) -> dict:
        rows = rank_slice(self.sampler.batch(k), self.rank, self.world)
        got = self.data[rows]
        if self.pack:
            from mtpf.pretrain.cpu_speed import pack_batch

            batch = pack_batch(got["input_ids"], got["labels"])
        else:
            batch = pad_batch(got["input_ids"], self.pad_id, got["labels"], multiple_of=self.multiple_of)
        mapped_pages.release(self.data)
        return {"k": k, "rows": rows, "batch": batch, "tokens": sum(len(x) for x in got["input_ids"])}


class BatchStream(torch.utils.data.IterableDataset):
    def __init__(self, make, start: int):
        self.make, self.start = make, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        k = self.start + wid
        while True:
            yield self.make(k)
            k += workers


def batch_loader(make, start: int, num_workers: int, pin_memory: bool):
    # Its own generator: a DataLoader iterator draws a base seed, which must not advance the global RNG (the
    # dropout stream that a resumed run restores from the checkpoint).
    return torch.utils.data.DataLoader(
        BatchStream(make, start), batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
        generator=torch.Generator().manual_seed(start))


def map_tensors(obj, fn):
    """``fn`` applied to every tensor of nested dicts/lists; other leaves as they are."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [map_tensors(v, fn) for v in obj]
    return obj


def to_device(obj, device):
    """Nested dicts/lists of tensors to ``device``; non-blocking (the loader pinned them on CUDA)."""
    return map_tensors(obj, lambda t: t.to(device, non_blocking=True))
