"""The import layers docs/protocol.md describes, enforced.

foundation < store < protocol < core (queue, app, worker) < surfaces (cli,
serverless, testing). A module may import its own layer or any lower one,
never a higher one. A new module is classified by where it sits, so putting
it in the right package is all it takes.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "qo"

# Leaf modules with no qo imports of their own (checked below). The key layout
# belongs to the protocol but is pure constants; the store's own bookkeeping
# objects (capability cache, delete-failure reports) sit under keys.META.
FOUNDATION = {
    "qo.errors",
    "qo.ids",
    "qo.names",
    "qo.models",
    "qo.settings",
    "qo.context",
    "qo.hooks",
    "qo.cron",
    "qo.logs",
    "qo.shutdown",
    "qo.retry",
    "qo.tracing",
    "qo.protocol.keys",
}
SURFACES = ("qo.cli", "qo.serverless", "qo.testing", "qo.examples", "qo.web", "qo.__main__")
NAMES = ["foundation", "store", "protocol", "core", "surface"]


def layer(module: str) -> int:
    if module in FOUNDATION:
        return 0
    if module == "qo.store" or module.startswith("qo.store."):
        return 1
    if module == "qo.protocol" or module.startswith("qo.protocol."):
        return 2
    if any(module == s or module.startswith(s + ".") for s in SURFACES):
        return 4
    return 3


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known(name: str) -> bool:
    rel = pathlib.Path(*name.split("."))
    base = ROOT.parent / rel
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports(path: pathlib.Path) -> set[str]:
    """Every qo module `path` imports, with `from qo.x import y` resolved to
    `qo.x.y` when y is a module and to `qo.x` when it is a name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "qo")
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            base = node.module or ""
            if base.split(".")[0] != "qo":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if known(full) else base)
    return found


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_is_classified() -> None:
    assert {"qo.protocol.claim", "qo.store.base", "qo.queue", "qo.cli.common"} <= set(MODULES)
    assert layer("qo.protocol.claim") == 2 and layer("qo.store.s3") == 1
    assert layer("qo.queue") == 3 and layer("qo.serverless.api") == 4


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_its_layer_or_below(module: str) -> None:
    mine = layer(module)
    upward = sorted(dep for dep in imports(MODULES[module]) if layer(dep) > mine)
    assert not upward, f"{module} ({NAMES[mine]}) imports {upward}"


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_foundation_modules_are_leaves(module: str) -> None:
    deps = imports(MODULES[module]) - {module}
    assert deps <= FOUNDATION, f"{module} imports {sorted(deps - FOUNDATION)}"
