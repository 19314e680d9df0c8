"""Fair serving in front of the runtime: per-app queues, round-robin turns, chunked requests, deadlines.

The runtime batches whatever is in its queue, first come first served; one app sending 64 long texts would
hold every other app's request until all of them are done. The scheduler keeps the work in per-app queues
instead and hands the runtime only a bounded amount at a time (``inflight_chars``). Whenever room frees up it
takes one *turn* from the next app in round-robin order: texts from the head of that app's queue, at most
``chunk_chars`` of work that fits the room left in flight (a text longer than that goes alone, once nothing else
is in flight). A large request is so cut into chunks that interleave with other apps' work, and a small request
waits for about the work already in flight.

Work is measured in characters, each text counting ``text_overhead`` (512) more: a short text still costs a
forward row; a request's ``weight`` multiplies that (``/v1/analyze`` over N apps has weight N). Nothing here knows HTTP or torch: a request carries a ``run(texts) -> Future`` callable (e.g.
``lambda t: runtime.submit(app, "classify", t)``), so the unit tests drive it with hand-completed futures.

Limits: ``max_queued_texts`` per app (texts accepted but not answered; :class:`QueueFullError` above it) and a
per-request deadline (:class:`DeadlineExceededError` for a request still queued when it passes; callers also
cancel the returned future when they stop waiting, which drops its queued chunks).
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field


class QueueFullError(RuntimeError):
    """An app already has too many texts waiting (HTTP 503)."""


class DeadlineExceededError(TimeoutError):
    """The request's deadline passed before it was answered (HTTP 504)."""


def join_lists(parts: list) -> list:
    return list(itertools.chain.from_iterable(parts))


@dataclass(eq=False)
class _Request:
    key: str
    texts: Sequence[str]
    run: Callable[[list], Future]
    join: Callable[[list], object]
    charge: tuple[str, ...]
    deadline: float
    weight: int = 1  # cost multiplier of each text: an analyze request does up to one app's work per app
    future: Future = field(default_factory=Future)
    next: int = 0  # texts[:next] have been handed to the runtime
    parts: dict[int, object] = field(default_factory=dict)  # start offset -> that chunk's result
    answered: int = 0


class FairScheduler:
    def __init__(self, *, chunk_chars: int = 4096, inflight_chars: int = 4096, text_overhead: int = 512,
                 max_queued_texts: int = 256, deadline_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.chunk_chars = int(chunk_chars)
        self.inflight_chars = int(inflight_chars)
        self.text_overhead = int(text_overhead)
        self.max_queued_texts = int(max_queued_texts)
        self.deadline_s = float(deadline_s)
        self.clock = clock
        self._lock = threading.Lock()
        self._queues: dict[str, deque[_Request]] = {}
        # keys with queued work, in turn order. As in FQ-CoDel, a queue that was empty (a "new" app) gets its
        # first turn before the apps that keep the server busy, so a lone small request waits only for the work
        # already in flight.
        self._new: deque[str] = deque()
        self._old: deque[str] = deque()
        self._waiting: str | None = None  # an app whose next text waits for room in flight; it goes next
        self._queued: dict[str, int] = {}  # charged app -> texts accepted, not yet answered
        self._inflight = 0
        self._pumping = False
        self._again = False
        self.counters = {"requests": 0, "chunks": 0, "rejected_queue_full": 0, "deadline_exceeded": 0,
                         "cancelled": 0}

    def cost(self, text) -> int:
        return self.text_overhead + len(text)

    # ------------------------------------------------------------------ public
    def submit(self, key: str, texts: Sequence[str], run: Callable[[list], Future], *, join=join_lists,
               charge: Sequence[str] | None = None, deadline_s: float | None = None, weight: int = 1) -> Future:
        """Queue ``texts`` under ``key``; ``run(chunk)`` is called for each chunk and must return a Future.

        ``charge``: the apps whose queued-text limit this request counts against (default: ``key``). ``weight``:
        each text costs that many times its characters (``/v1/analyze`` over N apps: N, so one call for 8 apps
        takes the turns and the room in flight of 8 calls, not of one). The returned
        future gets ``join(chunk results in order)``, or the first exception of a chunk (the rest is dropped),
        or :class:`DeadlineExceededError`. Cancelling it drops the chunks not yet handed to the runtime.
        """
        charge = tuple(charge) if charge is not None else (key,)
        deadline = self.clock() + (self.deadline_s if deadline_s is None else float(deadline_s))
        req = _Request(key, list(texts), run, join, charge, deadline, max(1, int(weight)))
        if not req.texts:
            req.future.set_result(join([]))
            return req.future
        n = len(req.texts)
        with self._lock:
            for app in charge:
                waiting = self._queued.get(app, 0)
                if waiting + n > self.max_queued_texts:
                    self.counters["rejected_queue_full"] += 1
                    raise QueueFullError(f"app {app!r} already has {waiting} texts waiting (limit "
                                         f"{self.max_queued_texts}); retry later or send fewer texts")
            for app in charge:
                self._queued[app] = self._queued.get(app, 0) + n
            if key not in self._queues:
                self._queues[key] = deque()
                self._new.append(key)
            self._queues[key].append(req)
            self.counters["requests"] += 1
        req.future.add_done_callback(lambda f, r=req: self._on_cancel(r) if f.cancelled() else None)
        self._pump()
        return req.future

    def queued_texts(self, app: str) -> int:
        with self._lock:
            return self._queued.get(app, 0)

    def stats(self) -> dict:
        with self._lock:
            return {**self.counters, "queued_texts": dict(self._queued), "inflight_chars": self._inflight,
                    "queues": len(self._queues), "chunk_chars": self.chunk_chars,
                    "inflight_chars_limit": self.inflight_chars, "max_queued_texts": self.max_queued_texts,
                    "deadline_s": self.deadline_s}

    # ------------------------------------------------------------------ internals (lock held where noted)
    def _release(self, req: _Request, n: int) -> None:  # lock held
        for app in req.charge:
            left = self._queued.get(app, 0) - n
            if left > 0:
                self._queued[app] = left
            else:
                self._queued.pop(app, None)  # bounded: only apps with work waiting have an entry

    def _drop(self, req: _Request) -> None:  # lock held: forget the chunks not yet handed out
        q = self._queues.get(req.key)
        if q is not None and req in q:
            q.remove(req)
            if not q:
                del self._queues[req.key]
                if self._waiting == req.key:
                    self._waiting = None
                else:
                    (self._new if req.key in self._new else self._old).remove(req.key)
        self._release(req, len(req.texts) - req.next)
        req.next = len(req.texts)

    def _on_cancel(self, req: _Request) -> None:
        with self._lock:
            self.counters["cancelled"] += 1
            self._drop(req)

    def _pick(self, expired: list[_Request]) -> list[tuple[_Request, int, int, int]]:  # lock held
        """Chunks to hand out now: (request, start, end, cost), one turn per app in round-robin order.

        A turn takes texts while they fit the room left in flight (and ``chunk_chars``); its first text also when
        nothing is in flight, however long. An app whose next text does not fit yet keeps its turn and waits for
        room, and nobody overtakes it meanwhile (so a long text is never starved by a stream of short ones, and
        a short request is not batched with another app's long text that arrived after it)."""
        picked = []
        now = self.clock()
        while self._inflight < self.inflight_chars:
            if self._waiting is not None:
                key, self._waiting = self._waiting, None
            elif self._new or self._old:
                key = (self._new or self._old).popleft()
            else:
                break
            q = self._queues[key]
            room = self.inflight_chars - self._inflight
            limit = min(self.chunk_chars, room)
            used = 0  # this turn's work so far; a turn may take several small requests of the same queue
            while q:
                req = q[0]
                if req.future.done() or now >= req.deadline:
                    q.popleft()
                    if not req.future.done():
                        expired.append(req)
                    self._release(req, len(req.texts) - req.next)
                    req.next = len(req.texts)
                    continue
                start = end = req.next
                cost = 0
                while end < len(req.texts):
                    c = self.cost(req.texts[end]) * req.weight
                    if used + cost == 0:
                        fits = self._inflight == 0 or c <= room
                    else:
                        fits = used + cost + c <= limit
                    if not fits:
                        break
                    cost += c
                    end += 1
                if end == start:
                    break  # this turn is full
                picked.append((req, start, end, cost))
                used += cost
                req.next = end
                if end < len(req.texts):
                    break
                q.popleft()
            self._inflight += used
            if not q:
                del self._queues[key]
            elif used == 0:
                self._waiting = key  # its next text needs more room: it goes first once there is
                break
            else:
                self._old.append(key)
        return picked

    def _pump(self) -> None:
        """Hand out chunks while there is room. Re-entrant: a chunk finishing synchronously (or in another
        thread) during a pump makes the running pump look again instead of recursing."""
        with self._lock:
            if self._pumping:
                self._again = True
                return
            self._pumping = True
        try:
            while True:
                expired: list[_Request] = []
                with self._lock:
                    chunks = self._pick(expired)
                    self.counters["chunks"] += len(chunks)
                    self.counters["deadline_exceeded"] += len(expired)
                    if not chunks and not expired:
                        if self._again:
                            self._again = False
                            continue
                        self._pumping = False
                        return
                for req in expired:
                    _fail(req.future, DeadlineExceededError(
                        f"request deadline ({self.deadline_s:g} s) passed while it was queued; "
                        "retry later or send fewer texts"))
                for req, start, end, cost in chunks:
                    self._start(req, start, end, cost)
        except BaseException:
            with self._lock:
                self._pumping = False
            raise

    def _start(self, req: _Request, start: int, end: int, cost: int) -> None:
        try:
            fut = req.run(req.texts[start:end])
        except Exception as exc:  # noqa: BLE001 - e.g. the app was removed while this waited: fail the request
            fut = Future()
            fut.set_exception(exc)
        fut.add_done_callback(lambda f: self._finished(req, start, end, cost, f))

    def _finished(self, req: _Request, start: int, end: int, cost: int, fut: Future) -> None:
        exc = fut.exception() if not fut.cancelled() else DeadlineExceededError("chunk cancelled")
        result = None
        with self._lock:
            self._inflight -= cost
            self._release(req, end - start)
            if exc is not None:
                self._drop(req)
            else:
                req.parts[start] = fut.result()
                req.answered += end - start
                if req.answered == len(req.texts):
                    result = [req.parts[k] for k in sorted(req.parts)]
        if exc is not None:
            _fail(req.future, exc)
        elif result is not None:
            try:
                joined = req.join(result)
            except Exception as join_exc:  # noqa: BLE001
                _fail(req.future, join_exc)
            else:
                if not req.future.done():
                    try:
                        req.future.set_result(joined)
                    except InvalidStateError:  # cancelled meanwhile by the waiting caller
                        pass
        self._pump()


def _fail(fut: Future, exc: BaseException) -> None:
    if not fut.done():
        try:
            fut.set_exception(exc)
        except InvalidStateError:
            pass
