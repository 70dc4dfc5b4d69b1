"""A compiled core that fails to import is not used: the package imports and runs its sources.

The compiled modules check librt's ABI as they are imported: with librt upgraded to another ABI
than the build's, the first of them raised ``ValueError: ABI version conflict for
librt.threading, expected 1, found 2`` and the package did not import at all. Each case runs in
a fresh interpreter (a module, once imported, stays), which imports the package and reads a key
through a chain, printing what ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tiered_cache import compiled

#: Gives ``librt.threading`` another ABI version, as a librt of another ABI than the build's
#: would: its C API table (what a compiled module imports, ``_C_API``) copied, with its
#: first entry, the function a compiled module asks the ABI version of, answering one more.
#: Only the first two entries (the ABI's and the API's versions) are copied: a module reads
#: no further before it refuses the table (mypyc's ``import_librt_threading``).
ANOTHER_ABI = """
import ctypes
import librt.threading

api = ctypes.pythonapi
api.PyCapsule_GetPointer.restype = ctypes.c_void_p
api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
api.PyCapsule_New.restype = ctypes.py_object
api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
NAME = b"librt.threading._C_API"
Table = ctypes.c_void_p * 2
real = Table.from_address(api.PyCapsule_GetPointer(librt.threading._C_API, NAME))
version = ctypes.CFUNCTYPE(ctypes.c_int)(real[0])()
another = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: version + 1)
table = Table(*real)
table[0] = ctypes.cast(another, ctypes.c_void_p).value
librt.threading._C_API = api.PyCapsule_New(ctypes.addressof(table), NAME, None)
"""

#: librt not installed (or not importable at all: built for another interpreter).
NO_LIBRT = """
import importlib.abc
import sys


class NoLibrt(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] == "librt":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, NoLibrt())
"""

#: The build's extension ``NAME`` unloadable (an install cut short, a disk that filled during
#: the build): served from a copy of the file that is not a shared object at all, which the
#: dynamic loader refuses (``ImportError: ...: file too short``).
UNLOADABLE = """
import importlib.abc
import importlib.machinery
import importlib.util
import os
import tempfile

NAME = "tiered_cache.{name}"
COPY = os.path.join(tempfile.mkdtemp(), "{name}" + importlib.machinery.EXTENSION_SUFFIXES[0])
with open(COPY, "wb") as broken:
    broken.write(b"not a shared object")


class Unloadable(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, COPY)
        return importlib.util.spec_from_file_location(fullname, COPY, loader=loader)


sys.meta_path.insert(0, Unloadable())
"""

#: What ran: the core compiled or not, each core module from its source or not, the lock's
#: class, and a key read twice through a chain (a load, then memory's hit).
READ = """
import importlib
import json
import threading
from tiered_cache import TieredCache, MemoryTier, compiled
from tiered_cache.compiled import MODULES

memory = MemoryTier(ttl=60)
cache = TieredCache([memory], ttl=60)
values = [cache.get("k", lambda: "v") for _ in range(2)]
# Named by what it is (librt's C type calls its module "builtins"), when it is either.
named = {type(threading.Lock()): "threading.Lock"}
if "librt.threading" in sys.modules:
    named[sys.modules["librt.threading"].Lock] = "librt.threading.Lock"
lock = type(memory._core.lock)
print(json.dumps({
    "compiled": compiled.compiled_core(),
    "sources": sorted(
        name for name in MODULES
        # Imported here: a module no chain imports (framing, the Redis tier's) counts too.
        if importlib.import_module(f"tiered_cache.{name}").__file__.endswith(".py")
    ),
    "lock": named.get(lock, repr(lock)),
    "values": values,
    "memory": [cache.stats()["tiers"][0][count] for count in ("hits", "misses")],
}))
"""


def run(before: str) -> tuple[dict[str, object], list[str]]:
    """Runs ``before`` then :data:`READ` in a fresh interpreter: what it printed, and the lines
    of its standard error (logging's last resort prints a warning there, unconfigured)."""
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{before}\n{READ}"],
        env=os.environ,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr.splitlines()


def said(lines: list[str]) -> list[str]:
    return [line for line in lines if "the compiled core failed to import" in line]


def from_the_sources(lock: str) -> dict[str, object]:
    """What :data:`READ` prints when the whole core ran from its sources, with ``lock``: the
    key loaded (memory's miss), then read from memory (its hit)."""
    return {
        "compiled": False,
        "sources": sorted(compiled.MODULES),
        "lock": lock,
        "values": ["v", "v"],
        "memory": [1, 1],
    }


needs_build = pytest.mark.skipif(
    not compiled.compiled_core(),
    reason="the compiled core is not in use: nothing to fail to import",
)


@needs_build
def test_a_librt_of_another_abi_makes_the_core_run_from_its_sources() -> None:
    seen, errors = run(ANOTHER_ABI)
    assert seen == from_the_sources("librt.threading.Lock")
    [warning] = said(errors)
    told = re.fullmatch(
        r"the compiled core failed to import \(ValueError: ABI version conflict for "
        r"librt\.threading, expected (\d+), found (\d+)\); tiered-cache runs its pure-Python "
        r"core \(slower, the same results\)",
        warning,
    )
    assert told is not None, warning
    assert int(told[2]) == int(told[1]) + 1


@needs_build
@pytest.mark.parametrize("name", compiled.EXTENSIONS)
def test_an_extension_of_the_build_that_fails_to_load_makes_the_core_run_from_its_sources(
    name: str,
) -> None:
    """The C extensions are built with the compiled modules and used only with them: one the
    loader refuses is the build failing to import, as a compiled module would be. The
    decorator's (``_hitcall``), imported after the attempt, failed the package's import:
    ``ImportError: ...: file too short``."""
    seen, errors = run(UNLOADABLE.format(name=name))
    assert seen == from_the_sources("librt.threading.Lock")
    [warning] = said(errors)
    assert "(ImportError: " in warning and "file too short" in warning, warning


def test_without_librt_the_sources_run_on_the_standard_library_s_lock() -> None:
    """Compiled, the core does not import without librt (it is the build's runtime): the
    sources run, said once; the sources take ``threading.Lock`` in its stead."""
    seen, errors = run(NO_LIBRT)
    assert seen == from_the_sources("threading.Lock")
    cause = "(ModuleNotFoundError: No module named 'librt')"
    expected = [cause] if compiled.compiled_core() else []
    assert [line[line.index("(") :].split(";")[0] for line in said(errors)] == expected


def test_a_current_build_is_the_core_that_runs() -> None:
    """Trying the build does not itself fail it: its modules import while the package's own
    import has run nothing but ``compiled.py`` (one asking ``compiled_core()`` then found it
    not yet defined, and the build was never used)."""
    assert compiled.compiled_core() == compiled._built_and_current()
