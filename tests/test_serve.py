"""HTTP service: endpoints, keys, validation (4xx, never 500), metrics, and a bounded concurrent load."""
from __future__ import annotations

import json
import threading
import time

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
    assert client.delete("/v1/admin/apps/hot", headers=bearer(k[ADMIN])).status_code == 200
    assert client.post("/v1/apps/hot/embed", json={"texts": ["x"]}, headers=bearer(key)).status_code == 404
    assert client.delete("/v1/admin/apps/hot", headers=bearer(k[ADMIN])).status_code == 404


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
    """`mtpf serve` registers the apps, issues keys (stored hashed), binds 127.0.0.1 and hands uvicorn the app."""
    import uvicorn
    from fastapi.testclient import TestClient

    from mtpf.cli import main

    seen = {}

    def fake_run(app, host, port, **kw):
        seen.update(app=app, host=host, port=port)
        with TestClient(app) as c:
            seen["health"] = c.get("/health").json()
            seen["ok"] = c.post("/v1/apps/intent/classify", json={"texts": ["hi"]},
                                headers={"X-API-Key": "given-key-0123456789"}).status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    keys = tmp_path / "keys.json"
    rc = main(["serve", "--backbone", service["backbone"], "--app", f"ner={service['apps']['ner0']}",
               "--app", f"intent={service['apps']['tc0']}", "--api-key", "intent=given-key-0123456789",
               "--keys", str(keys)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "API key for app ner: mtpf_" in out and "intent:" not in out.split("mtpf serve:")[0].replace(
        "API key for app ner", "")
    assert seen["host"] == "127.0.0.1" and seen["health"]["apps"] == {"ner": "ner", "intent": "tc"}
    assert seen["ok"] == 200
    assert "given-key-0123456789" not in keys.read_text()
    # a foreign adapter is refused at start-up with a clear message, exit code 2
    from mtpf.runtime.testing import make_app_adapter
    from mtpf.testing import make_tiny_encoder

    foreign = make_app_adapter(tmp_path / "foreign", make_tiny_encoder(tmp_path / "other", seed=3), "tc")
    assert main(["serve", "--backbone", service["backbone"], "--app", f"x={foreign}", "--keys", str(keys)]) == 2
    assert "trained on backbone" in capsys.readouterr().err
