"""The modules compiled with mypyc (:data:`tiered_cache.compiled.MODULES`) avoid the two
constructs mypyc 2.4 compiles wrongly.

- ``raise error from cause``: the compiled raise drops its clause and chains ``error`` to the
  exception being handled instead; these modules write ``raise caused(error, cause) from
  cause`` (:func:`tiered_cache.errors.caused` sets the cause itself).
- A ``yield`` in an ``except`` or ``finally`` block of a generator. A compiled generator
  has no exception state of its own: suspended in an except block, it leaves the exception it
  caught as the one its driver's thread handles, and on leaving the block it restores what
  the thread handled when it caught it, long after; the thread was left handling a tier's
  failure for good once the read returned (every error raised there next carried it as its
  ``__context__``). A bare ``raise`` after such a yield raised a broken exception (value
  None; the interpreter crashed formatting it: a segfault in the fence's steps, found when
  the fence was first compiled), and so does a ``finally`` block that yields, on its way
  out with an exception. Such blocks note what to do, and it is done after them.

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
        for node in own:
            if isinstance(node, ast.ExceptHandler):
                blocks = [("an except", node.body)]
            elif isinstance(node, ast.Try):
                blocks = [("a finally", node.finalbody)]
            else:
                continue
            for kind, body in blocks:
                for statement in body:
                    line = _yield_line(statement)
                    if line is not None:
                        found.append(f"line {line}: yield in {kind} block")
    return found


def _yield_line(node: ast.AST) -> int | None:
    """The line of the first yield in ``node``, not counting functions defined in it."""
    pending = [node]
    while pending:
        inner = pending.pop()
        if isinstance(inner, (ast.Yield, ast.YieldFrom)):
            return inner.lineno
        if not isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            pending.extend(ast.iter_child_nodes(inner))
    return None


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
    assert hazards(generator + "        yield 2\n        raise exc\n") == [
        "line 5: yield in an except block"
    ]
    assert hazards(generator + "        failed = exc\n    yield 2\n") == []  # after the block
    assert hazards(generator + "        raise\n") == []  # no yield in the block: compiled right
    assert hazards("def steps():\n    try:\n        yield 1\n    finally:\n        yield 2\n") == [
        "line 5: yield in a finally block"
    ]
