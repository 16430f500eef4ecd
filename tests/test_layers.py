"""The dependency rule (docs/architecture.md), read from the imports of every module: each layer
imports only the layers below it, and no algorithm file imports another algorithm file."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"utils", "models", "inverse_problems", "training", "algo", "main", "eval", "train",
           "inversebench", "scripts", "benchmarks", "tests"}  # fmt: skip
ALLOWED = {
    "utils": {"utils"},
    "models": {"models", "utils"},
    "inverse_problems": {"inverse_problems", "utils"},
    "training": {"training", "inverse_problems", "utils"},
    "algo": {"algo", "inverse_problems.base", "utils"},
}


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in PROJECT}


def allowed(layer: str, module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED[layer])


def algorithm_modules() -> set[str]:
    """The modules that implement an algorithm: the targets of configs/algorithm/*.yaml."""
    out = set()
    for path in (ROOT / "configs" / "algorithm").glob("*.yaml"):
        target = yaml.safe_load(path.read_text())["method"]["_target_"]
        out.add(target.rpartition(".")[0])
    return out


def test_each_layer_imports_only_the_layers_below():
    broken = []
    for layer in ALLOWED:
        for path in sorted((ROOT / layer).rglob("*.py")):
            for module in sorted(imports(path)):
                if not allowed(layer, module):
                    broken.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not broken, "\n".join(broken)


def test_no_algorithm_file_imports_another():
    algorithms = algorithm_modules()
    assert len(algorithms) >= 20
    broken = []
    for module in sorted(algorithms):
        path = ROOT / (module.replace(".", "/") + ".py")
        for imported in sorted(imports(path) & algorithms):
            if imported != module:
                broken.append(f"{module} imports {imported}")
    assert not broken, "\n".join(broken)


def test_the_repo_points_nowhere_outside_itself():
    """Code, configs and docs cite papers and docs/, never files outside the repository."""
    hits = []
    for path in ROOT.rglob("*"):
        if path.suffix not in (".py", ".md", ".yaml", ".toml") or any(
            part in (".venv", "build", "exps", "outputs", ".git") for part in path.parts
        ):
            continue
        text = path.read_text(errors="ignore")
        outside = ("../" + "shared", "shared/" + "reference", "§" + "6")  # not spelt here
        for needle in outside:
            if needle in text:
                hits.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not hits, "\n".join(hits)
