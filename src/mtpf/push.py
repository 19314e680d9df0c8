"""``mtpf push PATH --repo-id ORG/NAME``: upload a run, an adapter, an app or an export to the Hugging Face Hub.

Uses ``huggingface_hub.HfApi`` (``create_repo`` + ``upload_folder``); the token comes from ``--token``,
``HF_TOKEN`` or ``huggingface-cli login`` as usual. The folder's model card is (re)written first
(``--results`` adds the ``mtpf evaluate`` scores of a run's backbone). Resumable state (``checkpoints/``),
TensorBoard logs and temporary files are not uploaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

IGNORE = ["checkpoints/**", "logs/tensorboard/**", "*.tmp", "**/*.tmp", ".cache/**", "**/__pycache__/**"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "push", help="upload a run, adapter, app adapter or export folder to the Hugging Face Hub",
        description=__doc__.splitlines()[0])
    p.add_argument("path", help="mtpf run folder, adapter/app folder, or an exported folder (--hf, ONNX)")
    p.add_argument("--repo-id", required=True, help="ORG/NAME of the hub repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (default: main)")
    p.add_argument("--token", help="hub token (default: HF_TOKEN / the stored login)")
    p.add_argument("--results", help="run folder: an mtpf evaluate results.json whose scores go into the card")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=run_push)


def kind_of(path: Path) -> str:
    if (path / "run.json").is_file():
        return "run"
    if (path / "mtpf_app.json").is_file():
        return "app"
    if (path / "mtpf_adapter.json").is_file():
        return "adapter"
    if (path / "config.json").is_file() or (path / "modules.json").is_file() or (path / "export.json").is_file():
        return "model"
    raise ValueError(f"{path}: not an mtpf run, adapter, app or model folder (no run.json, mtpf_app.json, "
                     "mtpf_adapter.json, config.json or export.json)")


def push(path: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         token: str | None = None, results: str | None = None, message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``path``; returns the commit URL."""
    from huggingface_hub import HfApi

    from mtpf import cards

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder")
    kind = kind_of(path)
    if results and kind != "run":
        raise ValueError("--results applies to a run folder (its backbone's mtpf evaluate scores)")
    if results and not Path(results).is_file():
        raise ValueError(f"--results {results}: no such file")
    if kind == "run":
        cards.run_card(path, results_json=results)
    elif kind == "app" and not (path / "README.md").is_file():
        cards.app_card(path)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(path), repo_type="model", revision=revision,
                             commit_message=message or f"mtpf push: {kind} {path.name}", ignore_patterns=IGNORE)
    return str(getattr(info, "commit_url", info))


def run_push(args: argparse.Namespace) -> int:
    try:
        url = push(args.path, args.repo_id, args.private, args.revision, args.token, args.results, args.message)
    except ValueError as exc:
        print(f"mtpf push: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # network / auth: one line, not a traceback
        from mtpf.downstream.mteb_run import is_network_error

        if is_network_error(exc):  # HfHubHTTPError (auth, 4xx/5xx) is an OSError too
            print(f"mtpf push: error: upload to {args.repo_id} failed: {str(exc).splitlines()[0]} "
                  "(check your network and token: HF_TOKEN or `huggingface-cli login`)", file=sys.stderr)
            return 2
        raise
    print(f"mtpf push: {args.path} -> https://huggingface.co/{args.repo_id} ({url})")
    return 0
