"""The layer rules of docs/design.md ("Module map and layers"), checked on the source: which
package may import which, and no private name crosses a package boundary."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "engine"

SHELL = {
    "engine._core",
    "engine._codec",
    "engine._calls",
    "engine._writer",
    "engine._actor",
    "engine._engine",
    "engine._lifecycle",
    "engine._config",
    "engine._trio_util",
    "engine._errors",
    "engine._ids",
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports(path: Path, root: Path) -> Iterator[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every import in *path*, with relative
    imports made absolute."""
    module = module_name(path, root)
    package = package_of(module, path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield base, alias.name


def sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def top_package(module: str) -> str:
    """``engine.storage``, ``engine.mcp``, ``engine.testing``, or ``engine`` for the rest."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in {"storage", "mcp", "testing"}:
        return ".".join(parts[:2])
    return "engine"


def is_private_module_of_other_package(target: str, home: str) -> bool:
    target_package = top_package(target)
    if target_package == home or target_package == "engine":
        return False
    return any(part.startswith("_") for part in target.split(".")[2:])


def violations(path: Path, root: Path = ROOT) -> list[str]:
    module = module_name(path, root)
    home = top_package(module)
    found: list[str] = []
    for target, name in imports(path, root):
        if not target.startswith("engine"):
            if module == "engine._core" and target in {"trio", "os", "time", "outcome"}:
                found.append(f"the core imports {target}")
            continue
        if is_private_module_of_other_package(target, home):
            found.append(f"imports the private module {target}")
        private_name = name is not None and name.startswith("_") and name != "__version__"
        if private_name and top_package(target) != home:
            found.append(f"imports the private name {target}.{name}")
        if (
            home == "engine.storage"
            and top_package(target) != "engine.storage"
            and target not in {"engine._errors", "engine._ids"}
        ):
            found.append(f"storage imports {target}")
        if module in SHELL:
            for forbidden in ("engine.mcp", "engine.testing", "engine._cli", "engine._open"):
                if target.startswith(forbidden):
                    found.append(f"the core/shell imports {target}")
        if home == "engine.mcp" and target.startswith(("engine._cli", "engine.testing")):
            found.append(f"mcp imports {target}")
        if home == "engine.testing" and target.startswith("engine.mcp"):
            found.append(f"testing imports {target}")
    return sorted(set(found))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_layer_rules(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rules are not vacuous: a CLI reaching into private modules and names of other
    packages, and a core importing trio and the MCP layer, are reported."""
    root = tmp_path / "engine"
    root.mkdir()
    cli = root / "_cli.py"
    cli.write_text("from .storage._directory import DirectoryStore\nfrom .mcp import _x\n")
    assert violations(cli, root) == [
        "imports the private module engine.storage._directory",
        "imports the private name engine.mcp._x",
    ]
    core = root / "_core.py"
    core.write_text("import trio\nfrom .mcp import ConnectionConfig\n")
    assert violations(core, root) == ["the core imports trio", "the core/shell imports engine.mcp"]
    store = root / "storage" / "_x.py"
    store.parent.mkdir()
    store.write_text("from .._engine import Engine\n")
    assert violations(store, root) == ["storage imports engine._engine"]


def test_design_module_map_names_every_module() -> None:
    """docs/design.md's module map lists every file of the package (it is the map a newcomer
    reads; a module missing from it is a map that lies)."""
    design = (ROOT.parent / "docs" / "design.md").read_text()
    start = design.index("## Module map and layers")
    block = design[start : design.index("```\n\n", design.index("```", start) + 3)]
    missing = [
        str(path.relative_to(ROOT.parent))
        for path in sources()
        if path.name != "__init__.py" and path.name not in block
    ]
    assert missing == []
