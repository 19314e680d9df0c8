"""FairScheduler without HTTP or a model: futures completed by hand, so every assertion is on order, not time."""
from __future__ import annotations

from concurrent.futures import Future

import pytest

from mtpf.runtime.scheduler import DeadlineExceededError, FairScheduler, QueueFullError


class FakeRuntime:
    """``run`` callables whose futures the test completes; results echo the texts upper-cased."""

    def __init__(self):
        self.pending: list[tuple[str, list[str], Future]] = []
        self.log: list[tuple[str, int]] = []  # (key, texts) in order of completion

    def runner(self, key):
        def run(texts):
            fut = Future()
            self.pending.append((key, list(texts), fut))
            return fut
        return run

    def complete_next(self):
        key, texts, fut = self.pending.pop(0)
        self.log.append((key, len(texts)))
        fut.set_result([t.upper() for t in texts])

    def drain(self, limit=1000):
        for _ in range(limit):
            if not self.pending:
                return
            self.complete_next()
        raise AssertionError("scheduler kept dispatching")


def texts(prefix, n, width=10):
    return [f"{prefix}{i}".ljust(width, ".") for i in range(n)]


def make(**kw):
    # every text costs 10; a turn is at most 2 texts; one turn in flight at a time
    return FairScheduler(**{"chunk_chars": 20, "inflight_chars": 20, "text_overhead": 0, **kw})


def test_small_request_is_served_between_chunks_of_a_large_one():
    rt, s = FakeRuntime(), make()
    big = s.submit("A", texts("a", 10), rt.runner("A"))
    assert [(k, len(t)) for k, t, _ in rt.pending] == [("A", 2)]  # only one chunk handed to the runtime
    small = [s.submit("B", texts("b", 1), rt.runner("B")) for _ in range(3)]
    rt.drain()
    # B (a new queue) gets the next turn after A's chunk in flight: two of its 1-text requests fit the turn;
    # then A and B alternate, each turn cut to the room left in flight
    assert rt.log[:5] == [("A", 2), ("B", 1), ("B", 1), ("A", 1), ("B", 1)]
    assert sum(n for k, n in rt.log if k == "A") == 10 and max(n for _, n in rt.log) == 2
    assert big.result() == [t.upper() for t in texts("a", 10)]  # chunks joined in order
    assert [f.result() for f in small] == [[t.upper()] for t in texts("b", 1)] * 3
    assert s.stats()["queued_texts"] == {} and s.stats()["inflight_chars"] == 0


def test_round_robin_over_three_apps_and_inflight_budget():
    rt, s = FakeRuntime(), make(inflight_chars=40)
    for key in "ABC":
        s.submit(key, texts(key.lower(), 4), rt.runner(key))
    # A was alone: its two turns filled the 40 chars in flight; B and C wait for room, then take turns
    assert [(k, len(t)) for k, t, _ in rt.pending] == [("A", 2), ("A", 2)]
    rt.drain()
    assert [k for k, _ in rt.log] == ["A", "A", "B", "C", "B", "C"]


def test_long_text_is_one_chunk_and_a_turn_takes_at_least_one_text():
    rt, s = FakeRuntime(), make()
    fut = s.submit("A", ["x" * 100, "y" * 5, "z" * 5], rt.runner("A"))
    assert [len(t) for _, t, _ in rt.pending] == [1]
    rt.drain()
    assert rt.log == [("A", 1), ("A", 2)] and fut.result() == ["X" * 100, "Y" * 5, "Z" * 5]


def test_queue_limit_per_app_then_released():
    rt, s = FakeRuntime(), make(max_queued_texts=5)
    s.submit("A", texts("a", 4), rt.runner("A"))
    with pytest.raises(QueueFullError, match="'A' already has 4 texts waiting"):
        s.submit("A", texts("a", 2), rt.runner("A"))
    s.submit("B", texts("b", 5), rt.runner("B"))  # another app is not affected
    with pytest.raises(QueueFullError):  # a request charged to several apps counts against each
        s.submit("A+B", texts("c", 1), rt.runner("A+B"), charge=("A", "B"))
    rt.drain()
    s.submit("A", texts("a", 5), rt.runner("A"))  # answered texts no longer count
    assert s.stats()["rejected_queue_full"] == 2


def test_deadline_fails_a_queued_request_without_running_it():
    now = [0.0]
    rt, s = FakeRuntime(), make(deadline_s=5.0, clock=lambda: now[0])
    a = s.submit("A", texts("a", 2), rt.runner("A"))
    b = s.submit("B", texts("b", 2), rt.runner("B"))
    now[0] = 6.0  # B's deadline passes while A's chunk is in the runtime
    rt.complete_next()
    assert a.result() == [t.upper() for t in texts("a", 2)]
    with pytest.raises(DeadlineExceededError, match="deadline"):
        b.result(timeout=0)
    assert rt.pending == [] and rt.log == [("A", 2)]  # B never reached the runtime
    assert s.stats()["deadline_exceeded"] == 1 and s.stats()["queued_texts"] == {}


def test_cancel_drops_the_rest_of_a_request():
    rt, s = FakeRuntime(), make()
    big = s.submit("A", texts("a", 10), rt.runner("A"))
    assert big.cancel()  # e.g. the HTTP client gave up
    other = s.submit("B", texts("b", 1), rt.runner("B"))
    rt.drain()
    assert rt.log == [("A", 2), ("B", 1)]  # only A's chunk already in flight ran
    assert other.result() == ["B0........"] and s.stats()["queued_texts"] == {}


def test_a_failing_chunk_fails_its_request_only():
    rt, s = FakeRuntime(), make()

    def gone(_texts):
        raise LookupError("no app named 'A'")

    a = s.submit("A", texts("a", 6), gone)
    b = s.submit("B", texts("b", 3), rt.runner("B"))
    rt.drain()
    with pytest.raises(LookupError, match="no app named"):
        a.result(timeout=0)
    assert b.result(timeout=0) == [t.upper() for t in texts("b", 3)]
    assert s.stats()["queued_texts"] == {}


def test_synchronous_runner_does_not_recurse():
    """A run() whose future is already done (Runtime(batching=False)) re-enters the scheduler: it must loop."""
    s = make(chunk_chars=10, inflight_chars=10, max_queued_texts=5000)

    def run(chunk):
        fut = Future()
        fut.set_result(list(chunk))
        return fut

    many = texts("t", 3000)
    assert s.submit("A", many, run).result(timeout=0) == many


def test_long_text_waits_for_room_and_is_not_overtaken():
    """A long text is not batched with a short request that came first, and short requests arriving while it
    waits for room do not overtake it (no starvation)."""
    rt, s = FakeRuntime(), make()
    s.submit("A", ["x" * 100, "y" * 100], rt.runner("A"))
    s.submit("B", ["b" * 5], rt.runner("B"))
    rt.complete_next()  # A's first long text
    assert [k for k, _, _ in rt.pending] == ["B"]  # A's second text does not fit next to B's: it waits
    s.submit("C", ["c" * 5], rt.runner("C"))  # would fit, but A waits first
    assert [k for k, _, _ in rt.pending] == ["B"]
    rt.drain()
    assert [k for k, _ in rt.log] == ["A", "B", "A", "C"]


def test_a_weighted_request_takes_the_room_of_that_many_calls():
    """An analyze request over 2 apps (weight 2) costs each text twice: its chunks hold half the texts, and an
    app with a plain request gets a turn after each of them."""
    rt, s = FakeRuntime(), make()
    both = s.submit("A+B", texts("x", 4), rt.runner("A+B"), charge=("A", "B"), weight=2)
    assert [len(t) for _, t, _ in rt.pending] == [1]  # 2 x 10 chars fill the 20-char turn with one text
    single = s.submit("C", texts("c", 2), rt.runner("C"))
    rt.drain()
    assert rt.log == [("A+B", 1), ("C", 2), ("A+B", 1), ("A+B", 1), ("A+B", 1)]
    assert both.result() == [t.upper() for t in texts("x", 4)] and len(single.result()) == 2
    assert s.stats()["inflight_chars"] == 0
