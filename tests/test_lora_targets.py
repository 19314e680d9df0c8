import pytest

from mtpf.encoder import load_encoder
from mtpf.lora import lora_target_modules
from mtpf.testing import make_tiny_encoder


@pytest.mark.parametrize("arch,expected_last", [
    ("bert", ["encoder.layer.2.attention.self.query", "encoder.layer.2.attention.self.key",
              "encoder.layer.2.intermediate.dense", "encoder.layer.2.output.dense"]),
    ("roberta", ["encoder.layer.2.attention.self.query", "encoder.layer.2.attention.self.key",
                 "encoder.layer.2.intermediate.dense", "encoder.layer.2.output.dense"]),
    ("distilbert", ["transformer.layer.2.attention.q_lin", "transformer.layer.2.attention.k_lin",
                    "transformer.layer.2.ffn.lin1", "transformer.layer.2.ffn.lin2"]),
])
def test_targets_are_exact_modules(tmp_path, arch, expected_last):
    model = load_encoder(make_tiny_encoder(tmp_path, arch, layers=3))
    assert lora_target_modules(model, 1) == expected_last
    every = lora_target_modules(model, "all")
    assert len(every) == 12
    assert not any("attention.output.dense" in n or "out_lin" in n for n in every)


def test_peft_injects_exactly_those_modules(tmp_path):
    from peft.tuners.lora import LoraLayer

    from mtpf.lora import LoraSpec, add_task_adapters

    model = load_encoder(make_tiny_encoder(tmp_path, "bert", layers=3))
    peft_model = add_task_adapters(model, {"ner": LoraSpec(layers=2), "tc": LoraSpec(layers=1)}, train_backbone=True)
    injected = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert injected == set(lora_target_modules(model, 2))
    ner_layers = {n.split(".")[4] for n, _ in peft_model.named_parameters() if ".lora_A.ner." in n}
    tc_layers = {n.split(".")[4] for n, _ in peft_model.named_parameters() if ".lora_A.tc." in n}
    assert ner_layers == {"1", "2"} and tc_layers == {"2"}
    assert all(p.requires_grad for p in peft_model.parameters())


def test_too_many_layers_is_refused(tmp_path):
    model = load_encoder(make_tiny_encoder(tmp_path, "bert", layers=2))
    with pytest.raises(ValueError, match="only 2"):
        lora_target_modules(model, 3)


def test_more_layers_than_the_model_has_is_a_config_error():
    """A ConfigError, so the CLI reports it as one line (a plain ValueError from setup was a traceback)."""
    from mtpf.config import ConfigError
    from mtpf.lora.targets import select_layers

    assert select_layers(4, 2) == [2, 3]
    with pytest.raises(ConfigError, match="last 99 layers but the model has only 4"):
        select_layers(4, 99)
