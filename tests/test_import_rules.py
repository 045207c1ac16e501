"""The layer rules of docs/ARCHITECTURE.md, checked on the import graph of every Python file in the repository.

kernels (pure ops) -> eval (metrics on videos and records) -> qarvd (the system; only qarvd.app and qarvd.bench wire
eval in) -> scripts (entry points, imported by nothing). Every ``import`` and ``from ... import``, at module level or
inside a function, is an edge; relative imports are resolved against the importing module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "eval", "qarvd", "scripts")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from a import b`` also yields ``a.b``: b may be a module)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    graph = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("tests", "docs", "notebooks") or any(p.startswith(".") for p in rel):
            continue
        graph[module_name(path)] = imports_of(path)
    return graph


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden(src: str, dst: str) -> str | None:
    """Why the edge src -> dst breaks a layer rule, or None."""
    if under(dst, "scripts"):
        return "nothing imports scripts/ (entry points only)"
    if under(src, "kernels") and under(dst, "qarvd"):
        return "kernels/ is pure ops: it imports nothing from qarvd"
    if under(src, "kernels") and under(dst, "eval"):
        return "kernels/ is pure ops: it imports nothing from eval"
    if under(src, "eval") and any(under(dst, f"qarvd.{p}") for p in ("quant", "methods", "deploy", "app", "bench", "embedded", "models")):
        return "eval/ knows nothing of models, quantization or orchestration"
    if under(src, "qarvd") and not (under(src, "qarvd.app") or under(src, "qarvd.bench")) and under(dst, "eval"):
        return "only qarvd.app and qarvd.bench wire eval/ into the system"
    if under(dst, "qarvd.app") and not (under(src, "qarvd.app") or under(src, "qarvd.bench") or under(src, "scripts")):
        return "qarvd.app is the top of the system: only qarvd.bench and scripts/ import it"
    if under(dst, "qarvd.bench") and not (under(src, "qarvd.bench") or under(src, "scripts")):
        return "qarvd.bench is imported by scripts/ alone"
    return None


def violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} -> {dst}: {why}" for src, dsts in graph.items() for dst in dsts
                  if (why := forbidden(src, dst)) is not None)


def test_no_forbidden_import_edge():
    graph = import_graph()
    assert {"kernels.qgemm", "eval.fvd", "qarvd.app.calibrate", "qarvd.deploy.backends"} <= set(graph)
    assert violations(graph) == []


@pytest.mark.parametrize("src, dst", [
    ("kernels.qgemm", "qarvd.deploy.modules"), ("eval.tables", "qarvd.quant.linear"), ("eval.fvd", "qarvd.app.evaluate"),
    ("qarvd.embedded.domain_eval", "eval.fvd"), ("qarvd.quant.capture", "eval"), ("qarvd.app.evaluate", "scripts.evaluate"),
    ("qarvd.methods.base", "qarvd.app.calibrate"), ("eval.plots", "qarvd.deploy"),
])
def test_each_rule_catches_its_edge(src, dst):
    assert forbidden(src, dst) is not None
    assert violations({src: {dst}}) != []


@pytest.mark.parametrize("src, dst", [
    ("qarvd.app.evaluate", "eval.fvd"), ("qarvd.bench.latency", "kernels.qgemm"), ("eval.fvd", "qarvd.utils.errors"),
    ("qarvd.deploy.backends", "kernels.qgemm"), ("scripts.evaluate", "qarvd.app.evaluate"),
])
def test_allowed_edges_pass(src, dst):
    assert forbidden(src, dst) is None


def test_relative_imports_are_resolved(tmp_path):
    pkg = tmp_path / "qarvd" / "quant"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("from ..app import calibrate\nfrom . import y\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        assert imports_of(pkg / "x.py") >= {"qarvd.app", "qarvd.app.calibrate", "qarvd.quant.y"}
    finally:
        ROOT = old
