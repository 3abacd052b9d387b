"""No import cycles between stemdeck's modules: layers import downwards only.

The graph counts every import in a module, at the top or inside a function (a lazy import is
still a dependency), resolved to the module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "engine", "gui", "stemdeck")  # folders; stemdeck/ is the entry point, above the rest


def _module_name(path: Path) -> str:
    """``models/nets/unet.py`` -> ``stemdeck.models.nets.unet``: the folders install under stemdeck."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "stemdeck" else ["stemdeck", *parts])


def _layer(module: str) -> str:
    """``stemdeck.engine.audio.mixer`` -> ``engine``; the entry point's own modules -> ``stemdeck``."""
    second = module.split(".")[1] if "." in module else ""
    return second if second in ("models", "engine", "gui") else "stemdeck"


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ours that ``name`` (a dotted import target) lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = {_resolve(t, modules) for t in targets}
    return {t for t in resolved if t is not None and t != module}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the packages
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_layers_import_downwards():
    """models knows nothing of engine or gui; engine nothing of gui; none of them of the entry point."""
    above = {
        "models": ("engine", "gui", "stemdeck"),
        "engine": ("gui", "stemdeck"),
        "gui": ("stemdeck",),
        "stemdeck": (),
    }
    wrong = [
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) in above[_layer(module)]
    ]
    assert wrong == []


def test_the_graph_sees_lazy_imports():
    """An import inside a function counts: engine.cli loads models only when a command runs."""
    graph = import_graph()
    assert "stemdeck.models.cli" in graph["stemdeck.engine.cli"]
    assert {"stemdeck.models.cli", "stemdeck.engine.cli", "stemdeck.gui.app"} <= graph["stemdeck.cli"]


def test_the_gui_lists_the_registry_names_and_presets():
    """One source of truth: the GUI's written-out model list is the registry's (see MODEL_CHOICES)."""
    from stemdeck.engine.config import PRESETS
    from stemdeck.gui.main_window import MODEL_CHOICES, PRESET_NAMES
    from stemdeck.models.registry import model_names

    assert MODEL_CHOICES == model_names()
    assert "tiny" in MODEL_CHOICES and "passthrough" in MODEL_CHOICES
    assert PRESET_NAMES == tuple(PRESETS)


def test_no_command_line_reads_argparse_internals():
    offenders = [str(path.relative_to(ROOT)) for path in _modules().values() if "._actions" in path.read_text()]
    assert offenders == []


def _external_imports(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports absolutely (``torch``, ``numpy``, ...)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_audio_thread_code_stands_apart():
    """engine/audio (what the callback runs) needs neither the worker, nor the models, nor torch:
    whatever it imports is loaded before the first block, never by a block."""
    modules = _modules()
    graph = import_graph()
    audio = [m for m in graph if m.startswith("stemdeck.engine.audio")]
    assert len(audio) >= 5
    reaches = {t for m in audio for t in graph[m] if t.startswith(("stemdeck.engine.worker", "stemdeck.models"))}
    assert reaches == set()
    assert [m for m in audio if "torch" in _external_imports(modules[m])] == []


def test_networks_do_not_know_about_training():
    graph = import_graph()
    nets = [m for m in graph if m.startswith("stemdeck.models.nets")]
    assert len(nets) >= 7
    assert {t for m in nets for t in graph[m] if t.startswith("stemdeck.models.training")} == set()
