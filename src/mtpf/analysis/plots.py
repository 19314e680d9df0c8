"""Figure 3 (similarity trends during pre-finetuning) and Figure 4 (TPL depth sweep), from run folders.

Inputs, all written by ``mtpf pretrain`` / ``mtpf evaluate``:
* ``RUN/logs/analysis.jsonl``: ``{"step": N, "perturbed_cosine": ..., "token_homogeneity": ...,
  "perturbed_cosine@tc": ..., ...}``
* ``RUN/logs/metrics.jsonl``: ``{"step": N, "loss_ner": ..., "loss_tc": ..., ...}``
* ``RUN/pretrain_config.json``: the run's resolved config (``strategy`` labels the curve)
* depth sweeps: ``DIR/layers-N/`` runs; downstream scores from ``DIR/layers-N/eval/results.json``
  (``mtpf evaluate``), ``DIR/layers-N/eval/summary.json`` (``{"ner": F1, "tc": accuracy}``, in %) or
  ``DIR/downstream.json`` (``{"N": {"ner": ..., "tc": ...}}``, optionally ``ner_half`` / ``tc_half``: the
  half-width of a 95 % interval, drawn as error bars).
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections import defaultdict
from pathlib import Path

from mtpf.data.io import DataError

FINDINGS = (
    ("perturbed_cosine", "(a) perturbed sentences: cosine to original"),
    ("token_homogeneity", "(b) token homogeneity within a sentence"),
)


def read_log(path: str | os.PathLike) -> list[dict]:
    """JSON lines sorted by step, the last record of a step winning (a resumed run may repeat steps); a torn
    last line (a run killed mid-write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    lines = path.read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):
                continue
            raise DataError(path, lineno, "malformed JSON") from None
        if isinstance(rec, dict) and "step" in rec:
            if not isinstance(rec["step"], int) or isinstance(rec["step"], bool):
                raise DataError(path, lineno, f"'step' must be an integer, got {rec['step']!r}")
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def run_label(run_dir: str | os.PathLike) -> str:
    """The run's strategy from ``pretrain_config.json`` (``+ PCGrad`` when on), else the folder name."""
    run_dir = Path(run_dir)
    try:
        cfg = json.loads((run_dir / "pretrain_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return run_dir.name
    strategy = cfg.get("strategy")
    if not strategy:
        return run_dir.name
    if cfg.get("pcgrad"):
        strategy += " + PCGrad"
    return strategy


def _labels(run_dirs: list[Path]) -> list[str]:
    labels = [run_label(r) for r in run_dirs]
    counts = defaultdict(int)
    for lab in labels:
        counts[lab] += 1
    return [
        f"{lab} ({r.name})" if counts[lab] > 1 and lab != r.name else lab for lab, r in zip(labels, run_dirs)
    ]


def _save(fig, out: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")  # whole or not at all: reproduce.py trusts its mtime
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_findings(
    run_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    adapter: str | None = None,
    losses: bool = False,
    labels: list[str] | None = None,
) -> Path:
    """Figure 3: perturbed-sentence similarity and token homogeneity vs step, one line per run.

    ``adapter``: plot the ``...@adapter`` measurements instead of the backbone's. ``losses``: add the
    pre-finetuning loss panels (``loss_ner``, ``loss_tc`` from metrics.jsonl).
    """
    runs = [Path(r) for r in run_dirs]
    for r in runs:
        if not r.is_dir():
            raise DataError(r, None, "no such run folder")
    logs = [read_log(r / "logs" / "analysis.jsonl") for r in runs]
    if not any(logs):
        raise DataError(
            runs[0],
            None,
            "no logs/analysis.jsonl with measurements in any of the runs "
            "(enable analysis tracking in the pretrain config)",
        )
    labels = labels or _labels(runs)
    suffix = f"@{adapter}" if adapter else ""
    panels = list(FINDINGS) + (
        [("loss_ner", "(c) NER pre-finetuning loss"), ("loss_tc", "(d) TC pre-finetuning loss")]
        if losses
        else []
    )
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        is_loss = key.startswith("loss_")
        for i, (run, log, label) in enumerate(zip(runs, logs, labels)):
            recs = read_log(run / "logs" / "metrics.jsonl") if is_loss else log
            k = key if is_loss else key + suffix
            pts = [(r["step"], r[k]) for r in recs if isinstance(r.get(k), (int, float))]
            if pts:
                # one colour per run in every panel, also where a run lacks a task's loss
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3, label=label,
                        color=f"C{i % 10}")
        ax.set_title(title + (f" [{adapter} adapter]" if adapter and not is_loss else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss" if is_loss else "cosine similarity")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, out)


# ----------------------------------------------------------------------------------------------- Figure 4
_LAYERS = re.compile(r"^layers-(\d+)$")


def depth_runs(sweep_dir: str | os.PathLike) -> dict[int, Path]:
    """``{N: DIR/layers-N}`` for every depth folder of a sweep, by depth."""
    sweep_dir = Path(sweep_dir)
    found = {}
    for p in sweep_dir.iterdir() if sweep_dir.is_dir() else []:
        m = _LAYERS.match(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def results_averages(cells: list[dict], model: str | None = None) -> dict[str, float]:
    """NER / TC averages (in %) of the cells of an ``mtpf evaluate`` results.json (as ``read_cells`` gives them:
    the newest cell of each slot): mean over seeds per dataset at fraction 1, then mean over datasets."""
    per = defaultdict(list)
    for c in cells:
        if float(c.get("fraction", 1.0)) != 1.0 or (model is not None and c.get("model") != model):
            continue
        per[(c["task"], c["dataset"])].append(100 * float(c["main_score"]))
    out = {}
    for task in ("ner", "tc"):
        vals = [statistics.fmean(v) for (t, _), v in per.items() if t == task]
        if vals:
            out[task] = statistics.fmean(vals)
    return out


def downstream_averages(sweep_dir: str | os.PathLike) -> dict[int, dict[str, float]]:
    sweep_dir = Path(sweep_dir)
    out: dict[int, dict[str, float]] = {}
    table = sweep_dir / "downstream.json"
    if table.is_file():
        for k, v in _json_object(table).items():  # optional ner_half / tc_half: 95 % interval
            try:
                out[int(k)] = {t: float(v[t]) for t in ("ner", "tc", "ner_half", "tc_half") if v.get(t) is not None}
            except (TypeError, ValueError, AttributeError):
                raise DataError(table, None, f"entry {k!r} must be a depth (integer) -> {{\"ner\": number, \"tc\": "
                                "number, ...}") from None
    for n, run in depth_runs(sweep_dir).items():
        summary, results = run / "eval" / "summary.json", run / "eval" / "results.json"
        if summary.is_file():
            v = _json_object(summary)
            try:
                out.setdefault(n, {}).update({t: float(v[t]) for t in ("ner", "tc") if t in v})
            except (TypeError, ValueError):
                raise DataError(summary, None, "'ner' and 'tc' must be numbers") from None
        elif results.is_file():
            from mtpf.downstream.suite import read_cells

            avg = results_averages(read_cells(results)[0])
            if avg:
                out.setdefault(n, {}).update(avg)
    return dict(sorted(out.items()))


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, None, f"cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, f"must hold a JSON object, got {type(data).__name__}")
    return data


def depth_summary(sweep_dir: str | os.PathLike) -> dict:
    """Per depth: final logged losses, mean loss over the last quarter of steps, downstream averages."""
    rows = {}
    downstream = downstream_averages(sweep_dir)
    for n, run in depth_runs(sweep_dir).items():
        recs = read_log(run / "logs" / "metrics.jsonl")
        row = {
            "run": str(run),
            "done": (run / "run.json").is_file(),
            "steps": recs[-1]["step"] if recs else 0,
        }
        for task in ("ner", "tc"):
            vals = [r[f"loss_{task}"] for r in recs if f"loss_{task}" in r]
            if vals:
                row[f"final_loss_{task}"] = vals[-1]
                row[f"tail_loss_{task}"] = statistics.fmean(vals[-max(1, len(vals) // 4) :])
        if n in downstream:
            row["downstream"] = downstream[n]
        rows[n] = row
    for n, d in downstream.items():
        rows.setdefault(n, {"downstream": d})
    return {"layers": {str(k): rows[k] for k in sorted(rows)}}


def plot_depth(sweep_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Figure 4: (a) NER and (b) TC pre-finetuning loss vs step per TPL depth; (c) NER and (d) TC downstream
    averages vs depth (only when downstream scores exist)."""
    runs = depth_runs(sweep_dir)
    if not runs:
        raise DataError(sweep_dir, None, "no layers-N run folders (run `mtpf analyze depth-sweep` first)")
    downstream = downstream_averages(sweep_dir)
    n_panels = 2 + (2 if downstream else 0)
    plt = _pyplot()
    fig, axes = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 3.8), squeeze=False)
    axes = axes[0]
    for ax, task, title in (
        (axes[0], "ner", "(a) NER pre-finetuning loss"),
        (axes[1], "tc", "(b) TC pre-finetuning loss"),
    ):
        for n, run in runs.items():
            pts = [
                (r["step"], r[f"loss_{task}"])
                for r in read_log(run / "logs" / "metrics.jsonl")
                if isinstance(r.get(f"loss_{task}"), (int, float))
            ]
            if pts:
                ax.plot(
                    *zip(*pts),
                    label=f"TPL on last {n} layer{'s' if n > 1 else ''}",
                    marker="o" if len(pts) < 30 else None,
                    markersize=3,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if downstream:
        for ax, task, title in (
            (axes[2], "ner", "(c) NER downstream (avg F1, %)"),
            (axes[3], "tc", "(d) TC downstream (avg accuracy, %)"),
        ):
            pts = [(n, d[task], d.get(f"{task}_half", 0.0)) for n, d in downstream.items() if task in d]
            if pts:
                xs, ys, halves = zip(*pts)
                ax.errorbar(xs, ys, yerr=halves if any(halves) else None, marker="o", capsize=3)
                ax.set_xticks(list(xs))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("layers with TPL")
            ax.grid(alpha=0.3)
    return _save(fig, out)
