"""The package's layout holds: every module imports only its own layer or lower ones, and no imports form a cycle.

Layers follow the data: checkpoint -> ONNX -> fused ONNX -> engine -> serving -> reports -> the pipeline that
composes them -> the command line. Imports inside functions (the lazy ones that keep ``--help`` instant) count
too. README's "Repository layout" shows the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import eca_deploy

PACKAGE = Path(eca_deploy.__file__).parent
# Bottom to top; a module belongs to the first layer whose prefix matches (longest prefixes first within a layer).
LAYERS = (
    ("foundation", ("eca_deploy._version", "eca_deploy.errors", "eca_deploy.options", "eca_deploy.resources",
                    "eca_deploy.progress", "eca_deploy._io", "eca_deploy.schema", "eca_deploy.reference",
                    "eca_deploy.preprocess", "eca_deploy.image_folders", "eca_deploy.provenance")),
    ("models", ("eca_deploy.models",)),
    ("checkpoints", ("eca_deploy.checkpoints",)),
    ("onnx", ("eca_deploy.onnx_files", "eca_deploy.parity", "eca_deploy.onnx_export", "eca_deploy.passes",
              "eca_deploy.quantize")),
    ("tensorrt", ("eca_deploy.tensorrt", "eca_deploy.cuda_kernel")),
    ("serving", ("eca_deploy.serving",)),
    ("harness", ("eca_deploy.harness",)),
    ("pipeline", ("eca_deploy.pipeline",)),
    ("cli", ("eca_deploy.cli", "eca_deploy.__main__", "eca_deploy")),  # the package facade re-exports the pipeline
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes if prefix != "eca_deploy"):
            return index
    if module == "eca_deploy":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to README's layout)")


def imports(module: str) -> set[str]:
    """The eca_deploy modules ``module`` imports, at any depth of its code; ``from package import submodule``
    counts as importing the submodule."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    violations = [f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
                  for module in MODULES for target in sorted(imports(module)) if layer(target) > layer(module)]
    assert violations == []


def test_no_imports_form_a_cycle():
    graph = {module: imports(module) for module in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_layers_name_every_module_and_the_serving_pieces_live_together():
    assert {layer(module) for module in MODULES}  # every module has a layer (layer() raises otherwise)
    serving = {module for module in MODULES if module.startswith("eca_deploy.serving")}
    assert {"eca_deploy.serving.runtime", "eca_deploy.serving.triton_repo",
            "eca_deploy.serving.triton_python_model"} <= serving
    assert not any(name in MODULES for name in ("eca_deploy.runtime", "eca_deploy.triton_repo"))
