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


TPL_RANK_0 = "strategy: mtpf\ntpl:\n  ner:\n    rank: 0\n"
MAX_STEPS_0 = "strategy: mtpf\nlr: 1e-4\nmax_steps: 0\n"


@pytest.mark.parametrize("text,overrides,message", [
    ("strategy: mtpf-tpl\n# a comment\ntpl:\n  ner:\n    layers: 3\n    rnk: 8\nlr: 1.0e-4\n", [],
     r"c\.yaml:6: unknown config key 'tpl\.ner\.rnk'"),
    ("strategy: mtpf\n\nmax_steps: ten\n", [], r"c\.yaml:3: max_steps must be an integer"),
    (MAX_STEPS_0, [], r"c\.yaml:3: PretrainConfig: max_steps must be >= 1"),  # __post_init__ names it first
    (MAX_STEPS_0, ["max_steps=-2"], r"^override max_steps=-2: PretrainConfig: max_steps must be >= 1"),
    (TPL_RANK_0, [], r"c\.yaml:4: tpl\.ner: lora rank must be >= 1"),
    (TPL_RANK_0, ["tpl.ner={rank: -1}"], r"^override tpl\.ner=\{'rank': -1\}: tpl\.ner: lora rank must be"),
    # a field name inside a quoted value (seed) is not where the mistake is: the file, no line
    ("strategy: tc\nseed: 3\nmax_length: 64\npairs: [{path: runs/seed/pairs.jsonl, rows: 0}]\n", [],
     r"c\.yaml: PretrainConfig: pair source .*rows must be a positive"),
    ("strategy: tc\nextra: &x {a: *x}\n", [], r"c\.yaml:2: unknown config key 'extra'"),  # no RecursionError
])
def test_errors_name_the_line_of_the_key_or_the_override(tmp_path, text, overrides, message):
    """A mistake in a file is reported at its line (a typo'd key, a bad type, a range check in __post_init__); a
    key a command-line override replaced is reported as that override, never at the file's stale line."""
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(PretrainConfig, conf, overrides)


def test_an_override_that_fixes_the_file_is_used(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(MAX_STEPS_0)
    assert load_config(PretrainConfig, conf, ["max_steps=5"]).max_steps == 5


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


def test_overrides_keep_what_was_typed_for_strings(tmp_path):
    """YAML 1.1 would turn these into a boolean, an octal number, a truncated path; a string field gets the text."""
    cfg = load_config(PretrainConfig, None, ["mixed_precision=no", "model=0123", "output_dir=runs/a #1",
                                             "tc_mini_batch_size=null", "lr=1e-4", "pcgrad=true", "max_steps=7"])
    assert (cfg.mixed_precision, cfg.model, cfg.output_dir) == ("no", "0123", "runs/a #1")
    assert cfg.tc_mini_batch_size is None and cfg.lr == 1e-4 and cfg.pcgrad is True and cfg.max_steps == 7
    conf = tmp_path / "c.yaml"
    conf.write_text("mixed_precision: no\n")  # unquoted in a file: a boolean to YAML, the choice "no" here
    assert load_config(PretrainConfig, conf).mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"override 'lr=\[1': invalid value"):
        load_config(PretrainConfig, None, ["lr=[1"])


def test_a_broken_override_is_one_line_and_exit_2(capsys):
    from mtpf.cli import main

    assert main(["pretrain", "output_dir=@x"]) == 2
    err = capsys.readouterr().err
    assert "invalid value" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("override,message", [
    ("tc_batch_size=0", "tc_batch_size must be >= 1"),  # once a sampler that never filled a batch: a hang
    ("ner_batch_size=-4", "ner_batch_size must be >= 1"),
    ("log_every=0", "log_every must be >= 1"), ("save_every=0", "save_every must be >= 1"),
    ("lr=-1", "lr must be > 0"), ("temperature=0", "temperature must be > 0"),  # 0: NaN losses, saved silently
    ("head_lr=0", "head_lr must be > 0"), ("num_workers=-1", "num_workers must be >= 0"),
    ("warmup_ratio=1.5", "warmup_ratio must be in"), ("seed=-1", "seed must be in"),
    ("scheduler=bogus", "scheduler 'bogus' is not a transformers scheduler"),
    ("tc_mini_batch_size=0", "tc_mini_batch_size must be >= 1"),
    ("strategy=pf-lora pcgrad=true", "pcgrad=true has no effect with strategy pf-lora"),  # was a torch.cat traceback
])
def test_out_of_range_values_are_refused_when_read(override, message, capsys):
    with pytest.raises(ConfigError, match=message):
        load_config(PretrainConfig, None, override.split())
    from mtpf.cli import main

    assert main(["pretrain", *override.split()]) == 2
    err = capsys.readouterr().err
    assert message.split(" must")[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
