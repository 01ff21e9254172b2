"""The package's layers: a module imports only from its own layer or the layers below it (imports
inside functions included), so the tree reads bottom up. docs/architecture.md describes each layer."""

from __future__ import annotations

import ast
from pathlib import Path

import fewstep

LAYERS = [  # bottom first; the package facade (fewstep/__init__.py) may be imported from anywhere
    {"errors"},
    {"settings", "files", "parallel", "sandbox", "trace"},
    {"models"},
    {"strategies"},
    {"config"},
    {"decoding"},
    {"drafting"},
    {"engine", "tasks"},
    {"evaluation", "integrations", "serve"},
    {"training", "catalog"},
    {"commands"},
    {"cli"},
]
ROOT = Path(fewstep.__file__).parent


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def imports(path: Path) -> set[str]:
    """The top-level units of fewstep that ``path`` imports (fewstep.X.Y -> X)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        out |= {n.split(".")[1] for n in names if n.startswith("fewstep.")}
    return out


def test_no_import_runs_up_the_layering():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts == ("__init__.py",):
            continue
        unit = rel.parts[0].removesuffix(".py")
        upward += [f"{rel} imports fewstep.{u}" for u in imports(path) if layer_of(u) > layer_of(unit)]
    assert upward == []


def test_every_unit_has_a_layer():
    units = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert units - {"__init__"} <= set().union(*LAYERS)
