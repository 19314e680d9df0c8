"""TPL depth sweep (paper Section 6, Figure 4): pre-finetune with task-primary LoRAs on the last 1, 2, 4, ...
layers, one run folder per depth (``OUT/layers-N``), optionally evaluate each downstream, then plot.

Resumable: a depth whose ``OUT/layers-N/run.json`` exists is skipped; an interrupted depth resumes from its
last checkpoint (``resume=true``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mtpf.config import ConfigError


def parse_layers(text: str) -> list[int]:
    try:
        layers = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"--layers must be a comma list of integers, got {text!r}") from None
    if not layers or any(n < 1 for n in layers):
        raise ConfigError(f"--layers must list depths >= 1, got {text!r}")
    return sorted(set(layers))


def depth_config(config: str | os.PathLike | None, overrides: list[str], layers: int, out: str | os.PathLike):
    from mtpf.config import load_config
    from mtpf.recipes.pretrain import PretrainConfig

    run_dir = Path(out) / f"layers-{layers}"
    extra = [f"tpl.ner.layers={layers}", f"tpl.tc.layers={layers}", f"output_dir={run_dir}"]
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*")):
        extra.append("resume=true")
    cfg = load_config(PretrainConfig, config, list(overrides) + extra)
    if cfg.strategy not in ("mtpf-tpl", "pf-lora"):
        raise ConfigError(
            f"a TPL depth sweep needs strategy mtpf-tpl or pf-lora, the config has {cfg.strategy!r}"
        )
    return cfg


def downstream_suite():
    """``mtpf.downstream.suite.run_suite`` and its config class, or ``None`` without that package."""
    try:
        from mtpf.downstream import suite
    except ImportError:
        return None
    if not hasattr(suite, "run_suite") or not hasattr(suite, "SuiteConfig"):
        return None
    return suite


def evaluate_depth(run_dir: Path, ner: list[str], cls: list[str], progress: bool = True,
                   device: str = "auto") -> dict | None:
    """``mtpf evaluate`` of one depth's run into ``run_dir/eval`` (resumable by the suite itself)."""
    suite = downstream_suite()
    if suite is None:
        print("downstream evaluation skipped: mtpf.downstream.suite.run_suite is not available")
        return None
    cfg = suite.SuiteConfig(
        models=[(run_dir.name, str(run_dir))],
        output=str(run_dir / "eval"),
        ner=list(ner),
        cls=list(cls),
        progress=progress,
        device=device,
    )
    return suite.run_suite(cfg)


def depth_sweep(
    config: str | os.PathLike | None,
    layers: list[int],
    out: str | os.PathLike,
    overrides: list[str] | None = None,
    evaluate: bool = False,
    ner: list[str] | None = None,
    cls: list[str] | None = None,
    plot: bool = True,
    device: str = "auto",
) -> dict:
    from mtpf.analysis.plots import depth_summary, plot_depth
    from mtpf.recipes.pretrain import run

    out = Path(out)
    overrides = list(overrides or [])
    cfgs = {
        n: depth_config(config, overrides, n, out) for n in layers
    }  # every config checked before training
    if evaluate and not (ner or cls):
        raise ConfigError("--evaluate needs --ner and/or --cls datasets (or --data-dir)")
    out.mkdir(parents=True, exist_ok=True)
    for n, cfg in cfgs.items():
        run_dir = Path(cfg.output_dir)
        if (run_dir / "run.json").is_file():
            print(f"layers={n}: {run_dir}/run.json exists, skipping pre-finetuning")
        else:
            print(f"layers={n}: pre-finetuning into {run_dir}")
            run(cfg)
        if evaluate:
            evaluate_depth(run_dir, ner or [], cls or [], progress=cfg.progress, device=device)
    summary = depth_summary(out)
    (out / "depth_summary.json").write_text(json.dumps(summary, indent=2))
    if plot:
        summary["figure"] = str(plot_depth(out, out / "fig4.png"))
    return summary
