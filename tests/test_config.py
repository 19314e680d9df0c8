import pytest

from mtpf.config import ConfigError, load_config
from mtpf.recipes.pretrain import PretrainConfig


def test_yaml_and_dotted_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("strategy: mtpf-tpl\ntpl:\n  ner:\n    layers: 3\n    rank: 8\nlr: 1.0e-4\n")
    cfg = load_config(PretrainConfig, cfg_file, ["tpl.tc.layers=all", "pcgrad=true", "max_steps=7"])
    assert cfg.tpl.ner.layers == 3 and cfg.tpl.ner.rank == 8 and cfg.tpl.ner.alpha == 64
    assert cfg.tpl.tc.layers == "all"
    assert cfg.pcgrad is True and cfg.max_steps == 7 and cfg.lr == pytest.approx(1e-4)


def test_unknown_key_names_file_and_key(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("strategy: tc\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*'learning_rate'"):
        load_config(PretrainConfig, cfg_file)
    with pytest.raises(ConfigError, match=r"unknown config key 'tpl.ner.rnk'"):
        load_config(PretrainConfig, None, ["tpl.ner.rnk=4"])
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        load_config(PretrainConfig, None, ["bogus=1"])


def test_unknown_strategy_and_bad_types(tmp_path):
    with pytest.raises(ConfigError, match="strategy must be one of"):
        load_config(PretrainConfig, None, ["strategy=mtl"])
    with pytest.raises(ConfigError, match="max_steps must be an integer"):
        load_config(PretrainConfig, None, ["max_steps=ten"])
    with pytest.raises(ConfigError, match="keep_checkpoints must be >= 1"):  # 0 would have kept them all
        load_config(PretrainConfig, None, ["keep_checkpoints=0"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: tc\n  lr: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(PretrainConfig, bad)
