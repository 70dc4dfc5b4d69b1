"""The modules compiled with mypyc (:data:`tiered_cache.compiled.MODULES`) avoid the two
constructs mypyc 2.4 compiles wrongly.

- ``raise error from cause``: the compiled raise drops its clause and chains ``error`` to the
  exception being handled instead; these modules write ``raise caused(error, cause) from
  cause`` (:func:`tiered_cache.errors.caused` sets the cause itself).
- A bare ``raise`` in an ``except`` block of a generator after a ``yield`` in that block:
  once the generator is resumed, the compiled re-raise raises a broken exception (value
  None), and the interpreter crashed formatting it (a segfault in the fence's steps, found
  when the fence was first compiled); such blocks name their exception.

Both pass every test of the pure-Python sources and fail only compiled, where the suite sees
one build; so the rule is checked on the sources, for every compiled module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tiered_cache
from tiered_cache.compiled import MODULES

SOURCES = Path(tiered_cache.__file__).parent


def _yields(node: ast.AST) -> bool:
    return any(isinstance(inner, (ast.Yield, ast.YieldFrom)) for inner in ast.walk(node))


def _own_nodes(function: ast.AST) -> list[ast.AST]:
    """The nodes of ``function``'s own body (not of functions or classes defined in it)."""
    found: list[ast.AST] = []
    pending = list(ast.iter_child_nodes(function))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def hazards(source: str) -> list[str]:
    """Where ``source`` uses a construct mypyc compiles wrongly: ``"line N: ..."``."""
    found: list[str] = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        own = _own_nodes(function)
        for node in own:
            if isinstance(node, ast.Raise) and node.cause is not None:
                call = node.exc
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id == "caused"
                ):
                    found.append(f"line {node.lineno}: raise ... from without caused()")
        if not any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in own):
            continue
        for node in own:
            if not isinstance(node, ast.ExceptHandler):
                continue
            yielded = False
            for statement in ast.walk(node):
                if isinstance(statement, (ast.Yield, ast.YieldFrom)):
                    yielded = True
            bare = [s for s in ast.walk(node) if isinstance(s, ast.Raise) and s.exc is None]
            if yielded and bare:
                found.append(f"line {bare[0].lineno}: bare raise in an except block that yields")
    return found


@pytest.mark.parametrize("name", MODULES)
def test_a_compiled_module_avoids_what_mypyc_compiles_wrongly(name: str) -> None:
    source = (SOURCES / f"{name}.py").read_text(encoding="utf-8")
    assert hazards(source) == [], f"tiered_cache/{name}.py"


def test_the_check_finds_both_hazards() -> None:
    """The check is not blind: each hazard, and its safe form, in a few lines."""
    raise_from = "def f():\n    try:\n        g()\n    except KeyError as exc:\n"
    assert hazards(raise_from + "        raise ValueError() from exc\n") == [
        "line 5: raise ... from without caused()"
    ]
    assert hazards(raise_from + "        raise caused(ValueError(), exc) from exc\n") == []
    generator = "def steps():\n    try:\n        yield 1\n    except KeyError as exc:\n"
    assert hazards(generator + "        yield 2\n        raise\n") == [
        "line 6: bare raise in an except block that yields"
    ]
    assert hazards(generator + "        yield 2\n        raise exc\n") == []
    assert hazards(generator + "        raise\n") == []  # no yield in the block: compiled right
