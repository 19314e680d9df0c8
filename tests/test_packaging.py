"""Package metadata: `pip install mtpf` keeps the user's torch, declares every import, bounds match the APIs."""
from __future__ import annotations

import ast
import importlib.metadata as md
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the metadata is the same on 3.10)
ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extra: str | None = None) -> dict[str, Requirement]:
    project = _project()
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    reqs = [Requirement(x) for x in lines]
    return {md_name(r.name): r for r in reqs}


def md_name(name: str) -> str:
    return name.lower().replace("_", "-")


def _third_party_imports() -> set[str]:
    mods = set()
    for f in (ROOT / "src" / "mtpf").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "mtpf"}


def test_torch_is_a_range_and_the_exact_pin_lives_in_constraints():
    torch = _requirements()["torch"]
    assert not any(s.operator in ("==", "===", "~=") for s in torch.specifier), torch
    assert torch.specifier.contains("2.13.0") and torch.specifier.contains("2.5.1")  # a user's CUDA build stays
    pins = [Requirement(x) for x in (ROOT / "constraints.txt").read_text().splitlines()
            if x.strip() and not x.startswith("#")]
    assert any(r.name == "torch" and any(s.operator == "==" for s in r.specifier) for r in pins)
    for setup in ((ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()):
        assert "pip install -c constraints.txt" in setup


def test_every_imported_package_is_declared():
    declared = set(_requirements()) | set(_requirements("mteb"))
    dists = md.packages_distributions()
    missing = {}
    for module in _third_party_imports():
        names = {md_name(d) for d in dists.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_bounds_match_the_apis_used():
    reqs = _requirements()
    # mteb_run calls mteb.evaluate / mteb.ResultCache: the 2.x API
    mteb = _requirements("mteb")["mteb"]
    assert not mteb.specifier.contains("1.14.0") and mteb.specifier.contains(md.version("mteb"))
    assert _requirements("test")["mteb"].specifier == mteb.specifier
    # PEFT's private `_active_adapter` is written by mtpf: an upper bound, and the installed PEFT inside it
    peft = reqs["peft"]
    assert any(s.operator in ("<", "<=") for s in peft.specifier), peft
    assert peft.specifier.contains(md.version("peft"))
    # transformers 5.x APIs (create_bidirectional_mask, layers returning a tensor, kwargs through the model):
    # 4.56/4.57 install but break the runtime's trunk and cpu_speedups; 6 is untested
    assert not reqs["transformers"].specifier.contains("4.57.0") and not reqs["transformers"].specifier.contains("6.0")
    # every declared range admits what this environment runs (the tested combination)
    for name, req in reqs.items():
        installed = Version(md.version(name))
        assert req.specifier.contains(installed, prereleases=True), f"{req} excludes installed {installed}"
