"""Handler modules share helpers through worker.handlers (the registry) and the shared modules
(worker.generation, worker.travel_children), never through each other: a handler module that
imports another couples two task types and drags one's imports into the other."""
from __future__ import annotations

import ast
from pathlib import Path

import worker.handlers

HANDLERS_DIR = Path(worker.handlers.__file__).parent


def _registers(tree: ast.Module) -> bool:
    """Whether the module registers a handler (a function decorated with `@register(...)`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(call, ast.Name) and call.id == "register":
                    return True
    return False


def _imported_modules(tree: ast.Module) -> set[str]:
    """The worker.handlers.<name> modules a module imports, in any spelling (absolute, relative,
    `from worker.handlers import <module>`), as their bare names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[2] for alias in node.names if alias.name.startswith("worker.handlers.")}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or module == "worker.handlers":
                inner = module if node.level == 1 else ""
                names |= {inner.split(".")[0]} if inner else {alias.name for alias in node.names}
            elif module.startswith("worker.handlers."):
                names.add(module.split(".")[2])
    return names


def _handler_modules() -> dict[str, ast.Module]:
    trees = {path.stem: ast.parse(path.read_text(), str(path)) for path in HANDLERS_DIR.glob("*.py")
             if path.stem != "__init__"}
    return {name: tree for name, tree in trees.items() if _registers(tree)}


def test_no_handler_module_imports_another() -> None:
    handlers = _handler_modules()
    assert {"generate", "travel_orchestrator", "travel_segment", "travel_stitch"} <= set(handlers)
    crossings = {name: sorted(_imported_modules(tree) & set(handlers) - {name}) for name, tree in handlers.items()}
    assert not {name: found for name, found in crossings.items() if found}, crossings


def test_the_check_sees_every_spelling_of_a_handler_import() -> None:
    """The detector itself: each way of importing a sibling module is caught; names imported from the
    registry are names, not modules, so they match no handler module."""
    for source, expected in [
        ("from worker.handlers.generate import write_video", {"generate"}),
        ("from .travel_segment import segment_video", {"travel_segment"}),
        ("from worker.handlers import travel_stitch", {"travel_stitch"}),
        ("import worker.handlers.travel_orchestrator", {"travel_orchestrator"}),
        ("from worker.handlers import HandlerResult, register", {"HandlerResult", "register"}),
    ]:
        assert _imported_modules(ast.parse(source)) == expected, source
