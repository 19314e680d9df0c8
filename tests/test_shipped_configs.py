from pathlib import Path

import pytest

from mtpf.config import load_config
from mtpf.recipes.pretrain import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
# hub_sources.yaml is the table of hub names the paper configs use (tests/test_paper_configs.py), not a config.
CONFIGS = sorted(p for p in (ROOT / "configs").glob("[lp]*/*.yaml")
                 if not p.name.startswith("repro") and p.name != "hub_sources.yaml")


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


def test_repro_config_names_existing_strategy_configs():
    import yaml

    repro = yaml.safe_load((ROOT / "configs" / "local" / "repro.yaml").read_text())
    for name, ref in repro["models"].items():
        if ref.endswith(".yaml"):
            assert (ROOT / ref).is_file(), name
            load_config(PretrainConfig, ROOT / ref, repro["pretrain_overrides"])
    assert set(repro["models"]) == {"Base model", "PF for NER", "PF for TC", "MTPF", "MTPF + PCGrad", "MTPF-TPL",
                                    "PF-L (all layers)", "PF-L (two layers)"}
