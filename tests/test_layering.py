"""The dependency rule of docs/design.md §2, checked on every import line of the packages.

core <- modeling <- retrieval, ranking; core <- index; core <- candidates; all of them <-
pipelines. TensorFlow and Faiss meet only in pipelines: core and candidates import neither,
index never imports TensorFlow, and the TensorFlow packages never import Faiss.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"core", "modeling", "retrieval", "ranking", "index", "candidates", "pipelines"}
TENSORFLOW = {"tensorflow", "tf_keras", "tensorflow_recommenders", "ai_edge_litert", "keras"}
# What each package may import, among the project's packages and the two heavy libraries.
ALLOWED = {
    "core": set(),
    "modeling": {"core"} | TENSORFLOW,
    "retrieval": {"core", "modeling"} | TENSORFLOW,
    "ranking": {"core", "modeling"} | TENSORFLOW,
    "index": {"core", "faiss"},
    "candidates": {"core"},
    "pipelines": PROJECT | TENSORFLOW | {"faiss"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_design_allows(package):
    guarded = PROJECT | TENSORFLOW | {"faiss"}
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    broken = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imports(path) & guarded
        if name != package and name not in ALLOWED[package]
    }
    assert not broken, sorted(broken)
