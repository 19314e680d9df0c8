"""HTTP service: endpoints, keys, validation (4xx, never 500), metrics, and a bounded concurrent load."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from mtpf.runtime import Runtime
from mtpf.runtime.keys import ADMIN, KeyStore
from mtpf.runtime.server import Limits, create_app, serve_in_thread
from mtpf.runtime.testing import make_demo_apps

TEXTS = ["Barack Obama visited Berlin and Paris last week.", "How do I reset my card PIN?"]



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    backbone, apps = make_demo_apps(root)
    rt = Runtime(backbone, max_wait_ms=2, max_batch_size=32)
    keys = KeyStore(root / "keys.json")
    issued = {}
    for name in ("ner0", "tc0", "tch0"):
        rt.register_app(name, apps[name])
        issued[name] = keys.issue(name)
    issued[ADMIN] = keys.issue(ADMIN)
    app = create_app(rt, keys, Limits(max_texts=8, max_text_chars=200, max_body_bytes=20000), admin=True)
    yield {"app": app, "rt": rt, "keys": issued, "apps": apps, "root": root, "backbone": backbone}
    rt.close()


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    with TestClient(service["app"], raise_server_exceptions=False) as c:
        yield c


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_endpoints(service, client):
    k = service["keys"]
    r = client.post("/v1/apps/ner0/entities", json={"texts": TEXTS}, headers=bearer(k["ner0"]))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 2
    for text, spans in zip(TEXTS, res):
        for s in spans:
            assert text[s["start"]:s["end"]] == s["text"] and {"type", "score"} <= set(s)
    r = client.post("/v1/apps/tc0/classify", json={"texts": TEXTS}, headers={"X-API-Key": k["tc0"]})
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert out[0]["label"] in out[0]["probabilities"]
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    r = client.post("/v1/apps/tch0/embed", json={"texts": TEXTS}, headers=bearer(k["tch0"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 32 and np.asarray(body["embeddings"]).shape == (2, 32)
    np.testing.assert_allclose(body["embeddings"], service["rt"].embed("tch0", TEXTS), atol=1e-6)
    assert client.get("/v1/apps/tc0", headers=bearer(k["tc0"])).json()["labels"] == ["negative", "neutral",
                                                                                         "positive"]
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["apps"] == {"ner0": "ner", "tc0": "tc", "tch0": "tc"}
    schema = client.get("/openapi.json").json()
    assert {"/v1/apps/{app}/entities", "/v1/apps/{app}/classify", "/v1/apps/{app}/embed", "/health",
            "/metrics"} <= set(schema["paths"])
    m = client.get("/metrics").json()
    assert m["requests"]["total"] >= 3 and "p95_ms" in m["latency"]["classify"]
    assert m["batches"]["batches"] >= 3 and m["batches"]["rows_histogram"]


@pytest.mark.parametrize("case", ["missing", "wrong", "other_app", "unknown_app", "too_many", "too_long",
                                  "too_big", "malformed", "wrong_shape", "wrong_task", "not_a_list"])
def test_errors_are_4xx_with_message(service, client, case):
    k = service["keys"]
    url, headers, kwargs = "/v1/apps/tc0/classify", bearer(k["tc0"]), {"json": {"texts": ["hi"]}}
    expect = {"missing": 401, "wrong": 401, "other_app": 403, "unknown_app": 404, "too_many": 413, "too_long": 413,
              "too_big": 413, "malformed": 400, "wrong_shape": 422, "wrong_task": 400, "not_a_list": 422}[case]
    if case == "missing":
        headers = {}
    elif case == "wrong":
        headers = bearer("mtpf_" + "x" * 43)
    elif case == "other_app":
        headers = bearer(k["ner0"])
    elif case == "unknown_app":
        url = "/v1/apps/nope/classify"
    elif case == "too_many":
        kwargs = {"json": {"texts": ["hi"] * 9}}
    elif case == "too_long":
        kwargs = {"json": {"texts": ["a" * 201]}}
    elif case == "too_big":
        kwargs = {"content": b'{"texts": ["' + b"a" * 30000 + b'"]}', "headers": {"Content-Type": "application/json"}}
    elif case == "malformed":
        kwargs = {"content": b'{"texts": ["unterminated', "headers": {"Content-Type": "application/json"}}
    elif case == "wrong_shape":
        kwargs = {"json": {"sentences": ["hi"]}}
    elif case == "wrong_task":
        url, headers = "/v1/apps/ner0/classify", bearer(k["ner0"])
    elif case == "not_a_list":
        kwargs = {"json": {"texts": "hi"}}
    if "headers" in kwargs:
        kwargs["headers"].update(headers)
    else:
        kwargs["headers"] = headers
    r = client.post(url, **kwargs)
    assert r.status_code == expect, (case, r.status_code, r.text)
    assert r.json()["detail"]


def test_keys_hashed_at_rest(service):
    stored = (service["root"] / "keys.json").read_text()
    for key in service["keys"].values():
        assert key not in stored
    data = json.loads(stored)
    assert set(data["keys"]["tc0"]) == {"salt", "sha256", "created"}


def test_admin_hot_register(service, client):
    k = service["keys"]
    body = {"name": "hot", "adapter_dir": service["apps"]["tc1"]}
    assert client.post("/v1/admin/apps", json=body, headers=bearer(k["tc0"])).status_code == 403
    r = client.post("/v1/admin/apps", json=body, headers=bearer(k[ADMIN]))
    assert r.status_code == 200, r.text
    key = r.json()["api_key"]
    assert client.post("/v1/apps/hot/embed", json={"texts": ["x"]}, headers=bearer(key)).status_code == 200
    assert client.post("/v1/admin/apps", json=body, headers=bearer(k[ADMIN])).status_code == 400  # duplicate
    bad = {"name": "bad", "adapter_dir": str(service["root"])}
    assert client.post("/v1/admin/apps", json=bad, headers=bearer(k[ADMIN])).status_code == 400
    r = client.delete("/v1/admin/apps/hot", headers=bearer(k[ADMIN]))
    assert r.status_code == 200 and r.json() == {"name": "hot", "removed": True, "draining": False}
    assert client.post("/v1/apps/hot/embed", json={"texts": ["x"]}, headers=bearer(key)).status_code == 404
    assert client.delete("/v1/admin/apps/hot", headers=bearer(k[ADMIN])).status_code == 404
    # the admin key's own entry cannot be taken (or replaced) by an app of that name
    r = client.post("/v1/admin/apps", json={"name": ADMIN, "adapter_dir": service["apps"]["tc1"]},
                    headers=bearer(k[ADMIN]))
    assert r.status_code == 400 and "reserved" in r.json()["detail"]
    assert not service["rt"].has_app(ADMIN)
    assert client.get("/v1/apps/tc0", headers=bearer(k[ADMIN])).status_code == 200  # the admin key still works


def test_concurrent_load_on_loopback(service):
    """500 requests from 20 concurrent clients over a real socket: no error, none lost, none mixed up."""
    import httpx

    k = service["keys"]
    rt = service["rt"]
    texts = [f"Request number {i} from Paris about card {i % 7}" for i in range(500)]
    jobs = [("tc0" if i % 3 == 0 else "tch0" if i % 3 == 1 else "ner0", texts[i]) for i in range(500)]
    expected = {}
    for app in ("tc0", "tch0", "ner0"):  # ground truth, computed outside the service in large batches
        mine = [text for a, text in jobs if a == app]
        outs = rt.extract_entities(app, mine) if app == "ner0" else rt.embed(app, mine)
        expected.update(zip(mine, outs))
    results, failures = {}, []
    lock = threading.Lock()
    t0 = time.perf_counter()
    with serve_in_thread(service["app"]) as url:
        def worker(w):
            with httpx.Client(base_url=url, timeout=60) as http:
                for i in range(w, 500, 20):
                    app, text = jobs[i]
                    op = "entities" if app == "ner0" else "embed"
                    try:
                        r = http.post(f"/v1/apps/{app}/{op}", json={"texts": [text]}, headers=bearer(k[app]))
                    except Exception as exc:  # noqa: BLE001
                        with lock:
                            failures.append(repr(exc))
                        continue
                    with lock:
                        if r.status_code != 200:
                            failures.append((r.status_code, r.text))
                        else:
                            body = r.json()
                            results[i] = body["results"][0] if op == "entities" else body["embeddings"][0]

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    print(f"500 requests / 20 clients on loopback: {time.perf_counter() - t0:.1f}s, {rt.stats()}")
    assert not failures, failures[:3]
    assert len(results) == 500
    for i, out in results.items():
        app, text = jobs[i]
        if app == "ner0":
            assert [(s["type"], s["start"], s["end"]) for s in out] == \
                [(s["type"], s["start"], s["end"]) for s in expected[text]]
        else:
            np.testing.assert_allclose(out, expected[text], atol=1e-5)
    assert rt.stats()["batch_rows_max"] > 1  # concurrency really was micro-batched


def test_serve_cli_wires_everything(service, tmp_path, monkeypatch, capsys):
    """`mtpf serve` binds 127.0.0.1, registers the apps, issues keys (stored hashed) and serves the app."""
    from fastapi.testclient import TestClient

    from mtpf.cli import main
    from mtpf.runtime import cli as serve_cli

    seen = {}

    def fake_serve(app, sock):
        seen.update(app=app, addr=sock.getsockname())
        with TestClient(app) as c:
            seen["health"] = c.get("/health").json()
            seen["ok"] = c.post("/v1/apps/intent/classify", json={"texts": ["hi"]},
                                headers={"X-API-Key": "given-key-0123456789"}).status_code

    monkeypatch.setattr(serve_cli, "_serve_socket", fake_serve)
    keys = tmp_path / "keys.json"
    rc = main(["serve", "--backbone", service["backbone"], "--app", f"ner={service['apps']['ner0']}",
               "--app", f"intent={service['apps']['tc0']}", "--api-key", "intent=given-key-0123456789",
               "--keys", str(keys), "--port", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "API key for app ner: mtpf_" in out and "intent:" not in out.split("mtpf serve:")[0].replace(
        "API key for app ner", "")
    assert seen["addr"][0] == "127.0.0.1" and seen["health"]["apps"] == {"ner": "ner", "intent": "tc"}
    assert seen["ok"] == 200
    assert "given-key-0123456789" not in keys.read_text()
    # a foreign adapter is refused at start-up with a clear message, exit code 2, and no key is issued for
    # the good app listed before it
    from mtpf.runtime.testing import make_app_adapter
    from mtpf.testing import make_tiny_encoder

    foreign = make_app_adapter(tmp_path / "foreign", make_tiny_encoder(tmp_path / "other", seed=3), "tc")
    before = keys.read_bytes()
    assert main(["serve", "--backbone", service["backbone"], "--app", f"new={service['apps']['tc1']}",
                 "--app", f"x={foreign}", "--keys", str(keys), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert "trained on backbone" in captured.err and "API key" not in captured.out
    assert keys.read_bytes() == before


# ----------------------------------------------------------------------------- analyze, fairness, limits
def bearer_many(*keys):
    return {"X-API-Key": ",".join(keys)}


def test_analyze_many_apps_one_call(service, client):
    k, rt = service["keys"], service["rt"]
    r = client.post("/v1/analyze", json={"texts": TEXTS, "apps": ["ner0", "tc0"]},
                    headers=bearer_many(k["ner0"], k["tc0"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["apps"] == ["ner0", "tc0"] and len(body["results"]) == 2
    if hasattr(rt, "analyze"):
        expected = rt.analyze(TEXTS, apps=["ner0", "tc0"])
        assert [set(x) for x in body["results"]] == [set(x) for x in expected]
    else:
        spans, labels = rt.extract_entities("ner0", TEXTS), rt.classify("tc0", TEXTS)
        for got, s, c in zip(body["results"], spans, labels):
            assert [(e["type"], e["start"], e["end"]) for e in got["ner0"]] == [(e["type"], e["start"], e["end"])
                                                                               for e in s]
            assert got["tc0"]["label"] == c["label"]
    # the admin key opens every app; Bearer and X-API-Key may be combined
    r = client.post("/v1/analyze", json={"texts": TEXTS[:1], "apps": ["tc0", "tch0"]}, headers=bearer(k[ADMIN]))
    assert r.status_code == 200, r.text
    r = client.post("/v1/analyze", json={"texts": TEXTS[:1], "apps": ["tc0", "tch0"]},
                    headers={**bearer(k["tc0"]), "X-API-Key": k["tch0"]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case,expect", [("other_app", 403), ("one_of_two", 403), ("unknown", 404),
                                         ("missing", 401), ("invalid", 401), ("no_apps", 422), ("too_many", 413),
                                         ("too_many_keys", 400)])
def test_analyze_auth(service, client, case, expect):
    k = service["keys"]
    body, headers = {"texts": ["hi"], "apps": ["tc0"]}, bearer(k["ner0"])  # other_app: A's key asks for B
    if case == "one_of_two":
        body["apps"], headers = ["ner0", "tc0"], bearer(k["ner0"])
    elif case == "unknown":
        body["apps"], headers = ["tc0", "nope"], bearer(k["tc0"])
    elif case == "missing":
        headers = {}
    elif case == "invalid":
        headers = bearer_many(k["tc0"], "mtpf_" + "y" * 43)
    elif case == "no_apps":
        body["apps"], headers = [], bearer(k["tc0"])
    elif case == "too_many":
        body["texts"], headers = ["hi"] * 9, bearer(k["tc0"])
    elif case == "too_many_keys":  # each key sent is hashed once per app: a list is capped at the apps' limit
        headers = bearer_many(k["tc0"], *(f"mtpf_{i:043d}" for i in range(40)))
    r = client.post("/v1/analyze", json=body, headers=headers)
    assert r.status_code == expect, r.text
    assert r.json()["detail"]


class Gated:
    """A service on the shared runtime with its own scheduler, whose in-flight room a blocker holds until
    ``release()``: requests queue up in a known order, nothing depends on timing."""

    def __init__(self, service, **sched_kw):
        from mtpf.runtime.scheduler import FairScheduler

        self.rt = service["rt"]
        self.keys = KeyStore()
        self.admin = self.keys.issue(ADMIN)
        self.sched = FairScheduler(**{"text_overhead": 0, "chunk_chars": 1, "inflight_chars": 1, **sched_kw})
        self.gate = Future()
        self.sched.submit("blocker", ["x"], lambda _t: self.gate)
        self.app = create_app(self.rt, self.keys, Limits(max_texts=16, max_text_chars=500), admin=True,
                              scheduler=self.sched)

    def wait_queued(self, app, n):
        for _ in range(3000):  # a hang guard, not a timing assertion
            if self.sched.queued_texts(app) == n:
                return
            time.sleep(0.01)
        raise AssertionError(f"{app} never had {n} texts queued: {self.sched.stats()}")

    def release(self):
        self.gate.set_result(["x"])


def _post_in_thread(url, path, body, headers, out, key):
    import httpx

    def go():
        with httpx.Client(base_url=url, timeout=120) as http:
            out[key] = http.post(path, json=body, headers=headers)

    t = threading.Thread(target=go)
    t.start()
    return t


def test_fair_small_requests_served_between_chunks_of_a_large_one(service):
    """App ner0 sends 8 texts, app tc0 three 1-text requests: tc0's requests complete between ner0's chunks
    (order of completion, not time), and ner0's chunked answer equals the unchunked one."""
    g = Gated(service)
    completed = []
    real_submit = g.rt.submit

    class Logged:
        def __getattr__(self, name):
            return getattr(g.rt, name)

        def submit(self, app, op, texts):
            fut = real_submit(app, op, texts)
            fut.add_done_callback(lambda _f: completed.append((app, len(texts))))
            return fut

    g.app = create_app(Logged(), g.keys, Limits(max_texts=16, max_text_chars=500), admin=True, scheduler=g.sched)
    big = [f"Angela Merkel met Barack Obama in Berlin, request part {i}." for i in range(8)]
    out = {}
    with serve_in_thread(g.app) as url:
        threads = [_post_in_thread(url, "/v1/apps/ner0/entities", {"texts": big}, bearer(g.admin), out, "big")]
        g.wait_queued("ner0", 8)
        for i in range(3):
            threads.append(_post_in_thread(url, "/v1/apps/tc0/classify", {"texts": [f"small {i}"]},
                                           bearer(g.admin), out, f"small{i}"))
        g.wait_queued("tc0", 3)
        g.release()
        for t in threads:
            t.join(timeout=120)
    assert {k: r.status_code for k, r in out.items()} == {"big": 200, "small0": 200, "small1": 200, "small2": 200}
    assert completed == [("ner0", 1), ("tc0", 1), ("ner0", 1), ("tc0", 1), ("ner0", 1), ("tc0", 1)] +         [("ner0", 1)] * 5
    direct = g.rt.extract_entities("ner0", big)
    assert [[(e["type"], e["start"], e["end"]) for e in spans] for spans in out["big"].json()["results"]] ==         [[(e["type"], e["start"], e["end"]) for e in spans] for spans in direct]


def test_analyze_app_removed_while_queued(service):
    g = Gated(service)
    g.rt.register_app("leaving", service["apps"]["tc1"])
    out = {}
    with serve_in_thread(g.app) as url:
        t = _post_in_thread(url, "/v1/analyze", {"texts": TEXTS, "apps": ["tc0", "leaving"]}, bearer(g.admin),
                            out, "r")
        g.wait_queued("leaving", 2)
        g.rt.unregister_app("leaving")
        g.release()
        t.join(timeout=120)
    r = out["r"]
    assert r.status_code == 200, r.text
    for per_text in r.json()["results"]:
        assert "removed" in per_text["leaving"]["error"]
        assert "error" not in per_text["tc0"]
    assert g.sched.stats()["queued_texts"] == {}


def test_a_name_registered_again_while_a_request_waited_does_not_answer_it(service):
    """A request for app `swap` queued; meanwhile `swap` is unregistered and registered again with another adapter.
    The request is refused (404, removed while waiting), not answered by the new adapter; the same for /v1/analyze.
    The new registration's key, issued during the old one's removal, keeps working."""
    g = Gated(service)
    g.rt.register_app("swap", service["apps"]["tc1"])
    out = {}
    with serve_in_thread(g.app) as url:
        t1 = _post_in_thread(url, "/v1/apps/swap/classify", {"texts": TEXTS}, bearer(g.admin), out, "call")
        g.wait_queued("swap", 2)
        t2 = _post_in_thread(url, "/v1/analyze", {"texts": TEXTS, "apps": ["swap"]}, bearer(g.admin), out, "an")
        g.wait_queued("swap", 4)
        g.rt.unregister_app("swap")
        g.rt.register_app("swap", service["apps"]["tc0"])  # another adapter under the same name
        g.release()
        t1.join(timeout=120)
        t2.join(timeout=120)
    assert out["call"].status_code == 404 and "registered again" in out["call"].json()["detail"], out["call"].text
    assert all("removed" in per_text["swap"]["error"] for per_text in out["an"].json()["results"])
    g.rt.unregister_app("swap")


def test_unregister_revokes_before_a_new_registration_can_take_the_name(service, client):
    k = service["keys"]
    admin = bearer(k[ADMIN])
    assert client.post("/v1/admin/apps", json={"name": "again", "adapter_dir": service["apps"]["tc1"]},
                       headers=admin).status_code == 200
    assert client.delete("/v1/admin/apps/again", headers=admin).status_code == 200
    r = client.post("/v1/admin/apps", json={"name": "again", "adapter_dir": service["apps"]["tc1"],
                                            "api_key": "again-new-key-0123456789"}, headers=admin)
    assert r.status_code == 200
    assert client.post("/v1/apps/again/embed", json={"texts": ["x"]},
                       headers=bearer("again-new-key-0123456789")).status_code == 200
    r = client.post("/v1/admin/apps", json={"name": "uk", "adapter_dir": service["apps"]["tc1"],
                                            "api_key": "ключ-ключ-ключ-ключ"}, headers=admin)
    assert r.status_code == 400 and "printable ASCII" in r.json()["detail"]  # a header could never carry it
    assert not service["rt"].has_app("uk")
    client.delete("/v1/admin/apps/again", headers=admin)


@pytest.mark.parametrize("breakage", ["head", "utf8", "list", "max_length"])
def test_a_broken_app_folder_is_400_not_500(service, client, tmp_path, breakage):
    import shutil

    app = tmp_path / "app"
    shutil.copytree(service["apps"]["tc1"], app)
    meta = json.loads((app / "mtpf_app.json").read_text())
    if breakage == "head":
        (app / "head.safetensors").write_bytes(b"not safetensors at all")
    elif breakage == "utf8":
        (app / "mtpf_app.json").write_bytes(b'{"format": "\xff"}')
    elif breakage == "list":
        (app / "mtpf_app.json").write_text("[1]")
    else:
        (app / "mtpf_app.json").write_text(json.dumps({**meta, "max_length": "abc"}))
    r = client.post("/v1/admin/apps", json={"name": "broken", "adapter_dir": str(app)},
                    headers=bearer(service["keys"][ADMIN]))
    assert r.status_code == 400 and str(app) in r.json()["detail"], r.text


def test_deadline_is_504_and_full_queue_503(service):
    from fastapi.testclient import TestClient

    g = Gated(service, deadline_s=0.3, max_queued_texts=20)
    with TestClient(g.app, raise_server_exceptions=False) as c:
        r = c.post("/v1/apps/tc0/classify", json={"texts": ["waits behind the blocker"]}, headers=bearer(g.admin))
        assert r.status_code == 504 and "deadline" in r.json()["detail"]
        g.sched.submit("tc0", ["q"] * 20, lambda t: Future())  # fill tc0's queue (behind the blocker)
        r = c.post("/v1/apps/tc0/classify", json={"texts": ["one more"]}, headers=bearer(g.admin))
        assert r.status_code == 503 and "20 texts waiting" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        r = c.post("/v1/apps/tch0/embed", json={"texts": ["x"]}, headers=bearer(g.admin))
        assert r.status_code == 504  # another app: not refused, only out of time behind the blocker
        m = c.get("/metrics").json()
    assert m["scheduler"]["rejected_queue_full"] == 1 and m["requests"]["by_status"]["504"] == 2


def test_metrics_labels_are_bounded(service, client):
    """Random paths and app names all land under `other` / `_unknown`: the label sets stop growing."""
    import random

    rng = random.Random(0)

    def burst(n):
        for _ in range(n):
            name = "".join(rng.choice("abcdefghij") for _ in range(8))
            path = rng.choice([f"/{name}", f"/v1/apps/{name}/classify", f"/v1/apps/{name}", f"/v1/apps/{name}/x",
                               f"/v1/{name}/apps", f"/v1/admin/apps/{name}"])
            client.request(rng.choice(["GET", "POST"]), path, headers=bearer("mtpf_" + name * 5))
        m = client.get("/metrics").json()
        return m, (set(m["requests"]["by_app"]), set(m["requests"]["by_endpoint"]), set(m["latency"]),
                   set(m["requests"]["by_status"]))

    _, labels1 = burst(150)
    m2, labels2 = burst(150)
    assert labels1 == labels2
    assert set(m2["requests"]["by_app"]) <= {"ner0", "tc0", "tch0", "hot", "again", "_unknown"}
    assert set(m2["requests"]["by_endpoint"]) <= {"entities", "classify", "embed", "info", "analyze", "health",
                                                  "metrics", "openapi", "docs", "admin", "other"}
    assert m2["requests"]["by_app"]["_unknown"] >= 100


def test_bind_failure_leaves_keys_unchanged(service, tmp_path, capsys):
    import socket

    from mtpf.cli import main

    keys = tmp_path / "keys.json"
    KeyStore(keys).issue("old")
    before = keys.read_bytes()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        for keys_file in (keys, tmp_path / "absent.json"):
            rc = main(["serve", "--backbone", service["backbone"], "--app", f"ner={service['apps']['ner0']}",
                       "--admin", "--keys", str(keys_file), "--port", str(port)])
            captured = capsys.readouterr()
            assert rc == 2 and "API key" not in captured.out and "admin key" not in captured.out
            assert f"cannot listen on 127.0.0.1:{port}" in captured.err and len(captured.err.splitlines()) == 1
    finally:
        taken.close()
    assert keys.read_bytes() == before and not (tmp_path / "absent.json").exists()


def test_keys_rotate_invalidates_old_key_in_a_running_server(service, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from mtpf.cli import main

    path = tmp_path / "keys.json"
    old = KeyStore(path).issue("tc0")
    app = create_app(service["rt"], KeyStore(path))
    with TestClient(app) as c:
        ok = {"json": {"texts": ["hi"]}}
        assert c.post("/v1/apps/tc0/classify", headers=bearer(old), **ok).status_code == 200
        assert main(["serve", "keys", "rotate", "tc0", "--keys", str(path)]) == 0
        new = capsys.readouterr().out.split("new API key for app tc0: ")[1].split()[0]
        assert new != old and new not in path.read_text()
        assert c.post("/v1/apps/tc0/classify", headers=bearer(old), **ok).status_code == 401
        assert c.post("/v1/apps/tc0/classify", headers=bearer(new), **ok).status_code == 200
    assert main(["serve", "keys", "rotate", "nope", "--keys", str(path)]) == 2
    assert "no key for app 'nope'; apps with keys: tc0" in capsys.readouterr().err


@pytest.mark.parametrize("content,expect", [("{not json", "line 1: the keys file is not valid JSON"),
                                            ('{"format": "other"}', "not an mtpf keys file"),
                                            ('{"format": "mtpf-keys/1", "keys": {"a": {"salt": "zz"}}}', "keys.a:")])
def test_corrupt_keys_file_is_one_clear_line(service, tmp_path, capsys, content, expect):
    from mtpf.cli import main
    from mtpf.runtime.keys import KeysFileError

    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeysFileError, match=expect):
        KeyStore(path)
    for argv in (["serve", "--backbone", service["backbone"], "--keys", str(path), "--port", "0"],
                 ["serve", "keys", "rotate", "a", "--keys", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expect in err and str(path) in err and len(err.strip().splitlines()) == 1
    assert path.read_text() == content


def test_device_is_passed_only_to_a_runtime_that_takes_it():
    import argparse

    from mtpf.runtime.cli import _runtime_kwargs

    args = argparse.Namespace(backend="torch", int8=False, onnx_dir=None, mode="mixed", max_batch_size=32,
                              max_wait_ms=2.0, threads=None, forward_rows=8, device="cuda:1")

    def with_device(backbone, *, device="auto", **kw):
        pass

    def without_device(backbone, **kw):
        pass

    assert _runtime_kwargs(with_device, args)["device"] == "cuda:1"
    with pytest.raises(ValueError, match="CPU only"):
        _runtime_kwargs(without_device, args)
    args.device = "auto"
    assert "device" not in _runtime_kwargs(without_device, args)


def test_trunk_cache_counters_are_read_from_the_runtime():
    """/metrics shows the runtime's trunk-state cache counters when it has a cache (either way of exposing it)."""
    from types import SimpleNamespace

    from mtpf.runtime.server import _cache_stats

    assert _cache_stats(SimpleNamespace()) is None
    assert _cache_stats(SimpleNamespace(cache_stats=lambda: {"hits": 3})) == {"hits": 3}
    cache = SimpleNamespace(hits=3, misses=1, max_bytes=1 << 20)
    assert _cache_stats(SimpleNamespace(trunk_cache=cache)) == {"hits": 3, "misses": 1, "hit_rate": 0.75,
                                                                "max_bytes": 1 << 20}


@pytest.mark.parametrize("argv,expect", [(["--app", "foo"], "--app must look like NAME=VALUE"),
                                         (["--app", "a=x", "--app", "a=y"], "--app a= given twice"),
                                         (["--app", f"{ADMIN}=x"], "reserved for the admin key"),
                                         ([], "--backbone is required"),
                                         (["--app", "a=x", "--inflight-chars", "0"], "--inflight-chars must be > 0"),
                                         (["--app", "a=x", "--deadline-s", "0"], "--deadline-s must be > 0")])
def test_serve_bad_arguments_are_one_line(argv, expect, tmp_path, capsys):
    from mtpf.cli import main

    backbone = [] if expect.startswith("--backbone") else ["--backbone", "unused"]
    assert main(["serve", *backbone, *argv, "--keys", str(tmp_path / "k.json")]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "k.json").exists()


def test_sigterm_stops_the_server_cleanly(service, tmp_path):
    """`docker stop` / systemd send SIGTERM: the server drains, says it stopped and closes the runtime (before, the
    default handler killed the process first: exit 143, temp ONNX folders left behind)."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mtpf.cli", "serve", "--backbone", service["backbone"], "--app",
                             f"tc=/{service['apps']['tc1']}", "--keys", str(tmp_path / "k.json"), "--port", "0",
                             "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # no deadline: pytest-timeout catches a hang
        if "OpenAPI" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "mtpf serve: stopped" in err, err[-2000:]


def test_a_body_that_never_arrives_is_408(service):
    """A client that announces 100 bytes and sends 9: 408 after the body timeout, not a connection held forever."""
    import socket
    from urllib.parse import urlparse

    app = create_app(service["rt"], KeyStore(), Limits(body_timeout_s=0.5))
    with serve_in_thread(app) as url:
        u = urlparse(url)
        with socket.create_connection((u.hostname, u.port), timeout=60) as s:
            s.sendall(b"POST /v1/apps/tc0/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"texts\":")
            reply = ""
            while "not received" not in reply and (part := s.recv(4096).decode()):
                reply += part
    assert reply.startswith("HTTP/1.1 408") and "not received within 0.5 s" in reply, reply


def test_validation_messages_fit_the_route(service, client):
    admin = bearer(service["keys"][ADMIN])
    r = client.post("/v1/admin/apps", json={"name": "x" * 65, "adapter_dir": "a"}, headers=admin)
    assert r.status_code == 422 and r.json()["detail"].startswith("invalid register body"), r.text
    r = client.post("/v1/admin/apps", json={"name": "bad name!", "adapter_dir": "a"}, headers=admin)
    assert r.status_code == 422 and "letters, digits" in r.json()["detail"], r.text
    r = client.post("/v1/analyze", json={"texts": ["hi"], "apps": ["y" * 65]}, headers=admin)
    assert r.status_code == 422 and r.json()["detail"] == "app names are 1-64 characters", r.text


def test_an_admin_key_left_in_the_keys_file_opens_nothing_without_admin(service):
    from fastapi.testclient import TestClient

    keys = KeyStore()
    admin_key, own = keys.issue(ADMIN), keys.issue("tc0")
    with TestClient(create_app(service["rt"], keys, admin=False), raise_server_exceptions=False) as c:
        assert c.get("/v1/apps/tc0", headers=bearer(admin_key)).status_code == 403
        assert c.get("/v1/apps/tc0", headers=bearer(own)).status_code == 200
