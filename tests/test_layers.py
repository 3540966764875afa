"""No module of src/ imports one from a layer above it (README, Architecture).

The layers, lowest first: the base modules (errors, files, config, command line), data, checkpoint I/O, the
building blocks (ops, layers, backbones), models, evaluation, engine, deploy. Every ``import src...`` counts,
including the ones inside functions. Entry points and tools/ sit above all of them and are not checked.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [
    ("src.errors", "src.fileio", "src.progress", "src.runtime", "src.cli", "src.config", "src.infer_paths",
     "src.visualize", "src.convert_common"),
    ("src.data",),
    ("src.checkpoint", "src.checkpoint_kind"),
    ("src.ops", "src.layers", "src.backbones"),
    ("src.models",),
    ("src.evaluation",),
    ("src.engine",),
    ("src.deploy",),
]


def layer_of(module: str) -> int:
    """Index in LAYERS of a dotted ``src.`` module name; KeyError for a module no layer names."""
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise KeyError(module)


def src_imports(path: Path) -> list[str]:
    """The ``src.*`` modules that the file at ``path`` imports, anywhere in it."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [n for n in names if n == "src" or n.startswith("src.")]


MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def test_layer_order_rejects_an_upward_import():
    assert layer_of("src.models.detr.model") > layer_of("src.checkpoint")
    assert layer_of("src.engine.optim.sgd") > layer_of("src.evaluation.evaluate")
    assert layer_of("src.evaluation.predict") < layer_of("src.engine.trainer")
    with pytest.raises(KeyError):
        layer_of("src.unknown")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC.parent)))
def test_no_upward_import(path):
    module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
    own = layer_of(module)
    upward = [name for name in src_imports(path) if layer_of(name) > own]
    assert not upward, f"{module} (layer {own}) imports {upward} from above it"
