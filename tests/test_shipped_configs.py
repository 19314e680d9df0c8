from pathlib import Path

import pytest

from mtpf.config import load_config
from mtpf.recipes.pretrain import PretrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("[lp]*/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_is_valid(path):
    cfg = load_config(PretrainConfig, path)
    name = path.stem.split("-", 1)[1] if path.parent.name == "paper" else path.stem
    assert cfg.strategy == {"mtpf-pcgrad": "mtpf", "pf-lora-2": "pf-lora"}.get(name, name)
    if path.parent.name == "paper":
        assert cfg.lr == 2e-5 and cfg.max_steps == 100_000 and cfg.temperature == 0.05
        assert cfg.tc_batch_size == 1024 and cfg.ner_batch_size == 256
        assert len(cfg.pairs) == 16
    if "pcgrad" in path.stem:
        assert cfg.pcgrad


def test_every_strategy_has_a_local_and_a_paper_config():
    stems = {p.parent.name + "/" + p.stem.split("-", 1)[-1] if p.parent.name == "paper" else "local/" + p.stem
             for p in CONFIGS}
    for s in ("ner", "tc", "mtpf", "mtpf-pcgrad", "mtpf-tpl", "pf-lora"):
        assert f"local/{s}" in stems and f"paper/{s}" in stems
