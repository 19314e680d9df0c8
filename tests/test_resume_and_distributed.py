"""Crash/resume and multi-process training: both must reproduce the plain single-process run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_run_overrides

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _weights(run_dir: Path) -> dict:
    out = {"backbone": load_file(str(run_dir / "backbone" / "model.safetensors"))}
    for task in ("ner", "tc"):
        f = run_dir / "adapters" / task / "adapter_model.safetensors"
        if f.exists():
            out[task] = load_file(str(f))
    head = run_dir / "heads" / "ner_clusters" / "head.safetensors"
    if head.exists():
        out["head"] = load_file(str(head))
    return out


def _pretrain_cmd(args):
    return [sys.executable, "-m", "mtpf.cli", "pretrain", *args]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a hang guard, not a speed target
def test_resume_after_kill_reaches_identical_weights(tiny_bert, toy_data, tmp_path):
    common = dict(strategy="mtpf-tpl", pcgrad="true", max_steps=40, save_every=5, log_every=5)
    ref = tmp_path / "uninterrupted"
    subprocess.run(_pretrain_cmd(tiny_run_overrides(tiny_bert, toy_data, ref, **common)), env=ENV, check=True,
                   cwd=REPO, capture_output=True)
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(_pretrain_cmd(tiny_run_overrides(tiny_bert, toy_data, crashed, **common)), env=ENV,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # no wall-clock deadline (a busy machine is slow, not wrong): the run either writes step 10 or ends;
    # a hang is pytest-timeout's to report
    while not (crashed / "checkpoints" / "step-00000010").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (crashed / "run.json").exists()
    done = subprocess.run(_pretrain_cmd(tiny_run_overrides(tiny_bert, toy_data, crashed, resume="true", **common)),
                          env=ENV, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(ref), _weights(crashed)
    assert set(a) == set(b) == {"backbone", "ner", "tc", "head"}
    for part in a:
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}:{name} differs after resume"


def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(tiny_bert, toy_data, tmp_path, capsys):
    """A run killed after step 2, whose newest checkpoint broke after its model and optimizer loaded (its RNG
    state torn, which accelerate would skip silently): the resume goes back to step 1, restores all of it, and
    ends with the uninterrupted run's weights.
    None readable: one line."""
    import shutil

    from mtpf.config import ConfigError, load_config
    from mtpf.recipes.pretrain import PretrainConfig, run

    def cfg(out, **extra):
        return load_config(PretrainConfig, None, tiny_run_overrides(tiny_bert, toy_data, out, strategy="tc",
                                                                    max_steps=3, keep_checkpoints=3, **extra))

    ref, out = tmp_path / "ref", tmp_path / "killed"
    run(cfg(ref))
    out.mkdir()  # what a kill after step 2 leaves: its config, log and the checkpoints of steps 1 and 2
    for part in ("pretrain_config.json", "logs"):
        (shutil.copytree if (ref / part).is_dir() else shutil.copy)(ref / part, out / part)
    ckpts = out / "checkpoints"
    for step in ("step-00000001", "step-00000002"):
        shutil.copytree(ref / "checkpoints" / step, ckpts / step)
    (ckpts / "step-00000002" / "random_states_0.pkl").write_bytes(b"torn")  # read last, after the weights
    capsys.readouterr()
    run(cfg(out, resume="true"))
    printed = capsys.readouterr().out
    assert "checkpoint " + str(ckpts / "step-00000002") + " cannot be loaded" in printed
    assert "resumed from " + str(ckpts / "step-00000001") + " (step 1)" in printed
    a, b = _weights(ref), _weights(out)
    assert set(a) == set(b) and all(torch.equal(a[p][n], b[p][n]) for p in a for n in a[p])
    # the unloadable one was moved aside (pruning keeps the newest by name: it would have kept it)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000001", "step-00000002", "step-00000003",
                                                       "unloadable-step-00000002"]
    (out / "run.json").unlink()
    for ckpt in ckpts.iterdir():
        (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="no checkpoint in .* can be loaded"):
        run(cfg(out, resume="true"))


def _accelerate_cmd(args):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2", "--main_process_port",
            str(29400 + os.getpid() % 500), "-m", "mtpf.recipes.pretrain", *args]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,extra", [
    ("tc", {}), ("mtpf-tpl", {"pcgrad": "true"}),
    # uncached InfoNCE cut into chunks by a token budget: the ranks run different numbers of forwards per step
    # (DDP's per-forward buffer broadcast once deadlocked this against the other rank's all_gather)
    ("tc", {"tc_mini_batch_size": "null", "tc_pad_chunk": 40}),
])
def test_two_process_gloo_run_equals_single_process(tiny_bert_nodropout, toy_data, tmp_path, strategy, extra):
    """DDP over 2 CPU processes (gloo) with negatives gathered across processes gives the single-process
    losses and weights: InfoNCE over the concatenated batch, NER mean over all labelled tokens."""
    common = dict(strategy=strategy, max_steps=3, **extra)
    single, double = tmp_path / "one", tmp_path / "two"
    r = subprocess.run(_pretrain_cmd(tiny_run_overrides(tiny_bert_nodropout, toy_data, single, **common)),
                       env=ENV, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(_accelerate_cmd(tiny_run_overrides(tiny_bert_nodropout, toy_data, double, **common)),
                       env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((double / "run.json").read_text())["num_processes"] == 2
    m1 = [json.loads(x) for x in (single / "logs" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (double / "logs" / "metrics.jsonl").read_text().splitlines()]
    for key in [k for k in m1[0] if k.startswith("loss_")]:
        assert [m[key] for m in m2] == pytest.approx([m[key] for m in m1], rel=1e-4), key
    a, b = _weights(single), _weights(double)
    # Adam divides by sqrt(v): an element whose gradient is ~0 turns float noise (different reduction order
    # across processes) into a visible step, so single elements may differ by ~1e-5 at lr=1e-3. Any real
    # mismatch (missing gathered negatives, wrong averaging) moves every element; the mean difference catches it.
    for part in a:
        for name in a[part]:
            torch.testing.assert_close(b[part][name], a[part][name], rtol=1e-3, atol=1e-4)
            assert (b[part][name] - a[part][name]).abs().mean() < 2e-7, f"{part}:{name}"


def _toy_ner(data: Path) -> Path:
    import random

    rng = random.Random(0)
    data.mkdir()
    for split, n in (("train", 32), ("dev", 8), ("test", 8)):
        rows = [{"tokens": [rng.choice(["john", "mary"]), "went", "to", rng.choice(["paris", "rome"]), "."],
                 "tags": ["B-PER", "O", "O", "B-LOC", "O"]} for _ in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.mark.slow
def test_two_process_adapt_ner_writes_one_app(tiny_bert, tmp_path):
    """`accelerate launch --num_processes 2 -m mtpf.cli adapt ner`: both ranks train (DDP), rank 0 alone writes
    and reports the app (every rank once replaced the same folder at the same time)."""
    data = _toy_ner(tmp_path / "toyner")
    app = tmp_path / "app"
    cmd = _accelerate_cmd([])[:-2] + ["-m", "mtpf.cli", "adapt", "ner", "--model", tiny_bert, "--data", str(data),
                                      "--output", str(app), "--epochs-warmup", "1", "--epochs", "1",
                                      "--batch-size", "4", "--no-progress", "--device", "cpu"]
    r = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("NER app adapter:") == 1, r.stdout
    assert (app / "mtpf_app.json").is_file() and (app / "README.md").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang guard, not a speed target
def test_two_process_adapt_ner_killed_mid_stage_2_resumes_to_the_same_app(tiny_bert, tmp_path):
    """Both ranks save the same epochs (rank 0 decides) and resume from them: a 2-process NER adaptation killed
    after a checkpoint ends with the weights of an uninterrupted 2-process run."""
    data = _toy_ner(tmp_path / "toyner")

    def cmd(app):
        return _accelerate_cmd([])[:-2] + ["-m", "mtpf.cli", "adapt", "ner", "--model", tiny_bert, "--data",
                                           str(data), "--output", str(app), "--epochs-warmup", "1", "--epochs", "40",
                                           "--min-steps", "0", "--batch-size", "4", "--no-progress", "--device", "cpu"]

    env = {**ENV, "MTPF_NER_CHECKPOINT_SECONDS": "0"}
    ref = tmp_path / "ref"
    r = subprocess.run(cmd(ref), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    app = tmp_path / "app"
    proc = subprocess.Popen(cmd(app), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / ".app.checkpoint"
    while not (any(ckpt.glob("rank0-e*.pt")) and any(ckpt.glob("rank1-e*.pt"))):
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.01)
    import psutil  # accelerate's dependency

    tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    for p in tree:  # both ranks (torch's launcher starts them in sessions of their own) and the launcher
        p.kill()
    psutil.wait_procs(tree)
    assert not (app / "mtpf_app.json").exists()
    r = subprocess.run(cmd(app), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed after stage-2 epoch" in r.stdout and not ckpt.exists()
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (ref, app))
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert torch.equal(load_file(str(ref / "head.safetensors"))["weight"],
                       load_file(str(app / "head.safetensors"))["weight"])


def test_ranks_draw_their_own_dropout_but_share_weights(tiny_bert, toy_data, tmp_path, monkeypatch):
    """Every rank seeds torch alike (weight init must agree); after DDP's weight copy, rank r > 0 reseeds, so the
    ranks do not drop the same units of their different examples. Rank 0 keeps the single-process stream."""
    from accelerate import Accelerator
    from conftest import tiny_run_overrides

    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, PretrainRecipe

    def train_mode_output(rank, name):
        monkeypatch.setattr(Accelerator, "process_index", property(lambda self: rank))
        cfg = load_config(PretrainConfig, None, tiny_run_overrides(tiny_bert, toy_data, tmp_path / name,
                                                                   strategy="ner"))
        recipe = PretrainRecipe(cfg)
        recipe.setup()
        model = recipe.accelerator.unwrap_model(recipe.model)
        model.train()
        ids = torch.tensor([[101, 2040, 2001, 1037, 3899, 102]])
        with torch.no_grad():
            out = model(task="ner", input_ids=ids, attention_mask=torch.ones_like(ids))
        return {k: v.clone() for k, v in model.state_dict().items()}, out

    w0, out0 = train_mode_output(0, "r0")
    w0b, out0b = train_mode_output(0, "r0b")
    w1, out1 = train_mode_output(1, "r1")
    w1b, out1b = train_mode_output(1, "r1b")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # same init on every rank
    assert torch.equal(out0, out0b) and torch.equal(out1, out1b)  # each rank's stream is seeded
    assert not torch.allclose(out0, out1)  # but the ranks' dropout masks differ


def _record_durability(monkeypatch) -> list[tuple[str, str]]:
    """("fsync", path) and ("replace", src, dst) events, in order: what reached the disk before a rename."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _synced_before(events, src: str, files: list[str]) -> set[str]:
    """Of ``files`` (paths under ``src``), those fsynced before ``src`` was renamed."""
    done = set()
    for e in events:
        if e[0] == "replace" and e[1] == src:
            return {f for f in files if f in done}
        if e[0] == "fsync":
            done.add(e[1])
    raise AssertionError(f"{src} was never renamed")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd names the synced files")
def test_checkpoints_run_json_and_stage_markers_reach_the_disk_before_they_count(tiny_bert, toy_data, tmp_path,
                                                                                    monkeypatch):
    """A rename or marker declares a checkpoint, a run or a stage finished; after an OS crash its files must not
    be torn, so they are fsynced first."""
    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig, run
    from mtpf.stages import MARKER, mark_done

    events = _record_durability(monkeypatch)
    out = tmp_path / "run"
    run(load_config(PretrainConfig, None, tiny_run_overrides(tiny_bert, toy_data, out, max_steps=1)))
    final = out / "checkpoints" / "step-00000001"
    tmp = str(final.parent / ".tmp-step-00000001")
    files = [str(p).replace(str(final), tmp) for p in final.rglob("*") if p.is_file()]
    assert len(files) >= 3 and _synced_before(events, tmp, files) == set(files)
    exported = [str(p) for part in ("backbone", "adapters", "sentence_transformer") if (out / part).is_dir()
                for p in (out / part).rglob("*") if p.is_file()]
    run_tmp = str(out / "run.json.tmp")
    assert len(exported) >= 4 and _synced_before(events, run_tmp, exported + [run_tmp]) == set(exported + [run_tmp])
    stage = tmp_path / "stage"
    (stage / "sub").mkdir(parents=True)
    (stage / "sub" / "result.bin").write_bytes(b"x" * 100)
    mark_done(stage)
    marker_tmp = str(stage / (MARKER + ".tmp"))
    wanted = [str(stage / "sub" / "result.bin"), marker_tmp]
    assert _synced_before(events, marker_tmp, wanted) == set(wanted)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/fd names the synced files")
@pytest.mark.parametrize("layered", [True, False])
def test_onnx_graphs_reach_the_disk_before_export_json_vouches_for_them(layered, tmp_path, monkeypatch):
    """A folder with export.json is a finished export the runtime serves without re-exporting: after an OS crash
    its graphs must not be torn."""
    from transformers import AutoTokenizer

    from mtpf.encoder import load_encoder
    from mtpf.runtime import onnx_export as ox
    from mtpf.testing import make_tiny_encoder

    model = make_tiny_encoder(tmp_path / "a", "bert", layers=2)
    events = _record_durability(monkeypatch)
    out = Path(os.path.realpath(tmp_path)) / "onnx"
    export = ox.export_layered_dir if layered else ox.export_encoder_dir
    export(load_encoder(model).eval(), AutoTokenizer.from_pretrained(model), out, int8=False, backbone_fingerprint="A")
    graphs = [str(p) for p in out.rglob("*") if p.is_file() and p.name != "export.json"]
    meta_tmp = str(out / "export.json.tmp")
    assert len(graphs) >= (2 if layered else 1)
    assert _synced_before(events, meta_tmp, graphs + [meta_tmp]) == set(graphs + [meta_tmp])
