"""The runtime's request and app lifecycle under the things callers really do: cancel a queued call (an
``asyncio.wait_for`` that times out), unregister an app that is still busy, close with calls queued, name apps
freely, and switch adapters the slow way between mixed batches."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from mtpf.runtime import Runtime, RuntimeClosedError, UnknownAppError
from mtpf.runtime.testing import make_demo_apps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_apps(tmp_path_factory.mktemp("life"), n_ner=0, n_tc=2, head_only_tc=1)


class Gate:
    """Holds the batcher inside its next batch until released, so calls pile up in the queue."""

    def __init__(self, rt):
        self.entered, self.release = threading.Event(), threading.Event()
        inner = rt._run_batch

        def held(batch):
            self.entered.set()
            self.release.wait(30)
            return inner(batch)

        rt._run_batch = held


def test_a_cancelled_call_leaves_the_batcher_serving(demo):
    backbone, apps = demo
    with Runtime(backbone, max_wait_ms=0, adaptive_wait=False) as rt:
        rt.register_app("tc0", apps["tc0"])
        want = rt.classify("tc0", ["later"])
        gate = Gate(rt)
        busy = rt.submit("tc0", "classify", ["holds the batcher"])
        assert gate.entered.wait(30)
        queued = rt.submit("tc0", "classify", ["given up on"])
        assert queued.cancel()  # what asyncio.wait_for does to the wrapped future on timeout
        gate.release.set()
        busy.result(timeout=30)
        # the batcher survived and still answers (a dead one would leave this future pending)
        assert rt.submit("tc0", "classify", ["later"]).result(timeout=30) == want
        rt.unregister_app("tc0", timeout=5)  # the cancelled call gave its in-flight count back


def test_an_unregister_that_times_out_releases_the_adapter_after_the_last_call(demo):
    backbone, apps = demo
    with Runtime(backbone, max_wait_ms=0, adaptive_wait=False) as rt:
        rt.register_app("tc0", apps["tc0"])
        gate = Gate(rt)
        busy = rt.submit("tc0", "embed", ["in flight"])
        assert gate.entered.wait(30)
        with pytest.raises(TimeoutError, match="unregistered"):
            rt.unregister_app("tc0", timeout=0.05)
        assert not rt.has_app("tc0") and rt.adapters_loaded == 1  # refused from now on; the call still runs
        with pytest.raises(UnknownAppError):
            rt.submit("tc0", "embed", ["too late"])
        gate.release.set()
        assert busy.result(timeout=30).shape == (1, 32)  # answered with its adapter
        assert rt.adapters_loaded == 0 and rt.adapters() == {}  # ... which left with that last call
        rt.register_app("tc0", apps["tc1"])  # the name is free again
        assert rt.adapters_loaded == 1


def test_close_answers_what_it_accepted_and_refuses_the_rest(demo):
    backbone, apps = demo
    rt = Runtime(backbone, max_wait_ms=0, adaptive_wait=False)
    rt.register_app("tc0", apps["tc0"])
    gate = Gate(rt)
    first = rt.submit("tc0", "classify", ["one"])
    assert gate.entered.wait(30)
    queued = [rt.submit("tc0", "classify", [f"queued {i}"]) for i in range(3)]
    closer = threading.Thread(target=rt.close)
    closer.start()
    gate.release.set()
    closer.join(60)
    assert not closer.is_alive()
    assert [len(f.result(timeout=1)) for f in [first, *queued]] == [1, 1, 1, 1]
    with pytest.raises(RuntimeClosedError):
        rt.submit("tc0", "classify", ["after close"])


def test_app_names_may_hold_dots(demo):
    backbone, apps = demo
    with Runtime(backbone, batching=False) as rt:
        rt.register_app("mail.intent.v2", apps["tc0"])  # PEFT refuses "." in adapter names; the runtime's key has none
        rt.register_app("plain", apps["tc1"])
        out = rt.embed("mail.intent.v2", ["hello world"])
    with Runtime(backbone, batching=False) as ref:
        ref.register_app("tc0", apps["tc0"])
        np.testing.assert_allclose(out, ref.embed("tc0", ["hello world"]), atol=1e-6)


def test_set_adapter_switch_keeps_mixed_batches_right_after_a_bare_backbone_call(demo):
    """switch="set_adapter" turns every LoRA layer off for an adapter-free call (a head-only app); the next mixed
    batch must turn them back on, or each row silently runs without its LoRA."""
    backbone, apps = demo
    with Runtime(backbone, batching=False, mode="mixed", switch="set_adapter") as rt:
        for name in ("tc0", "tc1", "tch0"):
            rt.register_app(name, apps[name])
        before = rt.analyze(["hello world", "reset my card"], apps=["tc0", "tc1"])
        rt.classify("tch0", ["no LoRA at all"])
        after = rt.analyze(["hello world", "reset my card"], apps=["tc0", "tc1"])
    for b, a in zip(before, after):
        for app in ("tc0", "tc1"):
            assert a[app]["probabilities"] == pytest.approx(b[app]["probabilities"], abs=1e-6)


def test_apps_leaves_out_an_app_removed_while_it_lists_them(demo, monkeypatch):
    """/health lists Runtime.apps(): an app unregistered between the copy of the names and its app_info is left
    out, not raised (a 500 during hot unregister). A registration serial tells a name's registrations apart."""
    backbone, apps = demo
    with Runtime(backbone) as rt:
        rt.register_app("stay", apps["tc0"])
        first = rt.register_app("go", apps["tc1"])["registration"]
        real = rt.app_info

        def racing(name):
            if name == "go":
                rt.unregister_app("go")
            return real(name)

        monkeypatch.setattr(rt, "app_info", racing)
        assert set(rt.apps()) == {"stay"}
        monkeypatch.setattr(rt, "app_info", real)
        again = rt.register_app("go", apps["tc1"])["registration"]
        assert again != first
        with pytest.raises(UnknownAppError, match="registered again"):
            rt.submit("go", "embed", ["x"], registration=first)
        assert rt.submit("go", "embed", ["x"], registration=again).result(timeout=60).shape[0] == 1


def test_a_request_that_fails_in_a_batch_fails_alone(demo):
    """One app's bad input must not fail the other apps' calls batched with it: a failing micro-batch is served
    again request by request. A text no tokenizer takes (a lone surrogate) is refused when submitted."""
    backbone, apps = demo
    with Runtime(backbone, max_wait_ms=0, adaptive_wait=False) as rt:
        rt.register_app("tc0", apps["tc0"])
        rt.register_app("tc1", apps["tc1"])
        want = rt.classify("tc1", ["fine"])
        with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode"):
            rt.submit("tc0", "classify", ["ok", "Anna \ud800 Smith"])
        gate = Gate(rt)  # holds the batcher so that both calls below land in one micro-batch
        real = rt._run_batch

        def failing(batch):
            if any(req.texts == ["BOOM"] for req in batch):
                raise RuntimeError("this request's input breaks the batch")
            return real(batch)

        busy = rt.submit("tc0", "classify", ["holds the batcher"])
        assert gate.entered.wait(30)
        rt._run_batch = failing
        bad, good = rt.submit("tc0", "classify", ["BOOM"]), rt.submit("tc1", "classify", ["fine"])
        gate.release.set()
        busy.result(timeout=30)
        assert good.result(timeout=30) == want
        with pytest.raises(RuntimeError, match="breaks the batch"):
            bad.result(timeout=30)
        assert rt._last_batch_requests == 2  # they were one micro-batch
