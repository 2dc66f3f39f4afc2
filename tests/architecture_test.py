"""The layout rules of docs/architecture.md, checked on the code's own imports."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "glmvoice_jax"

# Floor of each folder / root module (docs/architecture.md); higher floors import lower ones.
FLOORS = {
    "cli": 9,
    "workflows": 8,
    "trainers": 7,
    "evals": 6,
    "corpora": 5,
    "inference": 4,
    "convert": 3,
    "checkpoint": 2,
    "config_lib": 2,
    "models": 1,
    "data": 1,
}
ROOT_FLOOR = 0  # every other root module


def _floor(module: str) -> int:
    """Floor of a dotted module name under glmvoice_jax (``glmvoice_jax.data.records`` -> 1)."""
    parts = module.split(".")
    if len(parts) == 1:
        return FLOORS["cli"] + 1  # the package itself: never imported
    return FLOORS.get(parts[1], ROOT_FLOOR)


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield path, name


def _imports(tree: ast.Module):
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        yield node, id(node) in top, targets


def _package_module(targets: list[str]) -> str | None:
    """The deepest glmvoice_jax module among an import's targets that exists as a file."""
    best = None
    for t in targets:
        if not t.startswith("glmvoice_jax"):
            continue
        p = ROOT / t.replace(".", "/")
        if p.with_suffix(".py").exists() or (p / "__init__.py").exists():
            best = t if best is None or len(t) > len(best) else best
    return best


def test_imports_flow_down_the_floors():
    bad = []
    for path, name in _modules():
        here = _floor(name)
        for node, _, targets in _imports(ast.parse(path.read_text())):
            mod = _package_module(targets)
            if mod is not None and _floor(mod) > here:
                bad.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {mod} (floor "
                    f"{_floor(mod)} > {here})"
                )
    assert not bad, "imports that go up a floor:\n" + "\n".join(bad)


def test_no_function_local_package_imports_outside_cli():
    bad = []
    for path, name in _modules():
        if name.startswith("glmvoice_jax.cli"):
            continue
        for node, at_top, targets in _imports(ast.parse(path.read_text())):
            if not at_top and any(t.startswith("glmvoice_jax") for t in targets):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "function-local package imports:\n" + "\n".join(bad)


def test_package_never_imports_data_pipelines():
    bad = []
    for path, _ in _modules():
        for node, _, targets in _imports(ast.parse(path.read_text())):
            if any(t.split(".")[0] == "data_pipelines" for t in targets):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "glmvoice_jax imports data_pipelines:\n" + "\n".join(bad)


def test_package_root_holds_at_most_12_modules():
    root_modules = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root_modules) <= 12, root_modules


def test_floor_of_module_names():
    assert _floor("glmvoice_jax.data.records") == 1
    assert _floor("glmvoice_jax.sharding") == ROOT_FLOOR
    assert _floor("glmvoice_jax.cli.train") == 9
