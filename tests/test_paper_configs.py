"""The paper configs name exact hub datasets, subsets and splits, and the paper's hyper-parameters.

Offline: every check reads configs/paper/*.yaml and the table configs/paper/hub_sources.yaml (which says
where each name comes from); nothing is downloaded.
"""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
TABLE = yaml.safe_load((PAPER / "hub_sources.yaml").read_text())
CONFIGS = sorted(p for p in PAPER.glob("*.yaml") if p.name != "hub_sources.yaml")

# Paper, Appendix B: "The datasets used include: all-nli, quora-duplicates, stackexchange-duplicates, wikihow,
# xsum, s2orc, wikianswers-duplicates, agnews, npr, specter, simple-wiki, altlex, ccnews, sentence-compression,
# flickr30k-captions, and amazon-reviews."
APPENDIX_B_SETS = ["all-nli", "quora-duplicates", "stackexchange-duplicates", "wikihow", "xsum", "s2orc",
                   "wikianswers-duplicates", "agnews", "npr", "specter", "simple-wiki", "altlex", "ccnews",
                   "sentence-compression", "flickr30k-captions", "amazon-reviews"]
# Paper, Appendix B: "in-batch negatives strategy with a batch size of 1024"; "AdamW optimizer with a learning
# rate of 2x10^-5 and train for 100K iterations"; NER: "200 yields the best downstream performance" (K) and
# "select 256" (batch size), "the same learning rate and training iterations".
PAPER_TC_BATCH, PAPER_NER_BATCH, PAPER_LR, PAPER_STEPS, PAPER_K = 1024, 256, 2e-5, 100_000, 200


def _hub_specs(cfg: dict) -> list[dict]:
    out = []
    for entry in cfg.get("pairs", []):
        if isinstance(entry, str):
            assert entry.startswith("hub:"), f"paper configs use hub sources, got {entry!r}"
            name, _, subset = entry[4:].partition(":")
            entry = {"hub": name, "subset": subset or None, "split": "train"}
        out.append(entry)
    return out


def test_table_lists_the_appendix_b_sets_with_their_sources():
    assert list(TABLE["sources"]) == APPENDIX_B_SETS
    for name, e in {**TABLE["sources"], **TABLE["corpora"]}.items():
        assert e["source"].startswith("https://huggingface.co/datasets/"), name
        assert e["subsets"] and e["splits"], name
        assert e["use"]["split"] in e["splits"], name
        if len(e["subsets"]) > 1:
            assert e["use"]["subset"] in e["subsets"], f"{name}: several subsets, the table must pick one"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_paper_config_sources_name_subset_and_split(path):
    cfg = yaml.safe_load(path.read_text())
    specs = _hub_specs(cfg)
    by_hub = {e["hub"]: (name, e) for name, e in TABLE["sources"].items()}
    assert [by_hub[s["hub"]][0] for s in specs] == APPENDIX_B_SETS
    for spec in specs:
        name, entry = by_hub[spec["hub"]]
        assert spec.get("split", "train") in entry["splits"], f"{path.name}: {name} has no split {spec.get('split')}"
        if len(entry["subsets"]) > 1:
            assert spec.get("subset") in entry["subsets"], (
                f"{path.name}: {name} has subsets {entry['subsets']}; the spec must name one")
        elif spec.get("subset") is not None:
            assert spec["subset"] in entry["subsets"], f"{path.name}: {name} has no subset {spec['subset']}"
        # the config says what the table says, so the two cannot drift apart
        use = entry["use"]
        assert (spec.get("subset"), spec.get("split"), spec.get("columns"), spec.get("streaming"), spec.get("rows")) == (
            use["subset"], use["split"], use["columns"], use["streaming"], use.get("rows")), f"{path.name}: {name}"
        if spec.get("streaming"):  # proportional source weights need the size of a streamed source
            assert spec["rows"] == entry["rows"][f"{spec['subset']}/{spec['split']}"]
        assert spec.get("name") == name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_paper_config_hyperparameters_match_appendix_b(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["tc_batch_size"] == PAPER_TC_BATCH
    assert cfg["ner_batch_size"] == PAPER_NER_BATCH
    assert float(cfg["lr"]) == PAPER_LR
    assert cfg["max_steps"] == PAPER_STEPS
    # K lives in the label step the configs read from: its command and output folder say K=200
    assert cfg["ner_data"] == [f"runs/labels/nuner-k{PAPER_K}"]
    assert f"--clusters {PAPER_K}" in path.read_text().split("strategy:")[0]


def test_nuner_label_command_names_a_split_the_corpus_has():
    from mtpf.teacher.corpus import parse_hub_spec

    nuner = TABLE["corpora"]["nuner"]
    assert "train" not in nuner["splits"]
    command = nuner["label"]
    assert f"--clusters {PAPER_K}" in command
    corpus = command.split("--corpus ")[1].split()[0]
    name, subset, split = parse_hub_spec(corpus)
    assert name == nuner["hub"] and split == nuner["use"]["split"] and subset == nuner["use"]["subset"]
    for path in CONFIGS:  # every paper config carries the same command
        assert command.split("mtpf label ")[1] in path.read_text(), path.name
